"""`phosphene run` and `phosphene bench` (and `verify`): the bedside commands.

Imports numpy, click, pyserial, the core, firmware_bridge and edge only: this module is
what a board runs, and tests/edge proves it never pulls in torch, tensorflow, onnx,
scikit-learn or scipy.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

import click

from phosphene.errors import ConfigError, PhospheneError

__all__ = ["bench", "run"]

_SIM_KINDS = ("resting", "psychometric", "threshold", "closed-loop")


def _load_bundle(path: str, key: str | None = None, pin: str | None = None):
    from phosphene.edge.bundle import BundleError, load_bundle

    try:
        return load_bundle(path, key=key, pin=pin)
    except (BundleError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


# --key / --pin on run, bench and verify; the environment variables let a systemd unit
# require a signature or a digest without changing the command line
_key_option = click.option(
    "--key", "key_file", metavar="KEYFILE", envvar="PHOSPHENE_BUNDLE_KEY", show_envvar=True,
    help="Require a valid signature by this key (HMAC site key or Ed25519 public key).")
_pin_option = click.option(
    "--pin", metavar="DIGEST", envvar="PHOSPHENE_BUNDLE_PIN", show_envvar=True,
    help="Require the bundle's digest (as `phosphene verify` prints it) to be this one.")


def _kernel_label() -> str:
    from phosphene.edge.kernel import kernel_name

    return "compiled kernel" if kernel_name() == "c" else "numpy (compiled kernel not built)"


def _make_decoder(bundle, *, threads: int, runtime: str, task: str | None = None):
    from phosphene.edge.interpreter import RuntimeUnavailable
    from phosphene.edge.runtime import BundleDecoder

    try:
        return BundleDecoder(bundle, threads=threads, runtime=runtime, task=task)
    except (PhospheneError, RuntimeUnavailable, OSError) as exc:
        raise click.ClickException(str(exc)) from None


def _stderr_logging() -> None:
    """Library warnings (reconnects, open failures) go to stderr, one line each."""
    root = logging.getLogger("phosphene")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[phosphene] %(levelname)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


def _check_cpu(cpu: int) -> None:
    """One `Error:` line for a CPU this process may not run on."""
    from phosphene.edge.benchmark import check_cpu

    try:
        check_cpu(cpu)
    except ConfigError as exc:
        raise click.ClickException(f"--cpu {cpu}: {exc}") from None


def _pin_cpu(cpu: int) -> None:
    """This process, and every thread it starts from here on, on `cpu` only."""
    import os

    _check_cpu(cpu)
    os.sched_setaffinity(0, {cpu})


class _Signals:
    """SIGINT/SIGTERM set a stop event (the loop then ends cleanly); restored on exit."""

    def __init__(self, stop: threading.Event):
        self.stop, self.received = stop, None
        self._old: dict = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        # Not self.stop.set() here: the handler runs on the main thread, which may be inside
        # stop.wait() holding the Event's lock; set() would wait for that lock forever (a
        # SIGTERM deadlock seen once in CI, stack taken with py-spy). A helper thread takes
        # the lock once the main thread's wait releases it.
        threading.Thread(target=self.stop.set, name="stop-signal", daemon=True).start()

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------
# phosphene run
# --------------------------------------------------------------------------------------
_GATE_PARAMS = ("stim_electrode", "stim_current_ua", "stim_count", "min_interval_s", "max_wait_s",
                "gate_threshold", "gate_quantile", "open_loop", "deadline_ms", "warmup_s")


def _gate_options(func):
    """The stimulation plan of --mode gated, handed to the command as one `gate` dict."""
    import functools

    options = [
        click.option("--stim-electrode", type=click.IntRange(0, 65535), multiple=True, metavar="E",
                     help="--mode gated: electrode to stimulate (repeat: stimulated in turn)."),
        click.option("--stim-current-ua", type=click.FloatRange(min=0, min_open=True), multiple=True,
                     metavar="UA", help="--mode gated: current in uA (one for all electrodes, or one "
                                        "per --stim-electrode)."),
        click.option("--stim-count", type=click.IntRange(min=1), default=10, show_default=True,
                     help="--mode gated: stimulations to deliver, then no more commands."),
        click.option("--min-interval-s", type=click.FloatRange(min=0), default=2.0, show_default=True,
                     help="--mode gated: least time between two onsets (device samples): the plan's rate."),
        click.option("--max-wait-s", type=click.FloatRange(min=0), default=3.0, show_default=True,
                     help="--mode gated: after the interval, stimulate anyway once this much longer "
                          "has passed without the threshold being crossed."),
        click.option("--gate-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="--mode gated: stimulate when P(perceived) >= this (default 0.5 unless "
                          "--gate-quantile)."),
        click.option("--gate-quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="--mode gated: stimulate when P(perceived) is above this quantile of the "
                          "last minute's decisions (for a probe not calibrated on ongoing activity)."),
        click.option("--open-loop", is_flag=True,
                     help="--mode gated: ignore P(perceived); stimulate every --min-interval-s "
                          "(the comparison a gated plan must beat)."),
        click.option("--deadline-ms", type=click.FloatRange(min=0, min_open=True), default=20.0,
                     show_default=True,
                     help="--mode gated: the device refuses a command it would deliver later than "
                          "this after the decision's last sample."),
        click.option("--warmup-s", type=click.FloatRange(min=0), default=10.0, show_default=True,
                     help="--mode gated: seconds of decisions only watched before the first command."),
    ]

    @functools.wraps(func)
    def command(*args, **kwargs):
        kwargs["gate"] = {name: kwargs.pop(name) for name in _GATE_PARAMS}
        return func(*args, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


def _gate_plan(mode: str, gate: dict):
    """The GatePlan of --mode gated (None otherwise); bad combinations are usage errors."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in _GATE_PARAMS
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    if mode != "gated":
        if given:
            raise click.UsageError(f"{', '.join(given)} need --mode gated")
        return None
    from phosphene.edge.gate import GatePlan

    if not gate["stim_electrode"] or not gate["stim_current_ua"]:
        raise click.UsageError("--mode gated needs a plan: --stim-electrode E and --stim-current-ua UA")
    if gate["gate_threshold"] is not None and gate["gate_quantile"] is not None:
        raise click.UsageError("give --gate-threshold or --gate-quantile, not both")
    if gate["open_loop"] and (gate["gate_threshold"] is not None or gate["gate_quantile"] is not None):
        raise click.UsageError("--open-loop stimulates at fixed intervals: it takes no threshold")
    threshold = gate["gate_threshold"]
    if threshold is None and gate["gate_quantile"] is None:
        threshold = 0.5
    try:
        return GatePlan(electrodes=tuple(gate["stim_electrode"]), currents_ua=tuple(gate["stim_current_ua"]),
                        count=gate["stim_count"], min_interval_s=gate["min_interval_s"],
                        max_wait_s=gate["max_wait_s"], threshold=threshold,
                        quantile=gate["gate_quantile"], warmup_s=gate["warmup_s"],
                        policy="open-loop" if gate["open_loop"] else "gated",
                        deadline_ms=gate["deadline_ms"])
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
@click.command("run")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--port", metavar="DEV", help="Serial device of the array (/dev/ttyACM0) or a pyserial URL.")
@click.option("--baud", type=click.IntRange(min=1), default=None,
              help="Baud rate for a UART bridge (default 3,000,000; USB CDC devices ignore it).")
