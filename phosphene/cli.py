"""The `phosphene` command line: one click group, subcommands loaded lazily.

Each subcommand lives beside the code it drives (train/cli.py, edge/cli.py, ...) and is
imported only when invoked, so `phosphene run` on a bedside board never imports torch.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from phosphene import __version__
from phosphene.errors import PhospheneError

# name -> "module:attribute"; the order is the order of `phosphene --help`.
COMMANDS: dict[str, str] = {
    "demo": "phosphene.demo:demo",
    "simulate": "phosphene.data_commands:simulate",
    "info": "phosphene.data_commands:info",
    "import": "phosphene.train.importers:import_group",
    "export": "phosphene.train.importers:export_group",
    "pretrain": "phosphene.train.cli:pretrain",
    "probe": "phosphene.train.cli:probe",
    "distill": "phosphene.distill_cli:distill",
    "quantize": "phosphene.quantize.cli:quantize",
    "keygen": "phosphene.edge.signing:keygen",
    "sign": "phosphene.edge.signing:sign",
    "verify": "phosphene.edge.cli:verify",
    "run": "phosphene.edge.cli:run",
    "bench": "phosphene.edge.cli:bench",
    "score": "phosphene.edge.score:score",
    "bench-loop": "phosphene.edge.loop_bench:bench_loop",
    "monitor": "phosphene.monitor_cli:monitor",
}

SIMULATE_COMMANDS: dict[str, str] = {
    "dataset": "phosphene.data_commands:simulate_dataset",
    "stream": "phosphene.firmware_bridge.cli:simulate_stream",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy_commands) + sorted(set(super().list_commands(ctx)) - set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module_name, attr = self.lazy_commands[name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                missing = getattr(exc, "name", None) or ""
                if not missing or missing.split(".")[0] == "phosphene":
                    raise  # not a missing package: a bug in phosphene itself
                raise click.ClickException(
                    f"`phosphene {name}` needs a package that is not installed ({missing}); "
                    "on a workstation install phosphene[train,quantize], on a board phosphene[edge]"
                ) from None
            return getattr(module, attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        """Expected errors (PhospheneError) become one `Error:` line and exit 1; anything
        else is a bug and keeps its traceback. PHOSPHENE_DEBUG=1 keeps it for both."""
        try:
            return super().invoke(ctx)
        except PhospheneError as exc:
            if os.environ.get("PHOSPHENE_DEBUG") == "1":
                raise
            raise click.ClickException(str(exc)) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import torch: show the first docstring line from a table.
        rows = [(name, COMMAND_SUMMARIES.get(name, "")) for name in self.list_commands(ctx)
                if name in self.lazy_commands]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


COMMAND_SUMMARIES = {
    "demo": "Run the whole pipeline on the virtual cortex and write a report.",
    "simulate": "Generate virtual-cortex datasets or stream frames over serial.",
    "info": "Summarise a dataset.",
    "import": "Import recordings (Blackrock, NWB, .npy/.npz/.mat/.csv arrays) into a dataset.",
    "export": "Export a dataset to NWB.",
    "pretrain": "Pretrain the masked-autoencoder teacher on resting data.",
    "probe": "Fit and score linear probes (MAE latents vs raw and PCA baselines).",
    "distill": "Distil the teacher into a small student encoder for the edge.",
    "quantize": "Export the student to int8 TFLite and write a verified bundle.",
    "keygen": "Make a key for signing bundles (Ed25519 pair or HMAC site key).",
    "sign": "Sign a bundle's digest with a site key.",
    "verify": "Check a bundle's hashes and print what it holds.",
    "run": "Decode a live serial stream on the bedside device.",
    "bench": "Benchmark a bundle's decision latency on this device.",
    "score": "Score a run's decision log against the dataset it streamed.",
    "bench-loop": "Closed loop on the virtual cortex: open loop vs gated vs an oracle.",
    "monitor": "Render the bedside monitor's page and a PNG from a finished run's log.",
    "dataset": "Generate a virtual-cortex dataset (resting, psychometric, threshold).",
    "stream": "Stream virtual-cortex frames over serial at real-time pace.",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="phosphene")
def cli() -> None:
    """phosphene: decode phosphene perception from V1 activity, workstation to bedside.

    \b
    Start here:
      phosphene demo --out demo-run        # the whole pipeline on the virtual cortex
      phosphene simulate dataset --out data --preset demo
      phosphene info data
    """


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - click handles most, this is the rest
        click.echo("Error: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
