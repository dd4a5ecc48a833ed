"""phosphene.firmware_bridge"""
