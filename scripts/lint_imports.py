"""Check the import-linter contracts in pyproject.toml (`make lint`, run by `make test`).

The package maps folders onto subpackages (edge/ -> phosphene.edge, ...; pyproject's
[tool.setuptools.package-dir]), which import-linter cannot follow in an editable install:
it walks phosphene/ only. So the sources are copied into a temporary tree laid out as the
installed package, and lint-imports runs against that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = config["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="phosphene-imports-") as tmp:
        for package, folder in package_dirs.items():
            dst = Path(tmp, *package.split("."))
            dst.mkdir(parents=True, exist_ok=True)
            for src in (ROOT / folder).glob("*.py"):
                shutil.copy2(src, dst / src.name)
        env = {**os.environ, "PYTHONPATH": tmp + os.pathsep + os.environ.get("PYTHONPATH", "")}
        lint = Path(sys.executable).with_name("lint-imports")
        return subprocess.call([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main())
