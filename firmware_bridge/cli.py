"""`phosphene simulate stream`: the array simulator on the command line."""

from __future__ import annotations

import contextlib
import json

import click

from phosphene.errors import ConfigError, PhospheneError

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
        click.option("--stall-every-s", "--stall-every", "stall_every", type=_NONNEG, default=0.0, show_default=True,
                     help="Repeat the stall every S seconds of stream (0: once, at 1 s)."),
        click.option("--garbage-burst-bytes", "--garbage-burst", "garbage_burst",
                     type=click.IntRange(min=0), default=0, show_default=True,
                     help="Insert a burst of N random bytes between two frames."),
        click.option("--garbage-every-s", "--garbage-every", "garbage_every",
                     type=_NONNEG, default=0.0, show_default=True,
                     help="Repeat the garbage burst every S seconds of stream (0: once, at 1 s)."),
        click.option("--restart-seq-at-s", "--restart-seq-at", "restart_seq_at",
                     type=click.FloatRange(min=0.0, min_open=True), default=None,
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
@click.option("--kind", type=click.Choice(["resting", "psychometric", "threshold", "closed-loop"]),
              default=None,
              help="Virtual-cortex session kind (default psychometric: stimulation events included). "
                   "closed-loop: no stimulation of its own; the host's STIM_COMMAND frames are "
                   "delivered (see --truth).")
@click.option("--dataset", "dataset_path", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Stream a dataset session (looping) instead of the virtual cortex.")
@click.option("--session", default=None, help="Session id in --dataset (default: the first).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the virtual cortex and the fault generator.")
@click.option("--duration-s", "--duration", "duration", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Seconds of stream to send (default: until Ctrl-C).")
@click.option("--speed", type=_NONNEG, default=1.0, show_default=True,
              help="Pace: 1 = real time, 10 = ten times faster, 0 = as fast as the port takes it.")
@click.option("--frame-samples", type=click.IntRange(1, 65535), default=16, show_default=True,
              help="Samples per SAMPLES frame.")
@click.option("--wire-format", type=click.Choice(["float16", "int16"]), default="float16",
              show_default=True,
              help="Sample encoding: float16 (SAMPLES_F16 frames, 11 significant bits at every "
                   "amplitude) or int16 (SAMPLES frames, a fixed step of --scale-uv).")
@click.option("--scale-uv", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Microvolts per unit on the wire (default 0.02 for int16, 1.0 for float16). "
                   "With float16 it only moves the range (+-65504 x scale) and keeps the "
                   "relative precision; 1.0 suits MUA.")
@click.option("--status-every-s", "--status-every", "status_every", type=_NONNEG, default=1.0, show_default=True,
              help="Seconds between STATUS frames (0: only at start and end).")
@click.option("--baud", type=click.IntRange(min=1), default=None,
              help="Baud rate for a real serial port (default 3000000; ignored by ptys and URLs). "
                   "A rate below what the stream needs is warned about.")
@click.option("--capture", type=click.Path(dir_okay=False, path_type=str), default=None,
              metavar="FILE",
              help="Also write the exact bytes sent to FILE (raw wire bytes). FILE appears "
                   "complete when the stream ends (Ctrl-C or a lost port included).")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False, path_type=str),
              default=None, metavar="FILE",
              help="Re-send a capture (--capture, or `phosphene run --capture`) bit for bit, "
                   "paced by its frames' sample counters and rate (--speed scales the pace).")
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              metavar="FILE",
              help="Write one JSON line per acknowledged command to FILE: delivered (onset sample, "
                   "perceived, P_true, P(perceived | state), state g) or refused (why). FILE "
                   "appears complete when the stream ends.")
