"""What every command shares: JSON output, progress lines, the DATASET argument.

Stage CLIs (train, quantize, edge, firmware_bridge) import this module, so it sits below
them and imports no stage and no top-level command (numpy + click only).
"""

from __future__ import annotations

import functools
import json
import sys
import time

import click

__all__ = ["ProgressLine", "dataset_argument", "echo_json", "open_dataset", "out_option"]


def echo_json(obj) -> None:
    """Print one JSON document on stdout (nothing else goes to stdout with --json)."""
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class ProgressLine:
    """A one-line progress bar on stderr, redrawn at most ~10 times a second."""

    def __init__(self, label: str, *, enabled: bool = True, width: int = 28):
        self.label, self.enabled, self.width = label, enabled and sys.stderr.isatty(), width
        self._last = 0.0
        self._start = time.monotonic()
        self._plain = enabled and not sys.stderr.isatty()
        self._last_pct = -10

    def update(self, fraction: float, text: str = "") -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or fraction >= 1.0):
            filled = int(self.width * fraction)
            bar = "#" * filled + "-" * (self.width - filled)
            click.echo(f"\r{self.label} [{bar}] {100 * fraction:5.1f}% {text}".ljust(100)[:140],
                       err=True, nl=False)
            self._last = now
        elif self._plain and (100 * fraction - self._last_pct >= 10 or fraction >= 1.0):
            # not a terminal (CI, logs): a line per 10%
            click.echo(f"{self.label}: {100 * fraction:5.1f}% {text}", err=True)
            self._last_pct = 100 * fraction

    def close(self, text: str = "") -> None:
        elapsed = time.monotonic() - self._start
        if self.enabled:
            click.echo("", err=True)
        if text:
            click.echo(f"{self.label}: {text} ({elapsed:.1f} s)", err=True)


def dataset_argument(func):
    """DATASET positional argument that must exist (the message says what it expected)."""
    return click.argument("dataset", type=click.Path(file_okay=False, path_type=str))(func)


def open_dataset(path: str):
    """Open a dataset or raise ClickException with the reason in one line."""
    from phosphene.dataset import Dataset, DatasetError

    try:
        return Dataset.open(path)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None


def out_option(help: str, *, path_type=str, file_okay: bool = True):
    """The output path as `--out OUT`, the convention of every command that writes one.

    The positional OUT of earlier releases still works (`simulate dataset OUT`, `export nwb
    DATASET OUT`); giving both, or neither, is a usage error. The command receives `out`.
    """
    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, out=None, out_option=None, **kwargs):
            if out is not None and out_option is not None:
                raise click.UsageError("give the output once: --out OUT (or the positional OUT)")
            if out is None and out_option is None:
                raise click.UsageError("give the output with --out OUT")
            return f(*args, out=out if out is not None else out_option, **kwargs)

        kind = click.Path(path_type=path_type, file_okay=file_okay)
        wrapper = click.option("--out", "out_option", type=kind, metavar="OUT", help=help)(wrapper)
        return click.argument("out", required=False, type=kind, metavar="[OUT]")(wrapper)

    return decorate
