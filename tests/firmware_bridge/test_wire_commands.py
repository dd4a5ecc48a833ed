"""The simulator obeys: STIM_COMMANDs over a real pty, acknowledged and delivered to the cortex."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import time

import numpy as np

from phosphene.firmware_bridge.protocol import (
    AckStatus,
    EventFrame,
    SampleFrame,
    StatusFrame,
    StatusState,
    StimAck,
    encode_stim_command,
    wire_roundtrip_uv,
)
from phosphene.firmware_bridge.simulator import CortexSource, Simulator, SimulatorConfig
from phosphene.firmware_bridge.transport import FrameReader, PtyPair, open_port

F = 16  # samples per frame


def collect_until_stopped(reader: FrameReader, timeout_s: float) -> list:
    return reader.wait_for(lambda f: isinstance(f, StatusFrame) and f.state == StatusState.STOPPED,
                           timeout_s)


def test_commands_over_a_pty_are_acknowledged_delivered_and_recorded():
    source = CortexSource("closed-loop", seed=3)
    sim = Simulator(source, SimulatorConfig(speed=1.0, frame_samples=F))
    with PtyPair() as pty:
        port = open_port(pty.device_path, timeout_s=0.1)
        with FrameReader(lambda: port) as reader:
            sim.start(pty, duration_s=1.5)
            frames = reader.wait_for(lambda f: isinstance(f, SampleFrame) and f.sample_counter >= 400, 5.0)
            seen = frames[-1].sample_counter + F  # the newest sample the host has
            port.write(encode_stim_command(0, seen, 1, 25, 20.0, deadline_samples=20)  # now
                       + encode_stim_command(1, seen, 2, 25, 20.0)  # within 170 ms of 1: busy
                       + encode_stim_command(2, seen, 3, 500, 20.0)  # no electrode 500: invalid
                       + encode_stim_command(3, 10, 4, 14, 20.0, deadline_samples=5)  # too late: expired
                       + encode_stim_command(4, seen + 600, 5, 14, 30.0, at_sample=True))  # later
            t_sent = time.monotonic()
            frames += reader.wait_for(lambda f: isinstance(f, StimAck), 2.0)
            ack_s, first = time.monotonic() - t_sent, frames[-1]
            frames += collect_until_stopped(reader, 10.0)
    assert sim.wait(5.0) and sim.error is None
    acks = {f.command_id: f for f in frames if isinstance(f, StimAck)}
    status = {cid: a.status_name for cid, a in acks.items()}
    assert status == {1: "delivered", 2: "busy", 3: "invalid", 4: "expired", 5: "delivered"}
    assert first.command_id == 1 and ack_s < 0.012  # answered on arrival, not a frame later
    onset_now = acks[1].sample_counter
    assert seen <= onset_now <= seen + F + 2  # the sample being acquired when it arrived
    assert acks[5].sample_counter == seen + 600  # exactly the sample it named
    # each delivered stimulation: its ack, then its EVENT_STIM, then the SAMPLES frame holding it
    for cid in (1, 5):
        i = frames.index(acks[cid])
        event = frames[i + 1]
        assert isinstance(event, EventFrame) and event.sample_counter == acks[cid].sample_counter
        nxt = next(f for f in frames[i:] if isinstance(f, SampleFrame))
        assert nxt.sample_counter <= event.sample_counter < nxt.sample_counter + F
    c = sim.counts
    assert (c.commands_received, c.commands_delivered, c.commands_refused, c.ack_frames) == (5, 2, 3, 5)
    # ground truth: one record per ack, the delivered ones with the cortex's decision
    truth = {r["command_id"]: r for r in sim.truth}
    assert {cid: r["status"] for cid, r in truth.items()} == status
    assert truth[1]["sample"] == onset_now and truth[1]["command_sample"] == seen
    # the stream is exactly what the offline generator makes with the same onsets: the same
    # spontaneous activity, artifact and evoked response, and the same perception draws
    reference = CortexSource("closed-loop", seed=3)
    reference.stimulate(onset_now, 25, 20.0, 1)
    reference.stimulate(seen + 600, 14, 30.0, 5)
    samples = [f for f in frames if isinstance(f, SampleFrame)]
    expected = np.concatenate([reference.read(F)[0] for _ in samples])
    got = np.concatenate([f.to_uv() for f in samples])
    assert np.array_equal(got, wire_roundtrip_uv(expected)[0])
    artifact = got[onset_now:onset_now + 50].mean() - got[onset_now - 50:onset_now].mean()
    assert artifact > 20.0  # uV: the stimulation is in the stream
    for d in reference.take_delivered():
        r = truth[d.command_id]
        assert (r["perceived"], r["p_true"], r["state"]) == (d.perceived, round(d.p_true, 6),
                                                             round(d.state, 6))


def test_a_source_that_cannot_stimulate_refuses_every_command():
    sim = Simulator(CortexSource("psychometric", seed=0), SimulatorConfig(speed=0, frame_samples=F))
    with PtyPair() as pty:
        port = open_port(pty.device_path, timeout_s=0.1)
        with FrameReader(lambda: port) as reader:
            sim.start(pty, duration_s=None)
            reader.wait_for(lambda f: isinstance(f, SampleFrame), 5.0)
            port.write(encode_stim_command(0, 0, 9, 25, 20.0))
            ack = reader.wait_for(lambda f: isinstance(f, StimAck), 5.0)[-1]
            sim.stop()
    assert sim.wait(5.0)
    assert (ack.command_id, ack.status) == (9, AckStatus.UNAVAILABLE)
    assert sim.counts.commands_delivered == 0 and sim.truth[0]["status"] == "unavailable"


def test_simulate_stream_cli_obeys_and_writes_the_truth_file(tmp_path):
    truth = tmp_path / "truth.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "phosphene.cli", "simulate", "stream", "--pty",
                             "--kind", "closed-loop", "--truth", str(truth), "--duration", "2",
                             "--json", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        path = json.loads(proc.stderr.readline())["pty"]
        port = open_port(path, timeout_s=0.1)
        with FrameReader(lambda: port) as reader:
            frames = reader.wait_for(lambda f: isinstance(f, SampleFrame) and f.sample_counter >= 200, 10.0)
            assert not truth.exists()  # written temp-then-rename: only when the stream ends
            port.write(encode_stim_command(0, frames[-1].sample_counter + F, 42, 53, 15.0,
                                           deadline_samples=50))
            ack = reader.wait_for(lambda f: isinstance(f, StimAck), 5.0)[-1]
            with contextlib.suppress(queue.Empty):  # the closing frame may race the pty's close
                collect_until_stopped(reader, 10.0)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    counts = json.loads(out)
    assert (counts["commands_received"], counts["commands_delivered"], counts["kind"]) == (1, 1, "closed-loop")
    (record,) = [json.loads(line) for line in truth.read_text().splitlines()]
    assert record["command_id"] == 42 == ack.command_id and ack.delivered
    assert record["sample"] == ack.sample_counter and record["perceived"] in (0, 1)
    assert 0.0 <= record["p_state"] <= 1.0 and record["electrode"] == 53


def test_truth_needs_the_closed_loop_kind():
    r = subprocess.run([sys.executable, "-m", "phosphene.cli", "simulate", "stream", "--pty", "--truth",
                        "t.jsonl"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == ("Error: --truth records commanded stimulations: it needs "
                                                 "--kind closed-loop")
