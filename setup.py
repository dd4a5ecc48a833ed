"""The one compiled part: edge/_kernel.c, the int8 decision path's per-patch work.

Everything else is in pyproject.toml. The extension is optional: where no C compiler is
found (or PHOSPHENE_PURE_PYTHON=1), the package installs without it and the edge runtime
uses the numpy path, which gives the same bytes (tests/edge/test_kernel.py), only slower.
"""

import os

from setuptools import Extension, setup

# No contraction into fused multiply-adds and no fast-math: the kernel must round every
# float32 step exactly as numpy's ufuncs do.
KERNEL = Extension(
    "phosphene.edge._kernel",
    sources=["edge/_kernel.c"],
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math", "-std=c99"],
    optional=True,
)

setup(ext_modules=[] if os.environ.get("PHOSPHENE_PURE_PYTHON") == "1" else [KERNEL])
