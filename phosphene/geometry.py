"""Array geometry: which electrode sits where.

Every array in phosphene is a `ChannelMap`: an ordered list of electrodes (the order is
the column order of every sample array) with grid position and physical position.
The default is the 96-channel Utah array on a 10 x 10 grid with the corners unused.
Nothing else in the package assumes 96 channels: it asks the map.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phosphene.errors import InputError

__all__ = ["ChannelMap", "utah_96"]

UTAH_PITCH_UM = 400.0  # Blackrock Utah array inter-electrode spacing


@dataclass(frozen=True)
class ChannelMap:
    """Electrode ids and positions, in the column order of the sample arrays.

    ids: (C,) electrode ids as the lab numbers them (the paper's 1..96 for the Utah array).
    rows, cols: (C,) grid position (0-based; -1 when the array is not a grid).
    x_um, y_um: (C,) physical position in micrometres.
    """

    ids: tuple[int, ...]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    x_um: tuple[float, ...]
    y_um: tuple[float, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        n = len(self.ids)
        if n == 0:
            raise InputError("a channel map needs at least one electrode")
        for field in ("rows", "cols", "x_um", "y_um"):
            if len(getattr(self, field)) != n:
                raise InputError(f"channel map column {field!r} has {len(getattr(self, field))} "
                                 f"entries but there are {n} electrode ids")
        if len(set(self.ids)) != n:
            dup = sorted({i for i in self.ids if self.ids.count(i) > 1})
            raise InputError(f"channel map has duplicate electrode ids: {dup[:10]}")
        if not all(np.isfinite(self.x_um)) or not all(np.isfinite(self.y_um)):
            raise InputError("channel map positions must be finite numbers (x_um, y_um)")

    @property
    def n_channels(self) -> int:
        return len(self.ids)

    def index_of(self, electrode_id: int) -> int:
        """Column index of an electrode id; ValueError naming the id if it is not on the map."""
        try:
            return self.ids.index(int(electrode_id))
        except ValueError:
            raise InputError(f"electrode {electrode_id} is not on the channel map "
                             f"({self.n_channels} electrodes, ids {min(self.ids)}..{max(self.ids)})"
                             ) from None

    def positions_um(self) -> np.ndarray:
        """(C, 2) array of (x_um, y_um)."""
        return np.stack([np.asarray(self.x_um), np.asarray(self.y_um)], axis=1)

    def distances_um(self) -> np.ndarray:
        """(C, C) pairwise electrode distances in micrometres."""
        pos = self.positions_um()
        return np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))

    # --- serialisation -----------------------------------------------------------
    def to_rows(self) -> list[dict]:
        return [
            {"id": i, "row": r, "col": c, "x_um": x, "y_um": y}
            for i, r, c, x, y in zip(self.ids, self.rows, self.cols, self.x_um, self.y_um)
        ]

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["id", "row", "col", "x_um", "y_um"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.to_rows())
        return out.getvalue()

    def to_json(self) -> dict:
        return {"name": self.name, "electrodes": self.to_rows()}

    @classmethod
    def from_rows(cls, rows: list[dict], *, name: str = "custom") -> ChannelMap:
        if not rows:
            raise InputError("channel map has no electrodes")
        try:
            return cls(
                ids=tuple(int(r["id"]) for r in rows),
                rows=tuple(int(r.get("row", -1) if r.get("row", "") != "" else -1) for r in rows),
                cols=tuple(int(r.get("col", -1) if r.get("col", "") != "" else -1) for r in rows),
                x_um=tuple(float(r["x_um"]) for r in rows),
                y_um=tuple(float(r["y_um"]) for r in rows),
                name=name,
            )
        except KeyError as missing:
            raise InputError(f"channel map is missing column {missing}; expected "
                             "id,row,col,x_um,y_um") from None
        except (TypeError, ValueError) as bad:
            if isinstance(bad, ValueError) and "channel map" in str(bad):
                raise
            raise InputError(f"channel map has a value that is not a number: {bad}") from None

    @classmethod
    def from_json(cls, obj: dict | list) -> ChannelMap:
        if isinstance(obj, list):
            return cls.from_rows(obj)
        if not isinstance(obj, dict) or "electrodes" not in obj:
            raise InputError("a JSON channel map is a list of electrodes or "
                             '{"name": ..., "electrodes": [...]}')
        return cls.from_rows(obj["electrodes"], name=str(obj.get("name", "custom")))

    @classmethod
    def load(cls, path: str | Path) -> ChannelMap:
        """Load a map from CSV or JSON (id,row,col,x_um,y_um) or a Blackrock .cmp file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"channel map not found: {path}")
        text = path.read_text(encoding="utf-8", errors="replace")
        suffix = path.suffix.lower()
        if suffix == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} is not valid JSON: {exc}") from None
            return cls.from_json(obj)
        if suffix == ".cmp":
            return cls.from_cmp(text, name=path.stem)
        return cls.from_rows(list(csv.DictReader(io.StringIO(text))), name=path.stem)

    @classmethod
    def from_cmp(cls, text: str, *, name: str = "cmp", pitch_um: float = UTAH_PITCH_UM) -> ChannelMap:
        """Parse a Blackrock .cmp map: lines `col row bank pin label` after a header.

        Electrode ids come from the label's trailing digits (e.g. `elec37` -> 37), else
        from bank and pin (bank A..D, 32 pins each).
        """
        rows_out: list[dict] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 4 or not (parts[0].isdigit() and parts[1].isdigit()):
                continue  # header and comment lines
            col, row, bank, pin = int(parts[0]), int(parts[1]), parts[2], int(parts[3])
            label = parts[4] if len(parts) > 4 else ""
            digits = "".join(ch for ch in label if ch.isdigit())
            electrode = int(digits) if digits else (ord(bank.upper()[0]) - ord("A")) * 32 + pin
            rows_out.append({"id": electrode, "row": row, "col": col,
                             "x_um": col * pitch_um, "y_um": row * pitch_um})
        if not rows_out:
            raise InputError("no electrode lines found in the .cmp file "
                             "(expected 'col row bank pin label' lines)")
        return cls.from_rows(rows_out, name=name)

    def save(self, path: str | Path) -> None:
        from phosphene.io import write_json, write_text

        path = Path(path)
        if path.suffix.lower() == ".json":
            write_json(path, self.to_json())
        else:
            write_text(path, self.to_csv())


