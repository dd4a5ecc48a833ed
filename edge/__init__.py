"""phosphene.edge"""
