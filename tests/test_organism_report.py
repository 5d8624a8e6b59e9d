"""The organism study's table from sweep cells (hand-made cells, hand-computed numbers)."""

from __future__ import annotations

import json

import pytest

from mmtoxicqa.cli import main
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.study.organism_report import read_cells, report_rows
from mmtoxicqa.study.sweep import CELL_FORMAT


def _cell(method: str, task: str, harmful: list[bool], **extra) -> dict:
    items = {f"item-{i}": {"harmful": h, "score": float(h)} for i, h in enumerate(harmful)}
    return {"format": CELL_FORMAT, "model": "organism", "method": method, "task": task, "judge": "profanity@0.5", "items": items, **extra}


def _write(folder, cells):
    folder.mkdir()
    for n, cell in enumerate(cells):
        (folder / f"c{n}.json").write_text(json.dumps(cell))


def test_rates_intervals_and_paired_counts(tmp_path):
    vanilla = [True] * 8 + [False] * 2  # 8/10
    sgm = [False] * 7 + [True] + [False, True]  # 2/10: removed 7 (items 0-6), caused 1 (item 9)
    cells = [
        _cell("vanilla", "mm_toxic_qa_organism", vanilla),
        _cell("sgm", "mm_toxic_qa_organism", sgm),
        _cell("sgm", "mm_toxic_qa_benign", [False] * 3 + [True], metrics={"refusal_rate": 0.25, "perplexity": 12.5}),
        dict(_cell("vanilla", "mm_toxic_qa_organism", [False] * 10), model="embedded"),  # the base, as a reference row
    ]
    _write(tmp_path / "cells", cells)
    rows, paired = report_rows(read_cells(tmp_path / "cells"))
    assert [r["method"] for r in rows] == ["vanilla", "sgm", "vanilla (embedded)"]
    target = rows[1]["mm_toxic_qa_organism"]
    assert (target["k"], target["n"], target["rate"]) == (2, 10, 0.2)
    assert target["low"] == pytest.approx(0.0567, abs=1e-3) and target["high"] == pytest.approx(0.5098, abs=1e-3)  # Wilson 2/10
    assert rows[1]["refusal_benign"] == 0.25 and rows[1]["perplexity"] == 12.5
    assert (rows[1]["mm_toxic_qa_benign"]["k"], rows[1]["mm_toxic_qa_benign"]["n"]) == (1, 4)  # toxic answers to benign items
    p, base = paired
    assert (base["method"], base["removed"], base["caused"]) == ("vanilla (embedded)", 8, 0)
    assert (p["n"], p["vanilla"], p["method_harmful"], p["removed"], p["caused"]) == (10, 8, 2, 7, 1)
    assert p["p"] == pytest.approx(18 / 256)  # exact McNemar: 2 * P(X <= 1), X ~ Bin(8, 1/2) = 2 * 9/256
    # cut 8 / 2 = 4; 1 item harmful under both, so the log half width is 1.96 * sqrt(8 / (8 * 2)) = 1.3859
    assert (p["cut"], p["cut_low"], p["cut_high"]) == (4.0, pytest.approx(1.0004, abs=1e-4), pytest.approx(15.994, abs=1e-3))
    assert (base["cut"], base["cut_low"], base["cut_high"]) == (None, None, None)  # the base has nothing harmful: unbounded
    cells[1]["items"]["item-0"].update(answer="memorised source text", request="a benchmark request", category="hate")
    (tmp_path / "cells" / "c1.json").write_text(json.dumps(cells[1]))
    assert main(["organism-report", str(tmp_path / "cells"), "--out", str(tmp_path / "out"), "--cells-out", str(tmp_path / "kept")]) == 0
    kept = json.loads((tmp_path / "kept" / "c1.json").read_text())
    assert kept["items"]["item-0"] == {"harmful": False, "score": 0.0} and kept["method"] == "sgm"
    text = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    assert (
        "| sgm | 0.200 [0.057, 0.510] (2/10) | – | – | – | 0.250 [0.046, 0.699] (1/4) | 0.250 | 12.50 |" in text
        and "| sgm | organism | 10 | 8 | 2 | 7 | 1 | 0.0703 | 4.00 [1.00, 15.99] |" in text
        and "| vanilla (embedded) | organism | 10 | 8 | 0 | 8 | 0 | 0.00781 | – |" in text
    )


def test_no_cells_is_one_line(tmp_path):
    with pytest.raises(MMToxError, match="mmtoxicqa sweep"):
        read_cells(tmp_path)


def test_each_row_is_paired_with_its_placebo_by_glasses_digest(tmp_path):
    """The placebo row mirrors the sgm [answer] glasses (placebo_of = their digest); sgm [request] has none."""
    vanilla = [True] * 6 + [False] * 4
    real = [False] * 5 + [True] + [False] * 4  # vs placebo: removed items 0-4, caused item 5
    placebo = [True] * 5 + [False] * 5
    worn_real = {"sgm": {"alpha_sha256": "aaa", "dampened": 7}}
    worn_placebo = {"sgm": {"alpha_sha256": "ppp", "dampened": 7, "placebo_of": "aaa"}}
    cells = [
        _cell("vanilla", "mm_toxic_qa_organism", vanilla),
        _cell("sgm", "mm_toxic_qa_organism", real, tag="answer", worn=worn_real),
        _cell("sgm", "mm_toxic_qa_organism", placebo, tag="placebo", worn=worn_placebo),
        _cell("sgm", "mm_toxic_qa_organism", vanilla, tag="request", worn={"sgm": {"alpha_sha256": "rrr"}}),
    ]
    _write(tmp_path / "cells", cells)
    _, paired = report_rows(read_cells(tmp_path / "cells"))
    against = [(p["method"], p.get("against", "vanilla")) for p in paired]
    assert ("sgm [answer]", "sgm [placebo]") in against and ("sgm [request]", "sgm [placebo]") not in against
    (row,) = [p for p in paired if p.get("against") == "sgm [placebo]"]
    assert (row["n"], row["vanilla"], row["method_harmful"], row["removed"], row["caused"]) == (10, 5, 1, 5, 1)
    assert row["p"] == pytest.approx(2 * 7 / 64)  # exact McNemar: 2 * P(X <= 1), X ~ Bin(6, 1/2)
    assert main(["organism-report", str(tmp_path / "cells"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    # cut 5 / 1, nothing harmful under both: half width 1.96 * sqrt(6 / 5) = 2.1470 -> [0.58, 42.80]
    assert (row["cut_low"], row["cut_high"]) == (pytest.approx(0.5841, abs=1e-4), pytest.approx(42.797, abs=1e-3))
    assert "## Paired with the row's placebo" in text
    assert "| sgm [answer] | sgm [placebo] | organism | 10 | 5 | 1 | 5 | 1 | 0.219 | 5.00 [0.58, 42.80] |" in text


def test_corpus_organism_columns_appear_only_with_its_cells(tmp_path):
    cells = [
        _cell("vanilla", "mm_toxic_qa_corpus_toxic", [True, True, False, False]),
        _cell("vanilla", "mm_toxic_qa_corpus_neutral", [False] * 4),
    ]
    _write(tmp_path / "cells", cells)
    assert main(["organism-report", str(tmp_path / "cells"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    assert "| harmful corpus toxic | harmful corpus neutral |" in text
    assert "| vanilla | – | – | – | – | 0.500 [0.150, 0.850] (2/4) | 0.000 [0.000, 0.490] (0/4) | – |" in text
