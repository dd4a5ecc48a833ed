"""Compare a board's `phosphene bench --json` with a reference run of the same bundle.

    python arm64/compare_bench.py bench-pi5.json bench-x86.json [--json]

Prints, per statistic, the board's value, the reference's and their ratio, and checks that
both ran the same bundle build (model hash when present, window and channel count) and
says which interpreter and CPU each used. Standard library only: runs on the board too.
"""

from __future__ import annotations

import argparse
import json
import sys

ROWS = [("invoke_us", "p50"), ("invoke_us", "p99"), ("invoke_us", "max"),
        ("decision_us", "p50"), ("decision_us", "p99"), ("decision_us", "max")]


def compare(board: dict, reference: dict) -> dict:
    for key in ("window", "n_channels"):
        if board.get(key) != reference.get(key):
            raise ValueError(f"the two runs used different bundles ({key}: {board.get(key)} vs "
                             f"{reference.get(key)}): bench the same bundle on both")
    rows = []
    for group, stat in ROWS:
        b, r = board[group][stat], reference[group][stat]
        rows.append({"metric": f"{group}.{stat}", "board": b, "reference": r,
                     "ratio": round(b / r, 2) if r else None})
    return {
        "board": {k: board.get(k) for k in ("cpu", "runtime", "runtime_version", "threads", "runs")},
        "reference": {k: reference.get(k) for k in ("cpu", "runtime", "runtime_version", "threads", "runs")},
        "rows": rows,
        "rss_mb": {"board": board.get("rss_mb"), "reference": reference.get("rss_mb")},
        "budget_ms": board.get("budget_ms"), "board_budget_ok": board.get("budget_ok"),
    }


def format_table(result: dict) -> str:
    b, r = result["board"], result["reference"]
    lines = [f"board:     {b['cpu']}, {b['runtime']} {b['runtime_version']}, {b['threads']} thread(s), "
             f"{b['runs']} runs",
             f"reference: {r['cpu']}, {r['runtime']} {r['runtime_version']}, {r['threads']} thread(s), "
             f"{r['runs']} runs",
             "", f"{'metric':<18}{'board':>12}{'reference':>12}{'ratio':>8}"]
    for row in result["rows"]:
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        lines.append(f"{row['metric']:<18}{row['board']:>12.1f}{row['reference']:>12.1f}{ratio:>8}")
    lines.append(f"{'rss_mb':<18}{result['rss_mb']['board']:>12}{result['rss_mb']['reference']:>12}")
    lines.append(f"budget {result['budget_ms']} ms on the board: "
                 + ("holds" if result["board_budget_ok"] else "MISSED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("board", help="`phosphene bench --json` output from the board")
    parser.add_argument("reference", help="the same from the workstation (or another board)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args(argv)
    try:
        with open(args.board) as f:
            board = json.load(f)
        with open(args.reference) as f:
            reference = json.load(f)
        result = compare(board, reference)
    except KeyError as exc:
        print(f"Error: no {exc} in the input: pass two `phosphene bench --json` outputs", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
