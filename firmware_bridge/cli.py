"""`phosphene simulate stream`: the array simulator on the command line."""

from __future__ import annotations

import json

import click

__all__ = ["simulate_stream"]

_PROB = click.FloatRange(0.0, 1.0)
_NONNEG = click.FloatRange(min=0.0)


def _fault_options(func):
    """The fault-injection option bundle (every fault is counted in the final summary)."""
    options = [
        click.option("--drop-bytes", type=_PROB, default=0.0, show_default=True,
                     help="Probability that each byte is lost on the wire."),
        click.option("--flip-bits", type=_PROB, default=0.0, show_default=True,
                     help="Probability that each bit is inverted on the wire."),
        click.option("--drop-frames", type=_PROB, default=0.0, show_default=True,
                     help="Probability that a whole frame is never sent."),
        click.option("--duplicate-frames", type=_PROB, default=0.0, show_default=True,
                     help="Probability that a frame is sent twice."),
        click.option("--reorder-frames", type=_PROB, default=0.0, show_default=True,
                     help="Probability that a frame is sent after the next one."),
        click.option("--stall-ms", type=_NONNEG, default=0.0, show_default=True,
                     help="Stall the link for N ms (then catch up, as a buffered device does)."),
        click.option("--stall-every", type=_NONNEG, default=0.0, show_default=True,
                     help="Repeat the stall every S seconds of stream (0: once, at 1 s)."),
        click.option("--garbage-burst", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Insert a burst of N random bytes between two frames."),
        click.option("--garbage-every", type=_NONNEG, default=0.0, show_default=True,
                     help="Repeat the garbage burst every S seconds of stream (0: once, at 1 s)."),
        click.option("--restart-seq-at", type=click.FloatRange(min=0.0, min_open=True), default=None,
                     help="Reboot the device once at S seconds: sequence and sample counter restart at 0."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("stream")
@click.option("--port", default=None, metavar="DEV",
              help="Write to a serial device path or pyserial URL (socket://host:port, loop://).")
@click.option("--pty", "use_pty", is_flag=True,
              help="Create a pseudo-terminal pair and print the device path a runtime should open.")
@click.option("--kind", type=click.Choice(["resting", "psychometric", "threshold"]), default=None,
              help="Virtual-cortex session kind (default psychometric: stimulation events included).")
@click.option("--dataset", "dataset_path", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Stream a dataset session (looping) instead of the virtual cortex.")
@click.option("--session", default=None, help="Session id in --dataset (default: the first).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the virtual cortex and the fault generator.")
@click.option("--duration", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Seconds of stream to send (default: until Ctrl-C).")
@click.option("--speed", type=_NONNEG, default=1.0, show_default=True,
              help="Pace: 1 = real time, 10 = ten times faster, 0 = as fast as the port takes it.")
@click.option("--frame-samples", type=click.IntRange(1, 65535), default=16, show_default=True,
              help="Samples per SAMPLES frame.")
@click.option("--scale-uv", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Microvolts per LSB on the wire (default 0.02).")
@click.option("--status-every", type=_NONNEG, default=1.0, show_default=True,
              help="Seconds between STATUS frames (0: only at start and end).")
@click.option("--baud", type=click.IntRange(min=1), default=None,
              help="Baud rate for a real serial port (default 3000000; ignored by ptys and URLs).")
@_fault_options
@click.option("--quiet", is_flag=True, help="No live summary on stderr.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the final counts as one JSON object on stdout.")
def simulate_stream(port, use_pty, kind, dataset_path, session, seed, duration, speed, frame_samples,
                    scale_uv, status_every, baud, drop_bytes, flip_bits, drop_frames, duplicate_frames,
                    reorder_frames, stall_ms, stall_every, garbage_burst, garbage_every,
                    restart_seq_at, quiet, as_json):
    """Stream virtual-cortex MUA as wire frames over serial, at real-time pace.

    Each 16-sample block becomes a SAMPLES frame; each stimulation onset an EVENT_STIM
    frame sent just before the frame holding its onset sample. Faults are injected with
    exact counts, so a receiver's loss counters can be checked against them (the JSON's
    expected_* fields are what a correct decoder reports).

    \b
    Examples:
      phosphene simulate stream --pty --duration 60 --kind psychometric
      phosphene simulate stream --port /dev/ttyUSB0 --baud 3000000
      phosphene simulate stream --pty --speed 10 --drop-frames 0.01 --flip-bits 1e-6 --json
      phosphene simulate stream --port socket://localhost:7777 --dataset data --session rest-0
    """
    from phosphene.firmware_bridge.simulator import (
        DEFAULT_SCALE_UV,
        FaultConfig,
        Simulator,
        SimulatorConfig,
    )
    from phosphene.firmware_bridge.transport import DEFAULT_BAUD, PortError, PtyPair, open_port

    if (port is None) == (not use_pty):
        raise click.UsageError("give exactly one of --port DEV or --pty")
    if dataset_path is not None and kind is not None:
        raise click.UsageError("--kind selects a virtual-cortex session; it cannot be used with --dataset")
    if session is not None and dataset_path is None:
        raise click.UsageError("--session needs --dataset")
    try:
        faults = FaultConfig(drop_bytes_p=drop_bytes, flip_bits_p=flip_bits, drop_frames_p=drop_frames,
                             duplicate_frames_p=duplicate_frames, reorder_frames_p=reorder_frames,
                             stall_ms=stall_ms, stall_every_s=stall_every,
                             garbage_burst_bytes=garbage_burst, garbage_every_s=garbage_every,
                             restart_seq_at_s=restart_seq_at)
        config = SimulatorConfig(frame_samples=frame_samples, scale_uv=scale_uv or DEFAULT_SCALE_UV,
                                 speed=speed, status_every_s=status_every, seed=seed, faults=faults)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    source = _open_source(dataset_path, session, kind, seed)

    def progress(counts) -> None:
        if not quiet and not counts.done:
            click.echo(counts.summary_line(), err=True)

    sim = Simulator(source, config, on_progress=progress)
    if use_pty:
        target = PtyPair()
        where = target.device_path
        if as_json:
            click.echo(json.dumps({"pty": where}), err=True)
        else:
            click.echo(f"pty: open {where} from the runtime", err=True)
    else:
        try:
            target = open_port(port, baudrate=baud or DEFAULT_BAUD, timeout_s=0.1)
        except PortError as exc:
            raise click.ClickException(str(exc)) from None
        where = port
    try:
        _run(sim, target, duration)
        if use_pty and not target.drain(timeout_s=2.0):
            click.echo("warning: the reader did not take the last bytes before the pty closed",
                       err=True)
    finally:
        target.close()
    if sim.error is not None:
        raise click.ClickException(f"stream to {where} failed: {sim.error}")
    counts = sim.counts
    result = {"port": where, **source.describe(), **counts.to_dict()}
    result.pop("done", None)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"done: {counts.summary_line()}", err=True)
        click.echo(f"expected at the receiver: frames lost {counts.expected_frames_lost}, "
                   f"duplicates {counts.expected_duplicates}, reordered {counts.expected_reordered}, "
                   f"bytes discarded {counts.expected_bytes_discarded}", err=True)


def _open_source(dataset_path, session, kind, seed):
    from phosphene.firmware_bridge.simulator import CortexSource, DatasetSource

    from phosphene.dataset import DatasetError

    try:
        if dataset_path is not None:
            return DatasetSource(dataset_path, session)
        return CortexSource(kind or "psychometric", seed=seed)
    except (DatasetError, KeyError, ValueError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise click.ClickException(str(msg)) from None


def _run(sim, target, duration) -> None:
    """Run the simulator in a thread so Ctrl-C or SIGTERM (systemd, a test harness) stop it
    cleanly, closing frame included."""
    import signal
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sim.stop()) if in_main else None
    sim.start(target, duration)
    try:
        while not sim.wait(0.2):
            pass
    except KeyboardInterrupt:
        click.echo("stopping (Ctrl-C)", err=True)
        sim.stop()
        sim.wait(5.0)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
