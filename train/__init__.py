"""phosphene.train"""
