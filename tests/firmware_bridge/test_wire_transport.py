"""Serial transport: real pseudo-terminals, loop://, socket:// reconnects, clear port errors."""

from __future__ import annotations

import io
import logging
import queue
import socket
import threading

import pytest
import serial

from phosphene.firmware_bridge.protocol import SampleFrame, StatusFrame, StatusState
from phosphene.firmware_bridge.simulator import (
    CortexSource,
    FaultConfig,
    Simulator,
    SimulatorConfig,
)
from phosphene.firmware_bridge.transport import (
    FrameReader,
    PortError,
    PtyPair,
    SerialReader,
    open_port,
)


def is_stop(frame) -> bool:
    return isinstance(frame, StatusFrame) and frame.state == StatusState.STOPPED


def run_over_pty(config: SimulatorConfig, duration_s: float, *, kind: str = "psychometric"):
    sim = Simulator(CortexSource(kind, seed=1), config)
    with PtyPair() as pty, FrameReader(pty.device_path) as reader:
        assert reader.reader.wait_connected(5.0)
        sim.start(pty, duration_s)
        assert sim.wait(60.0) and sim.error is None
        frames = []
        for _ in range(sim.counts.seq_restarts + 1):  # every run ends with a STOPPED frame
            frames += reader.wait_for(is_stop, timeout_s=30.0)
        return sim.counts, reader.stats, frames, reader.reader.stats


def test_real_time_stream_over_a_pty_loses_nothing():
    counts, stats, frames, rstats = run_over_pty(SimulatorConfig(speed=1.0), 2.0)
    assert counts.tx_overflow_frames == 0 and counts.expected_frames_lost == 0
    assert (stats.frames_lost, stats.crc_errors, stats.bytes_discarded) == (0, 0, 0)
    assert stats.frames_ok == counts.frames_sent == len(frames)
    assert sum(isinstance(f, SampleFrame) for f in frames) == 2000 // 16
    assert counts.elapsed_s >= 2.0  # real time: 2 s of stream took at least 2 s
    assert rstats.reads > 0 and rstats.disconnects == 0


def test_faults_over_a_pty_are_reported_exactly():
    faults = FaultConfig(drop_bytes_p=1e-5, flip_bits_p=1e-6, drop_frames_p=0.03,
                         duplicate_frames_p=0.03, reorder_frames_p=0.03, garbage_burst_bytes=500,
                         garbage_every_s=0.5, stall_ms=30, stall_every_s=1.0, restart_seq_at_s=2.0)
    counts, stats, _, _ = run_over_pty(SimulatorConfig(speed=5.0, seed=11, faults=faults), 4.0)
    assert counts.frames_dropped and counts.frames_corrupted and counts.stalls and counts.seq_restarts
    assert counts.tx_overflow_frames == 0
    assert (stats.frames_lost, stats.duplicates, stats.reordered, stats.bytes_discarded,
            stats.seq_restarts) == (counts.expected_frames_lost, counts.expected_duplicates,
                                    counts.expected_reordered, counts.expected_bytes_discarded,
                                    counts.seq_restarts)


def test_loop_url_carries_a_stream_in_process():
    # loop:// emulates the baud rate against the write timeout: give it the link's rate
    ser = serial.serial_for_url("loop://", timeout=0.1, baudrate=3_000_000)
    sim = Simulator(CortexSource("threshold", seed=2), SimulatorConfig(speed=0))
    with FrameReader(lambda: ser) as reader:
        assert reader.reader.wait_connected(5.0)
        counts = sim.run(ser, 1.5)
        frames = reader.wait_for(is_stop, timeout_s=30.0)
    assert len(frames) == counts.frames_sent and reader.stats.frames_lost == 0