@_fault_options
@click.option("--quiet", is_flag=True, help="No live summary on stderr.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the final counts as one JSON object on stdout.")
def simulate_stream(port, use_pty, kind, dataset_path, session, seed, duration, speed, frame_samples,
                    wire_format, scale_uv, status_every, baud, capture, replay, truth_path, drop_bytes,
                    flip_bits,
                    drop_frames, duplicate_frames, reorder_frames, stall_ms, stall_every,
                    garbage_burst, garbage_every, restart_seq_at, quiet, as_json):
    """Stream virtual-cortex MUA as wire frames over serial, at real-time pace.

    Each 16-sample block becomes a SAMPLES_F16 frame (SAMPLES with --wire-format int16);
    each stimulation onset an EVENT_STIM frame sent just before the frame holding its
    onset sample. Faults are injected with exact counts, so a receiver's loss counters can
    be checked against them (the JSON's expected_* fields are what a correct decoder
    reports). On a lost port it prints the counts so far, then one error line, and exits 1.

    \b
    Examples:
      phosphene simulate stream --pty --duration-s 60 --kind psychometric
      phosphene simulate stream --port /dev/ttyUSB0 --baud 3000000
      phosphene simulate stream --pty --speed 10 --drop-frames 0.01 --flip-bits 1e-6 --json
      phosphene simulate stream --port socket://localhost:7777 --dataset data --session rest-0
      phosphene simulate stream --pty --duration-s 60 --capture session.wire
      phosphene simulate stream --pty --replay session.wire --speed 2
      phosphene simulate stream --pty --kind closed-loop --truth truth.jsonl --duration-s 120
    """
    from phosphene.firmware_bridge.simulator import FaultConfig, Simulator, SimulatorConfig

    if (port is None) == (not use_pty):
        raise click.UsageError("give exactly one of --port DEV or --pty")
    if replay is not None:
        _check_replay_options(click.get_current_context())
    if dataset_path is not None and kind is not None:
        raise click.UsageError("--kind selects a virtual-cortex session; it cannot be used with --dataset")
    if session is not None and dataset_path is None:
        raise click.UsageError("--session needs --dataset")
    if truth_path is not None and kind != "closed-loop":
        raise click.UsageError("--truth records commanded stimulations: it needs --kind closed-loop")

    writer = source = truth = None
    if replay is not None:
        runner, fmt = _open_replay(replay, speed)
    else:
        try:
            faults = FaultConfig(drop_bytes_p=drop_bytes, flip_bits_p=flip_bits,
                                 drop_frames_p=drop_frames, duplicate_frames_p=duplicate_frames,
                                 reorder_frames_p=reorder_frames, stall_ms=stall_ms,
                                 stall_every_s=stall_every, garbage_burst_bytes=garbage_burst,
                                 garbage_every_s=garbage_every, restart_seq_at_s=restart_seq_at)
            config = SimulatorConfig(frame_samples=frame_samples, sample_format=wire_format,
                                     scale_uv=scale_uv, speed=speed, status_every_s=status_every,
                                     seed=seed, faults=faults)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        source = _open_source(dataset_path, session, kind, seed)
        fmt = (int(source.n_channels), round(source.sample_rate_hz), frame_samples)

        def progress(counts) -> None:
            if not quiet and not counts.done:
                click.echo(counts.summary_line(), err=True)

        writer = _open_capture(capture)
        try:
            truth = _open_capture(truth_path, "the ground truth")
        except click.ClickException:
            if writer is not None:
                writer.discard()
            raise

        def record_truth(record: dict) -> None:
            truth.write((json.dumps(record, separators=(",", ":")) + "\n").encode())

        runner = Simulator(source, config, on_progress=progress,
                           on_wire=writer.write if writer is not None else None,
                           on_truth=record_truth if truth is not None else None)
    if baud is not None and fmt is not None:
        _warn_slow_baud(baud, *fmt, pty=use_pty)
    try:
        target, where = _open_target(port, use_pty, baud, as_json)
    except BaseException:
        for partial in (writer, truth):
            if partial is not None:
                partial.discard()
        raise
    try:
        _run(runner, target, None if replay is not None else duration,
             None if quiet or replay is None else runner)
        if use_pty and not target.drain(timeout_s=2.0):
            click.echo("warning: the reader did not take the last bytes before the pty closed",
                       err=True)
    finally:
        _close_quietly(target)
        for complete in (writer, truth):
            if complete is not None:
                complete.close()
    _report(runner, where, replay, source, as_json)


_NOT_WITH_REPLAY = ("kind", "dataset_path", "session", "seed", "duration", "frame_samples",
                    "wire_format", "scale_uv", "status_every", "capture", "drop_bytes",
                    "flip_bits", "drop_frames", "duplicate_frames", "reorder_frames", "stall_ms",
                    "stall_every", "garbage_burst", "garbage_every", "restart_seq_at")


def _check_replay_options(ctx: click.Context) -> None:
    from click.core import ParameterSource

    given = [p.opts[0] for p in ctx.command.params if p.name in _NOT_WITH_REPLAY
             and ctx.get_parameter_source(p.name) in (ParameterSource.COMMANDLINE,
                                                      ParameterSource.ENVIRONMENT)]
    if given:
        raise click.UsageError(f"--replay re-sends a capture as it was recorded; it cannot be "
                               f"used with {', '.join(given)}")


