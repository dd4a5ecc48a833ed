"""The family of errors phosphene expects: bad input, not bugs.

Every error a user can cause (a dataset, bundle, recording or key that is wrong, a parity
gate that refuses, a conversion that fails, a port that cannot be opened) derives from
PhospheneError. The command line prints such an error as one `Error:` line and exits 1;
anything else is a bug and surfaces with its traceback. PHOSPHENE_DEBUG=1 shows the
traceback of expected errors too.
"""

from __future__ import annotations

__all__ = ["ConfigError", "InputError", "PhospheneError"]


class PhospheneError(Exception):
    """An expected failure whose message tells the user what to do."""


class ConfigError(PhospheneError, ValueError):
    """A setting that cannot work: an option out of range, a preset that does not exist."""


class InputError(PhospheneError, ValueError):
    """Data, a file or a model that does not fit what was asked: a checkpoint of another
    kind, a probe of another teacher, trials too few to fit or split."""
