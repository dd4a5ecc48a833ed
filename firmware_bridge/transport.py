"""Serial transport on pyserial: device paths, pseudo-terminal pairs and pyserial URLs.

Map: open_port (one place that turns a name into an open port, with clear errors) ->
PtyPair (a pseudo-terminal standing in for the array's USB-serial device) -> SerialReader
(a thread: read(in_waiting or 1) with a timeout, reconnect with exponential backoff) ->
FrameReader (SerialReader + StreamDecoder, frames into a queue).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Self

import serial

from phosphene.errors import ConfigError, PhospheneError
from phosphene.firmware_bridge.protocol import Frame, StreamDecoder

__all__ = [
    "DEFAULT_BAUD",
    "FrameReader",
    "PortError",
    "PtyPair",
    "ReaderStats",
    "SerialReader",
    "is_url",
    "open_port",
    "write_fd",
]

log = logging.getLogger(__name__)

# 96 ch x 1 kHz x int16 in 16-sample frames needs 1.95 Mbaud (docs/protocol.md); 3 Mbaud
# is the next rate common USB-UART bridges (FT232H, CP2102N) run exactly.
DEFAULT_BAUD = 3_000_000


class PortError(PhospheneError, OSError):
    """A port could not be opened; the message says why and what to do."""


def is_url(port: str) -> bool:
    return "://" in port


def open_port(port: str, *, baudrate: int = DEFAULT_BAUD, timeout_s: float | None = 0.1,
              write_timeout_s: float | None = None, exclusive: bool = True) -> serial.SerialBase:
    """Open a device path (/dev/ttyACM0, a pty's device path) or a pyserial URL (loop://,
    socket://host:port, rfc2217://...). Paths are locked exclusively (flock) by default so
    two runtimes cannot read the same array and each get half the bytes.

    Raises PortError (an OSError) with a one-line reason: missing, busy, no permission.
    """
    if not isinstance(port, str) or not port:
        raise PortError(f"port must be a device path or a pyserial URL, got {port!r}")
    try:
        if is_url(port):
            return serial.serial_for_url(port, baudrate=baudrate, timeout=timeout_s,
                                         write_timeout=write_timeout_s)
        return serial.Serial(port, baudrate=baudrate, timeout=timeout_s,
                             write_timeout=write_timeout_s, exclusive=exclusive)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise PortError(_explain_open_error(port, exc)) from None


def _explain_open_error(port: str, exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
    if code == errno.ENOENT or (code is None and "No such file" in str(exc)):
        return (f"no such port: {port} (is the device plugged in? list ports with "
                "`python -m serial.tools.list_ports`)")
    if code in (errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in str(exc):
        return f"port {port} is busy: another process holds it open exclusively; stop that process first"
    if code == errno.EACCES:
        return f"permission denied opening {port} (add your user to the 'dialout' group, then log in again)"
    if code == errno.ENXIO or code == errno.ENODEV:
        return f"port {port} exists but no device answers (unplugged or powered down)"
    if is_url(port) and isinstance(exc, ValueError):
        return f"not a usable pyserial URL: {port} ({exc})"
    return f"cannot open port {port}: {exc}"


def write_fd(fd: int, data: bytes, *, stop: threading.Event | None = None,
             timeout_s: float | None = None, poll_s: float = 0.1) -> int:
    """Write to a non-blocking descriptor, waiting in select() while it is full.

    Returns the bytes written: all of them, or fewer if `stop` was set or timeout_s passed
    (timeout_s=0: only what fits now; None: no limit). Never busy-waits. An error after some
    bytes went out (the port vanished mid-write) returns those bytes, so that the caller counts
    and captures them; the next write raises it.
    """
    view = memoryview(data)
    written = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while written < len(view):
        try:
            written += os.write(fd, view[written:])
            continue
        except BlockingIOError:
            pass
        except OSError:
            if written:
                return written
            raise
        if stop is not None and stop.is_set():
            break
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        wait_s = poll_s if deadline is None else min(poll_s, deadline - now)
        select.select([], [fd], [], wait_s)
    return written


class PtyPair:
    """A pseudo-terminal pair: the simulator writes to `master_fd`; a runtime opens
    `device_path` exactly as it would open /dev/ttyACM0.

    The device side is put in raw mode at once, so bytes pass unchanged (no echo, no
    CR/LF translation) even before the runtime opens it. A held device-side descriptor
    keeps the pair alive between runtime restarts; the kernel buffers a few KiB, after
    which writes wait (the simulator's pacing then catches up, losing nothing).
    """

    def __init__(self) -> None:
        self.master_fd, self._slave_fd = os.openpty()
        tty.setraw(self._slave_fd, termios.TCSANOW)
        os.set_blocking(self.master_fd, False)  # so a full buffer can never wedge write()
        self.device_path = os.ttyname(self._slave_fd)
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PtyPair(device_path={self.device_path!r})"

    def write(self, data: bytes, *, stop: threading.Event | None = None,
              timeout_s: float | None = None) -> int:
        """Write data to the master side, waiting while the pty buffer (~20 KiB) is full.

        Returns the bytes written: fewer only if `stop` was set or timeout_s passed first
        (timeout_s=0 writes what fits now).
        """
        return write_fd(self.master_fd, data, stop=stop, timeout_s=timeout_s)

    def read(self, max_bytes: int = 65536, timeout_s: float = 0.1) -> bytes:
        """Read what the device side wrote (used when a program writes to device_path)."""
        ready, _, _ = select.select([self.master_fd], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self.master_fd, max_bytes)
        except OSError as exc:
            if exc.errno == errno.EIO:  # no process holds the device side open
                return b""
            raise

    def pending_bytes(self) -> int:
        """Bytes written to the master that the device side has not read yet."""
        if self._slave_fd is None:
            return 0
        buf = fcntl.ioctl(self._slave_fd, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, sys.byteorder)

    def drain(self, timeout_s: float = 2.0, *, poll_s: float = 0.01) -> bool:
        """Wait until the reader has taken everything written (closing the master would
        discard it: a hangup flushes the device side's input). True if it drained."""
        deadline = time.monotonic() + timeout_s
        idle = threading.Event()  # never set: a wait that cannot be cut short by accident
        quiet_polls = 0
        while quiet_polls < 2:  # twice: bytes may still sit in the kernel's flip buffer
            quiet_polls = quiet_polls + 1 if self.pending_bytes() == 0 else 0
            if time.monotonic() >= deadline:
                return False
            idle.wait(poll_s)
        return True

    def close_device_side(self) -> None:
        """Drop our own descriptor on the device side (then EIO tells when readers leave)."""
        if self._slave_fd is not None:
            os.close(self._slave_fd)
            self._slave_fd = None

    def close(self) -> None:
        """Close both sides: a runtime reading device_path sees the device disappear."""
        if self._closed:
            return
        self._closed = True
        self.close_device_side()
        os.close(self.master_fd)


@dataclass
class ReaderStats:
    """Running totals of a SerialReader."""

    bytes_read: int = 0
    reads: int = 0
    connects: int = 0
    reconnects: int = 0  # successful opens after the first
    disconnects: int = 0  # the device disappeared while open
    open_failures: int = 0
    handler_errors: int = 0
    last_error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class SerialReader:
    """Reads a port in a thread and hands every chunk to `on_data(bytes)`.

    Reads `ser.read(ser.in_waiting or 1)` with a timeout: it sleeps in select() until a
    byte arrives, then takes everything waiting. When the device disappears (unplugged,
    pty closed, socket dropped) it reports it, then reopens with exponential backoff
    (backoff_initial_s doubling up to backoff_max_s) until stop(). Transport errors are
    retried; an exception from on_data is a bug in the handler: it stops the reader and is
    kept in `.error` (and logged) rather than retried.

    `port` is a path or URL (opened with open_port) or a zero-argument callable that
    returns an open pyserial port (for tests and custom transports). `name` is what log
    messages call the device; by default the path or URL, or for a callable the path of
    the port it opened (until then "port from <callable's name>").
    """

    def __init__(self, port: str | Callable[[], serial.SerialBase], on_data: Callable[[bytes], None],
                 *, baudrate: int = DEFAULT_BAUD, read_timeout_s: float = 0.1,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 2.0,
                 exclusive: bool = True, on_connect: Callable[[int], None] | None = None,
                 name: str | None = None):
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ConfigError("need 0 < backoff_initial_s <= backoff_max_s")
        self.port = port
        self._named = name is not None or isinstance(port, str)
        if name is not None:
            self.port_name = name
        elif isinstance(port, str):
            self.port_name = port
        else:
            self.port_name = f"port from {getattr(port, '__name__', None) or type(port).__name__}"
        self.on_data = on_data
        self.on_connect = on_connect
        self.baudrate = baudrate
        self.read_timeout_s = read_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.exclusive = exclusive
        self.stats = ReaderStats()
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()  # set at every loss of the device (for waiting)
        self._stop = threading.Event()
        self._ser: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> SerialReader:
        if self._thread is not None:
            raise RuntimeError("SerialReader already started")
        self._thread = threading.Thread(target=self._run, name=f"serial-reader {self.port_name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        ser = self._ser
        if ser is not None and hasattr(ser, "cancel_read"):
            try:
                ser.cancel_read()
            except (OSError, serial.SerialException, AttributeError, TypeError) as exc:
                # the port may be closing under us; the read timeout ends the read anyway
                log.debug("cancel_read on %s: %s", self.port_name, exc)
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the loop ------------------------------------------------------------------------
    def _open(self) -> serial.SerialBase:
        if callable(self.port):
            return self.port()
        return open_port(self.port, baudrate=self.baudrate, timeout_s=self.read_timeout_s,
                         exclusive=self.exclusive)

    def _run(self) -> None:
        backoff_s = self.backoff_initial_s
        failures_in_row = 0
        while not self._stop.is_set():
            try:
                ser = self._open()
            except (serial.SerialException, OSError) as exc:
                self.stats.open_failures += 1
                self.stats.last_error = str(exc)
                failures_in_row += 1
                if failures_in_row == 1 or failures_in_row % 20 == 0:
                    log.warning("cannot open %s (attempt %d): %s; retrying in %.2f s",
                                self.port_name, failures_in_row, exc, backoff_s)
                self._stop.wait(backoff_s)
                backoff_s = min(2 * backoff_s, self.backoff_max_s)
                continue
            self._ser = ser
            if not self._named and isinstance(getattr(ser, "port", None), str) and ser.port:
                self.port_name = ser.port  # the path (or URL) the callable opened
            self.stats.connects += 1
            if self.stats.connects > 1:
                self.stats.reconnects += 1
                log.warning("reconnected to %s after %d failed attempts (reconnect #%d)",
                            self.port_name, failures_in_row, self.stats.reconnects)
            failures_in_row = 0
            backoff_s = self.backoff_initial_s
            self.connected.set()
            try:
                if self.on_connect is not None:
                    self.on_connect(self.stats.connects)
                self._pump(ser)
            except (serial.SerialException, OSError) as exc:
                if not self._stop.is_set():
                    self.stats.disconnects += 1
                    self.stats.last_error = str(exc)
                    log.warning("%s disappeared (%s); reconnecting with backoff", self.port_name, exc)
                    self.disconnected.set()
            except Exception as exc:  # the handler's bug: report it, do not retry it
                self.stats.handler_errors += 1
                self.stats.last_error = f"handler: {exc!r}"
                self.error = exc
                log.exception("frame handler failed on data from %s; reader stopped", self.port_name)
                self._stop.set()
            finally:
                self.connected.clear()
                self._ser = None
                try:
                    ser.close()
                except (OSError, serial.SerialException) as exc:
                    log.debug("closing vanished %s: %s", self.port_name, exc)  # gone either way

    def _pump(self, ser: serial.SerialBase) -> None:
        stop, on_data, stats = self._stop, self.on_data, self.stats
        # pyserial's socket:// and rfc2217:// report in_waiting as 0 or 1, not a byte
        # count; after the blocking read, take what else is there without waiting.
        undercounts = not isinstance(ser, serial.Serial) and "loop" not in type(ser).__module__
        while not stop.is_set():
            data = ser.read(ser.in_waiting or 1)
            if data and undercounts and len(data) == 1:
                timeout, ser.timeout = ser.timeout, 0
                try:
                    data += ser.read(65536)
                finally:
                    ser.timeout = timeout
            if data:
                stats.reads += 1
                stats.bytes_read += len(data)
                on_data(bytes(data))


class FrameReader:
    """A SerialReader feeding a StreamDecoder; decoded frames go into `frames` (a Queue).
    reader_kwargs go to SerialReader (baudrate, name, backoff_*, ...).

    Usage:
        with FrameReader("/dev/ttyACM0") as reader:
            frame = reader.frames.get(timeout=1.0)
            print(reader.decoder.stats)
    """

    def __init__(self, port: str | Callable[[], serial.SerialBase], *,
                 decoder: StreamDecoder | None = None, maxsize: int = 0, **reader_kwargs):
        self.decoder = decoder or StreamDecoder()
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self.reader = SerialReader(port, self._on_data, on_connect=self._on_connect, **reader_kwargs)

    def _on_connect(self, n_connects: int) -> None:
        # A partial frame from before the device vanished will never be completed.
        if n_connects > 1:
            with self._lock:
                self.decoder.packetizer.flush()

    def _on_data(self, data: bytes) -> None:
        with self._lock:
            frames = self.decoder.feed(data)
        for frame in frames:
            self.frames.put(frame)

    @property
    def stats(self):
        with self._lock:
            return self.decoder.stats

    def start(self) -> FrameReader:
        self.reader.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self.reader.stop(timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, timeout_s: float) -> Frame:
        """The next frame; raises queue.Empty after timeout_s."""
        return self.frames.get(timeout=timeout_s)

    def wait_for(self, predicate: Callable[[Frame], bool], timeout_s: float) -> list[Frame]:
        """Collect frames until one satisfies predicate (included); queue.Empty on timeout."""
        deadline = time.monotonic() + timeout_s
        got: list[Frame] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise queue.Empty(f"no matching frame within {timeout_s} s ({len(got)} frames seen)")
            frame = self.frames.get(timeout=remaining)
            got.append(frame)
            if predicate(frame):
                return got
