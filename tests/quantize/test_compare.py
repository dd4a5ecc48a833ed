"""`distill --compare`: every design distilled, converted and measured, one kept, the table
written into a markdown file between its markers (the rest of the file untouched)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_compare_keeps_a_design_and_writes_its_section(tiny_dataset, tiny_teacher, tmp_path):
    from phosphene.quantize.compare import STUDENTS_BEGIN, STUDENTS_END, compare_students
    from phosphene.train.distill import DistillConfig

    md = tmp_path / "results.md"
    md.write_text("# Results\n\nkept as it is\n")
    result = compare_students(tiny_dataset, tiny_teacher, tmp_path / "out",
                              config=DistillConfig.preset("tiny"), archs=("mixer", "electrode"),
                              probe_path=tiny_teacher / "probe", results_md=md, latency_runs=50)
    assert result["winner"] in ("mixer", "electrode")
    assert (tmp_path / "out" / "student.pt").is_file()
    rows = {r["arch"]: r for r in result["designs"]}
    for row in rows.values():
        for task in ("psychometric", "threshold"):
            assert 0.0 <= row["tasks"][task]["ba_int8"] <= 1.0  # measured on the evaluation set
        assert row["int8"]["operators"] and row["int8"]["decision_median_us"] > 0
    text = md.read_text()
    assert text.startswith("# Results\n\nkept as it is\n")
    assert STUDENTS_BEGIN in text and STUDENTS_END in text and "evaluation set" in text
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["winner"] == result["winner"]
    assert (tmp_path / "out" / "compare.md").read_text().strip() == result["table"].strip()