@click.option("--pty-from-simulator", is_flag=True,
              help="No hardware: stream the virtual cortex through a pseudo-terminal in this process.")
@click.option("--mode", type=click.Choice(["triggered", "continuous", "gated"]), default="triggered",
              show_default=True,
              help="triggered: one decision per stimulation onset; continuous: one per patch; "
                   "gated: one per patch, and stimulation commands sent by the plan (--stim-*).")
@click.option("--json", "as_json", is_flag=True, help="Decisions as JSON lines on stdout, then a summary line.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str),
              help="Decision log (JSON lines); appears complete when the run ends.")
@click.option("--capture", type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              help="Also write every byte read to FILE (complete when the run ends), to replay "
                   "the session later with `phosphene simulate stream --replay FILE`.")
@click.option("--duration-s", "--duration", "duration", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Stop after S seconds (default: run until SIGINT/SIGTERM).")
@click.option("--budget-ms", type=click.FloatRange(min=0, min_open=True),
              help="Latency budget per decision (default: the bundle's).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Interpreter threads (one is fastest for these models).")
@click.option("--runtime", "runtime_name", type=click.Choice(["auto", "litert", "tflite-runtime"]),
              default="auto", show_default=True, help="TFLite interpreter package.")
@click.option("--stall-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="No samples for this long -> 'stall' no-decision.")
@click.option("--stale-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="A window whose last sample was due (by the device's sample counter) longer "
                   "ago than this -> 'stale' no-decision: after a backlog or a pause the "
                   "runtime skips to the newest data instead of deciding on the past.")
@click.option("--max-lost-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Lost samples a window may contain and still be decided.")
@click.option("--refuse-unhealthy", is_flag=True,
              help="No decisions ('unhealthy_input') while input health reports a dead, flat or "
                   "saturated channel that was alive at calibration, or input statistics far from "
                   "the bundle's calibration. Without it, health is reported (status line, "
                   "'health' log lines, summary) but decisions go on.")
@click.option("--status-s", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between status lines on stderr (0: none).")
@click.option("--monitor", metavar="[HOST:]PORT", callback=lambda ctx, param, value: _monitor_address(value),
              help="Serve a read-only monitor page (/), /status (JSON) and /metrics (Prometheus) on "
                   "127.0.0.1:PORT; another address only when written out (0.0.0.0:8080). Port 0: any free port.")
@click.option("--task", help="Which of the bundle's probes to apply (default: the bundle's); a "
              "task named *_pre reads the window that ends at onset.")
@click.option("--realtime", type=click.IntRange(1, 99), metavar="PRIO",
              help="Run the deciding thread at SCHED_FIFO priority PRIO (root or CAP_SYS_NICE).")
@click.option("--cpu", type=click.IntRange(min=0), metavar="N",
              help="Pin the runtime (its deciding thread and helpers) to CPU N, e.g. one the "
                   "board's other work is kept off; with --realtime a busy neighbour then "
                   "cannot delay a decision.")
@click.option("--sim-kind", type=click.Choice(_SIM_KINDS), default=None,
              help="With --pty-from-simulator: the session kind streamed (default psychometric; "
                   "closed-loop, which obeys commands, with --mode gated).")
@click.option("--sim-speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="With --pty-from-simulator: 1 = real time.")
@click.option("--sim-seed", type=int, default=0, show_default=True, help="With --pty-from-simulator: seed.")
@click.option("--sim-channels", type=click.IntRange(min=1),
              help="With --pty-from-simulator: stream this many channels (default: the bundle's; "
                   "another count shows the mismatch fail-safe).")
@click.option("--sim-drop-frames", type=click.FloatRange(0, 1), default=0.0,
              help="With --pty-from-simulator: probability of dropping each frame.")
@click.option("--sim-stall-ms", type=click.FloatRange(min=0), default=0.0,
              help="With --pty-from-simulator: the link goes silent this long (see --sim-stall-every-s).")
@click.option("--sim-stall-every-s", type=click.FloatRange(min=0), default=0.0,
              help="With --pty-from-simulator: period of the stalls (0: one stall, at 1 s).")
@_key_option
@_pin_option
@_gate_options
def run(bundle, port, baud, pty_from_simulator, mode, as_json, out, capture, duration, budget_ms, threads,
        runtime_name, stall_ms, stale_ms, max_lost_samples, refuse_unhealthy, status_s, task, realtime, cpu,
        sim_kind, sim_speed, sim_seed, sim_channels, sim_drop_frames, sim_stall_ms, sim_stall_every_s,
        key_file, pin, monitor, gate):
    """Decode a live serial stream on the bedside device.

    Reads the array's frames, normalises them with the bundle's normaliser, runs the
    int8 encoder and probe, and writes one line per decision (or an explicit no-decision
    with its reason: stall, lost_samples, stale, stream_mismatch, warming_up,
    window_expired). Status lines and the final summary go to stderr. SIGINT/SIGTERM end
    the run cleanly.

    \b
    Examples:
      phosphene run bundle --pty-from-simulator --mode triggered --duration-s 20
      phosphene run bundle --port /dev/ttyACM0 --mode continuous --json --out decisions.jsonl
      phosphene run bundle --pty-from-simulator --monitor 8080     # then open http://127.0.0.1:8080/
      phosphene run bundle --pty-from-simulator --mode gated --stim-electrode 25 \\
          --stim-current-ua 20 --stim-count 10 --gate-quantile 0.8 --out loop.jsonl
    """
    from phosphene.edge.runtime import DecisionSinks, Runtime, RuntimeConfig, format_summary
    from phosphene.edge.source import run_live

    if bool(port) == bool(pty_from_simulator):
        raise click.UsageError("give exactly one input: --port DEV or --pty-from-simulator")
    plan = _gate_plan(mode, gate)
    sim_kind = sim_kind or ("closed-loop" if mode == "gated" else "psychometric")
    if cpu is not None:  # before any thread starts: the reader and the helpers inherit it
        _pin_cpu(cpu)
    _stderr_logging()
    b = _load_bundle(bundle, key_file, pin)
    decoder = _make_decoder(b, threads=threads, runtime=runtime_name, task=task)
    try:
        config = RuntimeConfig(mode=mode, latency_budget_ms=budget_ms or b.latency_budget_ms,
                               stall_ms=stall_ms, stale_ms=stale_ms, max_lost_samples=max_lost_samples,
                               refuse_unhealthy=refuse_unhealthy,
                               status_interval_s=status_s)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    array = None
    if pty_from_simulator:
        array = _simulated_array(b, sim_kind, sim_speed, sim_seed, sim_channels, sim_drop_frames,
                                 sim_stall_ms, sim_stall_every_s)
        port = array.device_path
    from phosphene.firmware_bridge.transport import DEFAULT_BAUD, PortError, open_port

    baudrate = baud or DEFAULT_BAUD
    _warn_if_baud_too_low(baud, b)
    try:
        # fail now, with one clear line, if it cannot open
        first_port = open_port(port, baudrate=baudrate, timeout_s=0.1)
    except PortError as exc:
        if array is not None:
            array.close()
        raise click.ClickException(str(exc)) from None
    handed = [first_port]

    from phosphene.edge.gate import CommandLink

    link = CommandLink()  # gated mode writes its commands to the port being read

    def port_factory():  # the open port first; reopen by name after a disconnect
        opened = handed.pop() if handed else open_port(port, baudrate=baudrate, timeout_s=0.1)
        link.attach(opened)
        return opened

    from phosphene.edge.deploy.watchdog import Watchdog

    spec = b.window_for(decoder.task)
    click.echo(f"[phosphene run] {b.path} on {port}: {mode} mode, {decoder.task} probe, window "
               f"{spec.window_samples} samples from {spec.offset_ms:+g} ms, budget "
               f"{config.latency_budget_ms:g} ms, {decoder.runtime_name} {decoder.runtime_version}, "
               f"{threads} thread(s), int8 path: {_kernel_label()}", err=True)
    try:
        sinks = DecisionSinks(stdout=sys.stdout, json_stdout=as_json, out_path=out)
    except OSError as exc:
        first_port.close()
        if array is not None:
            array.close()
        raise click.ClickException(f"cannot write the decision log {out}: {exc.strerror or exc}") from None
    runtime = Runtime(decoder, spec=spec, normaliser_config=b.normaliser_config,
                      n_channels=b.n_channels, config=config, sinks=sinks, status_stream=sys.stderr,
                      health_reference=b.manifest.get("input_health"), wire_rails_uv=_wire_rails(b))
    if plan is not None:
        from phosphene.edge.gate import Gate

        runtime.gate = Gate(plan, sample_rate_hz=spec.sample_rate_hz, window_samples=spec.window_samples,
                            patch_samples=spec.patch_samples, send=link.send, write=sinks.write,
                            due_ns=runtime.stream_clock.due_ns, clock_ns=runtime.clock_ns)
    recording = None
    if capture:
        from phosphene.firmware_bridge.capture import CaptureWriter

        try:
            recording = CaptureWriter(capture)
        except OSError as exc:
            first_port.close()
            if array is not None:
                array.close()
            raise click.ClickException(f"cannot write the capture {capture}: "
                                       f"{exc.strerror or exc}") from None
    monitor_server = _start_monitor(monitor, runtime, b, [first_port, array, recording])
    stop = threading.Event()
    try:
        with _Signals(stop) as signals:
            run_s = duration
            simulator_done = threading.Event()
            if array is not None:
                # the simulated array stops first and the runtime then drains what it sent,
                # so frames sent and frames received compare exactly (the simulator counts
                # stream time, which runs sim_speed times faster than the wall clock)
                array.start(duration_s=None if duration is None else duration * sim_speed)
                if duration is not None:
                    run_s = None
                    drain_s = min(SIMULATOR_DRAIN_S, 0.5 * config.stall_ms / 1000.0)
                    threading.Thread(target=_stop_after, daemon=True, name="sim-drain",
                                     args=(array, stop, simulator_done, drain_s)).start()
            result = run_live(runtime, port_factory, stop=stop, duration_s=run_s, watchdog=Watchdog(),
                              stop_reason=lambda: signals.received or (
                                  "duration" if simulator_done.is_set() else "stop"),
                              realtime_priority=realtime, port_name=port, capture=recording)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        runtime.close()
        if array is not None:
            array.close()
        if recording is not None:
            recording.close()
        if monitor_server is not None:
            monitor_server.close()
    summary = result.summary
    if recording is not None:
        summary["capture"] = {"path": str(recording.path), "bytes": recording.bytes_written}
    summary["stopped_by"] = result.stopped_by
    if array is not None:  # what the simulated array sent, to compare with what arrived
        from dataclasses import asdict

        summary["simulator"] = {k: v for k, v in asdict(array.simulator.counts).items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)}
    sinks.write(summary)  # the log's last line; on stdout too with --json
    log_path = sinks.close()
    click.echo(format_summary(summary), err=True)
    if log_path is not None:
        click.echo(f"[phosphene run] decision log: {log_path}", err=True)


def _monitor_address(value: str | None) -> tuple[str, int, bool] | None:
    """--monitor [HOST:]PORT -> (host, port, host written out)."""
    if value is None:
        return None
    from phosphene.edge.monitor import MonitorError, parse_monitor_address

    try:
        return parse_monitor_address(value)
    except MonitorError as exc:
        raise click.BadParameter(str(exc), param_hint="'--monitor'") from None


def _start_monitor(address, runtime, bundle, opened: list):
    """Serve the run's monitor (edge/monitor.py); if it cannot bind, close what the run opened."""
    if address is None:
        return None
    from phosphene.edge.monitor import MonitorError, MonitorServer, attach_monitor

    host, port, written_out = address
    feed = attach_monitor(runtime, bundle.channel_map)
    try:
        server = MonitorServer(feed, host, port, allow_remote=written_out).start()
    except MonitorError as exc:
        for thing in opened:
            if thing is not None:
                thing.close()
        raise click.ClickException(str(exc)) from None
    click.echo(f"[phosphene run] monitor: {server.url} (read-only; /status, /metrics)"
               + ("; reachable from the network, without authentication" if server.remote else ""), err=True)
    return server


def _wire_rails(bundle) -> tuple[float, float] | None:
    """The values a saturated sample of the bundle's wire format decodes to (None: unknown)."""
    from phosphene.edge.health import wire_rails_uv

    wire = bundle.manifest.get("wire")
    if not isinstance(wire, dict):
        return None
    return wire_rails_uv(float(wire.get("scale_uv", 1.0)), wire.get("sample_format", "float16"))


def _warn_if_baud_too_low(baud: int | None, bundle) -> None:
    """A UART slower than the stream needs loses frames from the start: say so at once."""
    from phosphene.firmware_bridge.protocol import required_baud

    if baud is None:
        return
    need = required_baud(bundle.n_channels, bundle.sample_rate_hz, bundle.window_spec.patch_samples)
    if baud < need:
        click.echo(f"[phosphene run] warning: --baud {baud} is below the {need:,} baud that "
                   f"{bundle.n_channels} channels at {bundle.sample_rate_hz:g} Hz need in "
                   f"{bundle.window_spec.patch_samples}-sample frames: a UART bridge will lose "
                   "frames (USB CDC devices ignore the baud rate)", err=True)


BUDGET_FAILED = 3  # `bench`'s exit status when its own check fails (errors exit 1)


# after the simulated array's last frame, before the runtime stops (under the stall bound,
# so the drain never reads as a stall)
SIMULATOR_DRAIN_S = 0.5


def _stop_after(array, stop: threading.Event, done: threading.Event, drain_s: float) -> None:
    """Stop the runtime drain_s after the simulated array has sent its last frame."""
    array.simulator.wait()
    if not stop.wait(drain_s):  # a signal may have stopped the run meanwhile
        done.set()
        stop.set()


def _simulated_array(b, kind, speed, seed, channels, drop_frames, stall_ms, stall_every_s):
    from phosphene.edge.source import SimulatedArray
    from phosphene.firmware_bridge.simulator import FaultConfig
    from phosphene.geometry import map_for_channels

    channel_map = b.channel_map if channels in (None, b.n_channels) else map_for_channels(channels)
    try:
        faults = FaultConfig(drop_frames_p=drop_frames, stall_ms=stall_ms, stall_every_s=stall_every_s)
        return SimulatedArray(channel_map, kind=kind, speed=speed, seed=seed,
                              frame_samples=b.window_spec.patch_samples, faults=faults)
    except (PhospheneError, OSError) as exc:
        raise click.ClickException(f"cannot start the simulator: {exc}") from None


# --------------------------------------------------------------------------------------
# phosphene bench
# --------------------------------------------------------------------------------------
@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Interpreter threads.")
@click.option("--runs", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Steady-state repetitions measured.")
@click.option("--warmup", type=click.IntRange(min=0), default=50, show_default=True,
              help="Repetitions run before measuring.")
@click.option("--runtime", "runtime_name", type=click.Choice(["auto", "litert", "tflite-runtime"]),
              default="auto", show_default=True, help="TFLite interpreter package.")
@click.option("--budget-ms", type=click.FloatRange(min=0, min_open=True),
              help="Latency budget to check (default: the bundle's).")
@click.option("--stream", is_flag=True,
              help="Also measure end to end: the live runtime reading a pty fed by the simulator at real time.")
@click.option("--duration-s", "--duration", "duration",
              type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="S", help="With --stream: seconds of stream.")
@click.option("--realtime", type=click.IntRange(1, 99), metavar="PRIO",
              help="Measure at SCHED_FIFO priority PRIO, as a dedicated board would run (root or "
                   "CAP_SYS_NICE).")
@click.option("--cpu", type=click.IntRange(min=0), metavar="N",
              help="Pin the measuring process to CPU N while measuring (with --stream: the "
                   "runtime; the simulator, a stand-in for the array, is not pinned).")
@click.option("--load", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Keep N busy processes running while measuring (ended when the benchmark "
                   "ends, and by themselves after a time bound), to measure the tail under load.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (stable keys).")
@_key_option
@_pin_option
def bench(bundle, threads, runs, warmup, runtime_name, budget_ms, stream, duration, realtime, cpu, load,
          as_json, key_file, pin):
    """Benchmark a bundle's decision latency on this device.

    Like TFLite's benchmark_model: interpreter and version, init time, first inference,
    then mean/std/p50/p90/p99/max of the interpreter alone (invoke_us), of the whole
    decision (decision_us) and of its stages (stages_us: ring = normalise + quantise the
    new patch into the int8 ring, gather, invoke, probe), the same for the float path the
    int8 ring replaced (float_path), decision/invoke ratios, peak RSS, and whether the
    budget holds. --stream adds end-to-end latency through a pseudo-terminal at real time,
    with its stages (read_parse, ring, decision, write). Exit status 3 (after the full
    report) when the budget does not hold: decision p99 above it, or with --stream any
    miss or an end-to-end p99 above it.

    \b
    Examples:
      phosphene bench bundle
      phosphene bench bundle --threads 1 --runs 5000 --json
      phosphene bench bundle --runs 3000 --load 1 --json
      phosphene bench bundle --stream --duration-s 60
      phosphene bench bundle --stream --duration-s 600 --realtime 50 --cpu 1 --load 1
    """
    from phosphene.edge.benchmark import BenchConfig, bench_bundle, format_bench

    _stderr_logging()
    if cpu is not None:
        _check_cpu(cpu)
    b = _load_bundle(bundle, key_file, pin)
    _make_decoder(b, threads=threads, runtime=runtime_name)  # clear errors before measuring
    config = BenchConfig(threads=threads, runs=runs, warmup=warmup, runtime=runtime_name,
                         latency_budget_ms=budget_ms, realtime_priority=realtime, cpu=cpu, load=load)
    try:
        result = bench_bundle(bundle, config, key=key_file, pin=pin)
        if stream:
            from phosphene.edge.benchmark import bench_stream

            result["stream"] = bench_stream(b, duration_s=duration, threads=threads,
                                            runtime=runtime_name, latency_budget_ms=result["budget_ms"],
                                            realtime_priority=realtime, cpu=cpu, load=load)
            result["budget_ok"] = bool(result["budget_ok"] and result["stream"]["budget_ok"])
    except (PhospheneError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_bench(result))
    if not result["budget_ok"]:
        click.echo(f"Error: the {result['budget_ms']:g} ms latency budget does not hold on this "
                   "device (see the report above)", err=True)
        sys.exit(BUDGET_FAILED)


# --------------------------------------------------------------------------------------
# phosphene verify: written by the bundle's author (quantize), below this line
# --------------------------------------------------------------------------------------
@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--runtime", "runtime_name", type=click.Choice(["auto", "litert", "tflite-runtime"]),
              default="auto", show_default=True, help="Interpreter used to load and run the model once.")
@click.option("--json", "as_json", is_flag=True, help="Print what the bundle holds as JSON.")
@_key_option
@_pin_option
def verify(bundle, runtime_name, as_json, key_file, pin):
    """Check a bundle's hashes and print what it holds.

    Checks the SHA-256 of every file against bundle.sig (the manifest included), the
    signature with --key and the digest with --pin, the format version, the channel count
    against the channel map, then loads the int8 model in the interpreter, checks its
    input/output tensors against the manifest and runs one window. Prints the digest (to
    pin) and who signed it. Exit 1 with the reason otherwise.

    \b
    Example:
      phosphene verify bundle
      phosphene verify bundle --runtime tflite-runtime --json
      phosphene verify bundle --key bundle-ed25519.pub --pin 3f1a...
    """
    from phosphene.edge.bundle import verify_bundle

    try:
        report = verify_bundle(bundle, runtime=runtime_name, key=key_file, pin=pin)
    except (PhospheneError, OSError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        from phosphene.edge.bundle import format_verify

        click.echo(format_verify(report))
