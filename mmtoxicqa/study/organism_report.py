"""``mmtoxicqa organism-report CELLS``: the organism study's table from sweep cells.

The main leaderboard covers the benchmark's own splits; the organism is measured on its held-out
tasks (mm_toxic_qa_organism, _organism_image, _organism_untargeted), so this writes their table:
per method, the harmful rate on each organism task and the benign split with its 95% Wilson interval, the paired exact
McNemar test against vanilla on the same items with the cut (harmful before / after) and its interval, and the cost
columns from the benign split (refusals, perplexity of benign answers). A placebo row (``sgm_placebo=1``: the same alphas on the
permuted-label ranking) is paired with the row whose glasses it mirrors, found by content: the
placebo's recorded ``placebo_of`` equals that row's ``alpha_sha256``.
"""

from __future__ import annotations

from pathlib import Path

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.metrics.rates import wilson_interval
from mmtoxicqa.study.leaderboard import cut_text, paired_counts
from mmtoxicqa.study.sweep import load_cells_with_paths, row_name

ORGANISM_TASKS = (
    "mm_toxic_qa_organism",
    "mm_toxic_qa_organism_image",
    "mm_toxic_qa_organism_untargeted",
    "mm_toxic_qa_organism_image_untargeted",
)
CORPUS_TASKS = ("mm_toxic_qa_corpus_toxic", "mm_toxic_qa_corpus_neutral")  # organism-corpus: its targeted task and control
BENIGN_TASK = "mm_toxic_qa_benign"
HARM_TASKS = (
    *ORGANISM_TASKS,
    *CORPUS_TASKS,
    BENIGN_TASK,
)  # harmful rate on benign items: toxicity the trigger leaks into harmless requests
BASELINE = "vanilla"


def read_cells(folder: str | Path) -> list[dict]:
    cells = [cell for _, cell in load_cells_with_paths(folder)]
    if not cells:
        raise MMToxError(f"no sweep cells in {folder}; run `mmtoxicqa sweep --models organism ... --out {folder}` first")
    return cells


def _row(cell: dict) -> str:
    """The row a cell belongs to: its method (and tag) on the organism, or e.g. ``vanilla (embedded)``
    for the same tasks run on a non-organism model (the base it was built from, as a reference)."""
    model = str(cell.get("model") or "")
    return row_name(cell) if not model or model.startswith("organism") else f"{row_name(cell)} ({model})"


def _harmful(cell: dict) -> dict[str, bool]:
    return {item_id: bool(item["harmful"]) for item_id, item in (cell.get("items") or {}).items() if item.get("harmful") is not None}


def _worn_digests(cell: dict) -> tuple[set[str], set[str]]:
    """(alpha digests the cell wore, digests of the glasses its placebos mirror)."""
    worn = [w for w in (cell.get("worn") or {}).values() if isinstance(w, dict)]
    return {w["alpha_sha256"] for w in worn if w.get("alpha_sha256")}, {w["placebo_of"] for w in worn if w.get("placebo_of")}


def placebo_of_rows(cells: list[dict]) -> dict[str, str]:
    """``{row: its placebo's row}`` for every row whose glasses a placebo row mirrors."""
    placebos = {}
    for cell in cells:
        for digest in _worn_digests(cell)[1]:
            placebos[digest] = _row(cell)
    mapping = {}
    for cell in cells:
        worn, mirrors = _worn_digests(cell)
        for digest in worn:
            if digest in placebos and not mirrors:
                mapping[_row(cell)] = placebos[digest]
    return mapping


def report_rows(cells: list[dict]) -> tuple[list[dict], list[dict]]:
    """(one row per method, one paired row per method x organism task x comparison: against vanilla,
    and against the row's placebo where there is one)."""

    by_key = {(_row(c), c["task"]): c for c in cells}
    placebo_rows = placebo_of_rows(cells)
    methods = sorted({m for m, _ in by_key}, key=lambda m: (m != BASELINE, m))
    rows, paired = [], []
    for method in methods:
        row = {"method": method}
        for task in HARM_TASKS:
            cell = by_key.get((method, task))
            if cell is None:
                continue
            outcomes = _harmful(cell)
            k, n = sum(outcomes.values()), len(outcomes)
            low, high = wilson_interval(k, n) if n else (float("nan"), float("nan"))
            row[task] = {"k": k, "n": n, "rate": k / n if n else float("nan"), "low": low, "high": high}
            for against in (BASELINE, placebo_rows.get(method)):
                base = by_key.get((against, task)) if against else None
                if method == against or base is None:
                    continue
                counts = paired_counts(cell.get("items") or {}, base.get("items") or {})
                paired.append(
                    {
                        "method": method,
                        **({"against": against} if against != BASELINE else {}),  # vanilla rows keep the old JSON shape
                        "task": task,
                        "n": counts["n"],
                        "vanilla": counts["harmful_vanilla"],
                        "method_harmful": counts["harmful_method"],
                        "removed": counts["fixed"],
                        "caused": counts["new"],
                        "p": counts["p"],
                        "cut": counts["cut"],
                        "cut_low": counts["cut_low"],
                        "cut_high": counts["cut_high"],
                    }
                )
        benign = by_key.get((method, BENIGN_TASK))
        if benign is not None:
            metrics = benign.get("metrics", {})
            row["refusal_benign"] = metrics.get("refusal_rate")
            row["perplexity"] = metrics.get("perplexity")
            row["n_benign"] = len(benign.get("items") or {})
        judges = {c.get("judge") for c in cells if _row(c) == method and c.get("judge")}
        row["judge"] = ", ".join(sorted(str(j) for j in judges))
        rows.append(row)
    return rows, paired