def test_socket_url_reconnects_with_backoff_when_the_device_disappears():
    runs = []
    for seed in (1, 2):
        buf = io.BytesIO()
        Simulator(CortexSource("resting", seed=seed), SimulatorConfig(speed=0)).run(buf, 1.0)
        runs.append(buf.getvalue())
    server = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    # pyserial drains a socket's input when it opens it, so the device sends only once the
    # reader's open has returned (as a real device streams continuously).
    opened = [threading.Event() for _ in runs]
    n_opens = iter(range(len(runs)))

    def open_device():
        ser = open_port(url, timeout_s=0.1)
        opened[next(n_opens)].set()
        return ser

    def device():
        for data, ready in zip(runs, opened):  # serve a run, then vanish
            conn, _ = server.accept()
            ready.wait(30.0)
            conn.sendall(data)
            conn.close()

    threading.Thread(target=device, daemon=True).start()
    with FrameReader(open_device, backoff_initial_s=0.02, backoff_max_s=0.2) as reader:
        first = reader.wait_for(is_stop, timeout_s=30.0)
        second = reader.wait_for(is_stop, timeout_s=30.0)
        rstats, stats = reader.reader.stats, reader.stats
    server.close()
    assert rstats.connects == 2 and rstats.reconnects == 1 and rstats.disconnects >= 1
    assert "socket disconnected" in rstats.last_error
    assert first[0].boot and second[0].boot and len(first) == len(second)
    assert stats.seq_restarts == 1 and stats.frames_lost == 0


def test_pty_that_disappears_is_reported_and_retried():
    pty = PtyPair()
    errors = queue.Queue()
    reader = SerialReader(pty.device_path, errors.put, backoff_initial_s=0.02, backoff_max_s=0.1)
    with reader:
        assert reader.wait_connected(5.0)
        pty.close()  # the device is unplugged
        assert reader.disconnected.wait(5.0)
        assert reader.running  # still trying to reopen, with backoff
    assert reader.stats.disconnects == 1 and reader.stats.connects == 1
    assert not reader.running


def _wait_for(predicate, timeout_s: float = 5.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        done.wait(0.02)
    return predicate()


@pytest.mark.parametrize("name", [None, "bedside array"])
def test_reader_messages_name_the_device_not_the_callable(caplog, name):
    pty = PtyPair()
    path = pty.device_path

    def port_factory():
        return open_port(path)

    reader = SerialReader(port_factory, lambda data: None, backoff_initial_s=0.02,
                          backoff_max_s=0.1, name=name)
    shown = name or path
    with caplog.at_level(logging.WARNING, logger="phosphene.firmware_bridge.transport"), reader:
        assert reader.wait_connected(5.0) and reader.port_name == shown
        pty.close()  # the device disappears; reopening it then fails
        assert reader.disconnected.wait(5.0)
        assert _wait_for(lambda: reader.stats.open_failures >= 1)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{shown} disappeared") for m in messages), messages
    assert any(m.startswith(f"cannot open {shown} (attempt 1)") for m in messages), messages
    assert not any("port_factory" in m for m in messages)
    assert SerialReader(port_factory, print).port_name == "port from port_factory"
    assert SerialReader("/dev/ttyX", print).port_name == "/dev/ttyX"
    assert SerialReader("/dev/ttyX", print, name="array").port_name == "array"


def test_handler_errors_stop_the_reader_and_are_kept():
    ser = serial.serial_for_url("loop://", timeout=0.1)

    def broken(data: bytes) -> None:
        raise RuntimeError("handler bug")

    reader = SerialReader(lambda: ser, broken)
    with reader:
        assert reader.wait_connected(5.0)
        ser.write(b"hello")
        reader._thread.join(5.0)
    assert isinstance(reader.error, RuntimeError) and reader.stats.handler_errors == 1
    assert reader.stats.last_error == "handler: RuntimeError('handler bug')"


def test_port_errors_are_one_clear_line():
    with pytest.raises(PortError, match=r"^no such port: /dev/nonexistent-tty \(is the device"):
        open_port("/dev/nonexistent-tty")
    with PtyPair() as pty:
        first = open_port(pty.device_path)
        try:
            with pytest.raises(PortError, match="is busy: another process holds it open exclusively"):
                open_port(pty.device_path)
            open_port(pty.device_path, exclusive=False).close()
        finally:
            first.close()
    with pytest.raises(PortError, match="pyserial URL"):
        open_port("nosuchscheme://x")


def test_pty_write_waits_for_room_and_honours_its_timeout():
    with PtyPair() as pty, open_port(pty.device_path) as ser:  # open flushes: open first
        written = pty.write(bytes(range(256)) * 800, timeout_s=0.05)  # nobody reads yet
        assert 0 < written < 204_800
        stop = threading.Event()
        stop.set()
        assert pty.write(b"more", stop=stop) == 0  # full and stopped: returns at once
        got = b""
        while len(got) < written:
            chunk = ser.read(ser.in_waiting or 1)
            assert chunk, "bytes the pty accepted never arrived"
            got += chunk
        assert got == (bytes(range(256)) * 800)[:written]
