"""Latency statistics in constant memory, and the systemd notifications."""

from __future__ import annotations

import socket

import numpy as np

from phosphene.edge.deploy.watchdog import Watchdog, sd_notify
from phosphene.edge.stats import LatencyHistogram, summarise_us


def test_histogram_percentiles_within_one_bin_of_exact():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.lognormal(np.log(300), 0.3, 20_000), rng.lognormal(np.log(4000), 0.2, 300)])
    h = LatencyHistogram()
    for v in x:
        h.add(v)
    exact, approx = summarise_us(x), h.summary()
    assert approx["count"] == x.size and approx["max"] == x.max()
    for q in ("p50", "p90", "p99"):
        assert abs(approx[q] / exact[q] - 1) < 0.011, q
    assert np.isclose(approx["mean"], exact["mean"]) and np.isclose(approx["std"], exact["std"])
    assert h.counts.nbytes < 20_000  # flat memory however long the run


def test_watchdog_notifies_systemd_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        now = [0.0]
        dog = Watchdog(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, clock=lambda: now[0])
        assert dog.interval_s == 1.0
        dog.ready()
        assert server.recv(256) == b"READY=1\nSTATUS=reading the port"
        dog.ping()
        now[0] = 0.5
        dog.ping()  # rate-limited: half the watchdog period has not passed
        now[0] = 1.0
        dog.ping()
        dog.stopping()
        assert [server.recv(256) for _ in range(3)] == [b"WATCHDOG=1", b"WATCHDOG=1", b"STOPPING=1"]
        assert dog.pings == 2
    finally:
        server.close()


def test_watchdog_is_a_no_op_outside_systemd():
    dog = Watchdog(env={})
    dog.ready()
    dog.ping()
    assert not dog.enabled and dog.pings == 0
    assert sd_notify("READY=1", env={}) is False
