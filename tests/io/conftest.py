"""Small recordings the io tests write themselves: broadband int16 and the expected MUA."""

from __future__ import annotations

import pytest
from io_signals import UV_PER_BIT, expected_mua, make_broadband  # noqa: F401


@pytest.fixture
def err_lines():
    """Split CliRunner stderr into lines (click 8.2 keeps stderr separate)."""
    def split(result) -> list[str]:
        return [ln for ln in result.stderr.splitlines() if ln.strip()]
    return split
