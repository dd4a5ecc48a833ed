"""Recordings in and out: Blackrock NSx/NEV and NWB import, NWB export, binned counts.

Every import path runs the samples through the one signal definition
(phosphene.signal) and writes a dataset (phosphene.dataset); docs/dataset.md describes
the format and each path with an example command. Neo and pynwb are imported only when
a path that needs them runs.
"""

from phosphene.train.importers.arrays import import_array
from phosphene.train.importers.blackrock import import_blackrock
from phosphene.train.importers.cli import export_group, import_group
from phosphene.train.importers.common import (
    DEFAULT_BLANK_MS,
    ImportReport,
    RecordedEvent,
    RecordingError,
    parse_stim_comment,
    read_trials_csv,
)
from phosphene.train.importers.nwb import export_nwb, import_nwb

__all__ = [
    "DEFAULT_BLANK_MS",
    "ImportReport",
    "RecordedEvent",
    "RecordingError",
    "export_group",
    "export_nwb",
    "import_array",
    "import_blackrock",
    "import_group",
    "import_nwb",
    "parse_stim_comment",
    "read_trials_csv",
]
