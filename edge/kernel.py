"""The compiled kernel of the int8 decision path (edge/_kernel.c), where it is built.

setup.py builds it on install when a C compiler is there (PHOSPHENE_PURE_PYTHON=1 skips it).
Without it, every caller takes its numpy path, which gives the same int8 bytes
(tests/edge/test_kernel.py compares both); only the decision's probe sums its 96 products in
another order (|dP| ~ 1e-16).
"""

from __future__ import annotations

try:
    from phosphene.edge import _kernel as KERNEL
except ImportError:  # not built: the numpy paths
    KERNEL = None

__all__ = ["KERNEL", "kernel_name"]


def kernel_name() -> str:
    """Which implementation the int8 path runs: "c" (edge/_kernel.c) or "numpy"."""
    return "c" if KERNEL is not None else "numpy"
