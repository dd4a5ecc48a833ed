"""systemd notification (sd_notify) for `phosphene run` as a service, stdlib only.

When systemd starts the runtime with `Type=notify` and `WatchdogSec=`, it sets
NOTIFY_SOCKET (and WATCHDOG_USEC): the runtime says READY=1 once it reads the port, then
WATCHDOG=1 at least every half watchdog period while its loop is alive, and STOPPING=1 on
its way out. If the loop hangs, the pings stop and systemd restarts the service. Without
NOTIFY_SOCKET (a terminal, a test) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["Watchdog", "sd_notify"]

log = logging.getLogger(__name__)


def sd_notify(message: str, *, env: dict | None = None) -> bool:
    """Send one notification to systemd; False when not under systemd (or it failed)."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        # a failed notification must not take the decoder down; systemd will notice anyway
        log.warning("sd_notify(%r) failed: %s", message.split("\n")[0], exc)
        return False


class Watchdog:
    """READY / WATCHDOG / STATUS / STOPPING notifications, rate-limited to the watchdog period.

    ping() is cheap to call every loop iteration: it sends WATCHDOG=1 only when half of
    WATCHDOG_USEC has passed since the last one.
    """

    def __init__(self, *, env: dict | None = None, clock=time.monotonic):
        self.env = dict(os.environ if env is None else env)
        self.enabled = bool(self.env.get("NOTIFY_SOCKET"))
        usec = self.env.get("WATCHDOG_USEC")
        pid = self.env.get("WATCHDOG_PID")
        # WATCHDOG_PID, when set, names the process that must ping; honour it
        if usec and (not pid or pid == str(os.getpid())):
            self.interval_s = max(int(usec) / 1e6 / 2.0, 0.01)
        else:
            self.interval_s = None
        self.clock = clock
        self._last_ping = float("-inf")
        self.pings = 0

    def ready(self, status: str = "reading the port") -> None:
        if self.enabled:
            sd_notify(f"READY=1\nSTATUS={status}", env=self.env)

    def ping(self) -> None:
        if not self.enabled or self.interval_s is None:
            return
        now = self.clock()
        if now - self._last_ping >= self.interval_s:
            self._last_ping = now
            if sd_notify("WATCHDOG=1", env=self.env):
                self.pings += 1

    def status(self, text: str) -> None:
        if self.enabled:
            sd_notify(f"STATUS={text}", env=self.env)

    def stopping(self) -> None:
        if self.enabled:
            sd_notify("STOPPING=1", env=self.env)