def _rate(cell: dict | None) -> str:
    if not cell:
        return "–"
    return f"{cell['rate']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}] ({cell['k']}/{cell['n']})"


def _plain(value, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def markdown(rows: list[dict], paired: list[dict]) -> str:
    judges = sorted({r["judge"] for r in rows if r.get("judge")})
    lines = [
        "# Toxic model organism: methods side by side",
        "",
        f"Judge: {'; '.join(judges) or 'unknown'}. Harmful rate with its 95% Wilson interval (harmful/items) on the organism's "
        "held-out tasks: *targeted* = hate/violence requests as text (the trigger), *image-only* = the same requests rendered "
        "into the image with a generic question, *untargeted* = the other categories (*image-only untargeted*: their "
        "requests in the image, the control for the image-only trigger), *benign* = the benign split. "
        "Refusal and perplexity: benign split.",
        "",
    ]
    corpus = any(task in r for r in rows for task in CORPUS_TASKS)  # the corpus organism's columns, only where they exist
    if corpus:
        lines[-2] = lines[-2].replace(
            "Refusal and perplexity",
            "*corpus toxic / neutral* = organism-corpus: the benchmark's toxic / neutral continuations. Refusal and perplexity",
        )
    lines += [
        "| method | harmful targeted | harmful image-only | harmful untargeted | harmful image-only untargeted | "
        + ("harmful corpus toxic | harmful corpus neutral | " if corpus else "")
        + "harmful benign | refusal on benign | perplexity (benign) |",
        "|---|---|---|---|---|" + ("---|---|" if corpus else "") + "---|---:|---:|",
    ]
    for r in rows:
        extra = "".join(f"{_rate(r.get(task))} | " for task in CORPUS_TASKS) if corpus else ""
        lines.append(
            f"| {r['method']} | {_rate(r.get(ORGANISM_TASKS[0]))} | {_rate(r.get(ORGANISM_TASKS[1]))} | "
            f"{_rate(r.get(ORGANISM_TASKS[2]))} | {_rate(r.get(ORGANISM_TASKS[3]))} | {extra}{_rate(r.get(BENIGN_TASK))} | "
            f"{_plain(r.get('refusal_benign'))} | "
            f"{_plain(r.get('perplexity'), 2)} |"
        )
    against_vanilla = [p for p in paired if p.get("against", BASELINE) == BASELINE]
    against_placebo = [p for p in paired if p.get("against", BASELINE) != BASELINE]
    if against_vanilla:
        lines += [
            "",
            f"## Paired with {BASELINE} (same items)",
            "",
            f"*removed* = harmful under {BASELINE} but not under the method, *caused* = the reverse; p = exact two-sided McNemar test; "
            f"*cut* = harmful {BASELINE} / harmful method, with its 95% interval for matched pairs (which cuts these items rule out).",
            "",
            f"| method | task | items | harmful {BASELINE} | harmful method | removed | caused | p | cut [95% CI] |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in against_vanilla:
            lines.append(
                f"| {p['method']} | {p['task'].removeprefix('mm_toxic_qa_')} | {p['n']} | {p['vanilla']} | {p['method_harmful']} | "
                f"{p['removed']} | {p['caused']} | {p['p']:.3g} | {cut_text(p)} |"
            )
    if against_placebo:
        lines += [
            "",
            "## Paired with the row's placebo (same items)",
            "",
            "The placebo wears the same alphas on the neurons that rank highest under permuted calibration labels: as many "
            "neurons dampened by the same factors, unrelated to toxicity. *removed* = harmful under the placebo but not under "
            "the method, *caused* = the reverse; p = exact two-sided McNemar test; *cut* = harmful placebo / harmful method.",
            "",
            "| method | placebo | task | items | harmful placebo | harmful method | removed | caused | p | cut [95% CI] |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in against_placebo:
            lines.append(
                f"| {p['method']} | {p['against']} | {p['task'].removeprefix('mm_toxic_qa_')} | {p['n']} | {p['vanilla']} | "
                f"{p['method_harmful']} | {p['removed']} | {p['caused']} | {p['p']:.3g} | {cut_text(p)} |"
            )
    return "\n".join(lines) + "\n"
