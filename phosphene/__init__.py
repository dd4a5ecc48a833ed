"""phosphene: a self-supervised V1 perception decoder, from workstation to bedside.

The core holds what every side shares: array geometry, the one signal definition,
the virtual cortex, the dataset format and the CLI. It imports numpy and click only
(scipy lazily, for broadband MUA extraction on the workstation).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phosphene")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
