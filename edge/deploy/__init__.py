"""Deployment files for the bedside runtime (systemd unit, watchdog)."""