def _open_replay(path: str, speed: float):
    """(Replayer, (n_channels, rate, frame_samples) or None) for a capture file."""
    from phosphene.firmware_bridge.capture import Replayer, describe_capture

    try:
        info = describe_capture(path)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    if info["frames"] == 0:
        raise click.ClickException(f"{path} holds no phosphene frames (is it a wire capture?)")
    fmt = None
    if info["sample_frames"]:
        fmt = (info["n_channels"], info["sample_rate_hz"], info["frame_samples"])
    return Replayer(path, speed=speed), fmt


def _open_capture(path: str | None, what: str = "capture"):
    """An atomic writer for path (a capture, or the --truth lines), or None."""
    from phosphene.firmware_bridge.capture import CaptureWriter

    if path is None:
        return None
    try:
        return CaptureWriter(path)
    except OSError as exc:
        raise click.ClickException(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def _warn_slow_baud(baud: int, n_channels: int, rate_hz: int, frame_samples: int, *,
                    pty: bool) -> None:
    from phosphene.firmware_bridge.protocol import required_baud

    need = required_baud(n_channels, rate_hz, frame_samples)
    if baud < need:
        note = "; a pty ignores the rate, a real UART would fall behind" if pty else (
            "; the link will fall behind and the device will drop frames")
        click.echo(f"warning: --baud {baud} is below the {need} baud (8N1) that {n_channels} "
                   f"channels at {rate_hz} Hz in {frame_samples}-sample frames need{note}",
                   err=True)


def _open_target(port, use_pty: bool, baud, as_json: bool):
    from phosphene.firmware_bridge.transport import DEFAULT_BAUD, PortError, PtyPair, open_port

    if use_pty:
        target = PtyPair()
        where = target.device_path
        if as_json:
            click.echo(json.dumps({"pty": where}), err=True)
        else:
            click.echo(f"pty: open {where} from the runtime", err=True)
        return target, where
    try:
        return open_port(port, baudrate=baud or DEFAULT_BAUD, timeout_s=0.1), port
    except PortError as exc:
        raise click.ClickException(str(exc)) from None


def _close_quietly(target) -> None:
    """Close the port; one that vanished may fail to close, and is gone either way."""
    with contextlib.suppress(OSError):
        target.close()


def _report(runner, where: str, replay: str | None, source, as_json: bool) -> None:
    """Print the final counts (JSON on stdout, or lines on stderr); then fail on a lost port."""
    counts = runner.counts
    error = None
    if runner.error is not None:
        exc = runner.error
        error = (f"port {where} failed mid-stream: {exc} (device unplugged or closed?)"
                 if isinstance(exc, OSError) else f"stream to {where} failed: {exc!r}")
    described = {"source": "replay", "path": replay} if replay is not None else source.describe()
    result = {"port": where, **described, **counts.to_dict()}
    result.pop("done", None)
    if error is not None:
        result["error"] = error
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif replay is not None:
        click.echo(f"done: {counts.summary_line()}, {counts.pieces_sent} writes in "
                   f"{counts.elapsed_s:.1f} s", err=True)
    else:
        click.echo(f"done: {counts.summary_line()}", err=True)
    if not as_json and replay is None and error is None:  # a cut run has no closing balance
        click.echo(f"expected at the receiver: frames lost {counts.expected_frames_lost}, "
                   f"duplicates {counts.expected_duplicates}, reordered {counts.expected_reordered}, "
                   f"bytes discarded {counts.expected_bytes_discarded}", err=True)
    if error is not None:
        raise click.ClickException(error)


def _open_source(dataset_path, session, kind, seed):
    from phosphene.firmware_bridge.simulator import CortexSource, DatasetSource

    try:
        if dataset_path is not None:
            return DatasetSource(dataset_path, session)
        return CortexSource(kind or "psychometric", seed=seed)
    except (PhospheneError, KeyError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise click.ClickException(str(msg)) from None


def _run(sim, target, duration, progress=None) -> None:
    """Run the simulator (or replayer) in a thread so Ctrl-C or SIGTERM (systemd, a test
    harness) stop it cleanly, closing frame included. progress: print its counts' summary
    line every second."""
    import signal
    import threading
    import time

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sim.stop()) if in_main else None
    sim.start(target, duration)
    last = time.monotonic()
    try:
        while not sim.wait(0.2):
            if progress is not None and time.monotonic() - last >= 1.0:
                last = time.monotonic()
                click.echo(progress.counts.summary_line(), err=True)
    except KeyboardInterrupt:
        click.echo("stopping (Ctrl-C)", err=True)
        sim.stop()
        sim.wait(5.0)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