def utah_96(pitch_um: float = UTAH_PITCH_UM) -> ChannelMap:
    """The 10 x 10 Utah array, corners unused: 96 electrodes numbered 1..96 row-major.

    Row 0 is the top row; ids skip the four corner positions. This is the numbering
    used by the virtual cortex and in the paper's electrode lists (6, 14, 20, ...).
    A lab whose connector map differs loads its own map (CSV/JSON/.cmp).
    """
    ids, rows, cols, xs, ys = [], [], [], [], []
    corners = {(0, 0), (0, 9), (9, 0), (9, 9)}
    electrode = 0
    for row in range(10):
        for col in range(10):
            if (row, col) in corners:
                continue
            electrode += 1
            ids.append(electrode)
            rows.append(row)
            cols.append(col)
            xs.append(col * pitch_um)
            ys.append(row * pitch_um)
    return ChannelMap(tuple(ids), tuple(rows), tuple(cols), tuple(xs), tuple(ys), name="utah96")


def grid_map(n_rows: int, n_cols: int, *, pitch_um: float = UTAH_PITCH_UM, name: str = "grid") -> ChannelMap:
    """A full n_rows x n_cols grid, ids 1..n row-major (for scaling studies and tests)."""
    if n_rows <= 0 or n_cols <= 0:
        raise InputError("a grid needs at least one row and one column")
    rr, cc = np.divmod(np.arange(n_rows * n_cols), n_cols)
    return ChannelMap(tuple(range(1, n_rows * n_cols + 1)), tuple(int(r) for r in rr),
                      tuple(int(c) for c in cc), tuple(float(c * pitch_um) for c in cc),
                      tuple(float(r * pitch_um) for r in rr), name=name)


def map_for_channels(n_channels: int) -> ChannelMap:
    """The Utah map for 96 channels, else the smallest near-square grid holding n channels."""
    if n_channels <= 0:
        raise InputError(f"channel count must be positive, got {n_channels}")
    if n_channels == 96:
        return utah_96()
    n_cols = int(np.ceil(np.sqrt(n_channels)))
    full = grid_map(int(np.ceil(n_channels / n_cols)), n_cols, name=f"grid{n_channels}")
    return ChannelMap(full.ids[:n_channels], full.rows[:n_channels], full.cols[:n_channels],
                      full.x_um[:n_channels], full.y_um[:n_channels], name=full.name)


__all__ += ["grid_map", "map_for_channels"]
