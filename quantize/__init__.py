"""phosphene.quantize"""
