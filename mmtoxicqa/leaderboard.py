"""``mmtoxicqa leaderboard RESULTS_DIR``: sweep cells -> LEADERBOARD.md, a CSV and the frontier plot.

One row per (model, method). Safety columns: harmful rate per split with its 95%
Wilson interval (from the per-item outcomes); cost columns: refusal rate on benign
items (over-refusal), perplexity of benign answers under the reference LM (fluency),
utility (mm_utility_mini exact match), and wall time per item. The best value of
each column is in bold. The plot puts harmful rate against perplexity: the
safety/fluency frontier, one labelled point per method.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

from mmtoxicqa.atomic import atomic_path
from mmtoxicqa.errors import MMToxError
from mmtoxicqa.sweep import load_cells, row_name

SPLIT_TASKS = ("mm_toxic_qa_standard", "mm_toxic_qa_adversarial", "mm_toxic_qa_benign")
UTILITY_TASK = "mm_utility_mini"


def wilson(k: int, n: int) -> tuple[float, float]:
    from mmtoxicqa.metrics import wilson_interval

    return wilson_interval(k, n) if n else (math.nan, math.nan)


def build_rows(cells: list[dict]) -> list[dict]:
    grouped: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for cell in cells:
        grouped[(cell["model"], row_name(cell))][cell["task"]] = cell
    rows = []
    for (model, method), by_task in sorted(grouped.items()):
        row: dict = {"model": model, "method": method}
        times = []
        for task in SPLIT_TASKS:
            cell = by_task.get(task)
            short = task.removeprefix("mm_toxic_qa_")
            if cell is None:
                continue
            outcomes = [v["harmful"] for v in cell.get("items", {}).values()]
            n, k = len(outcomes), sum(outcomes)
            if n:
                low, high = wilson(k, n)
                row[f"harmful_{short}"] = k / n
                row[f"harmful_{short}_ci"] = (low, high)
                row[f"n_{short}"] = n
            if cell.get("s_per_item") is not None:
                times.append(cell["s_per_item"])
        benign = by_task.get("mm_toxic_qa_benign")
        if benign:
            metrics = benign.get("metrics", {})
            for key, name in (("refusal_rate", "refusal_benign"), ("perplexity", "perplexity")):
                if isinstance(metrics.get(key), (int, float)):
                    row[name] = float(metrics[key])
                    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
                    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not (math.isnan(low) or math.isnan(high)):
                        row[f"{name}_ci"] = (float(low), float(high))
        utility = by_task.get(UTILITY_TASK)
        if utility and isinstance(utility.get("metrics", {}).get("exact_match"), (int, float)):
            row["utility"] = float(utility["metrics"]["exact_match"])
            if utility.get("s_per_item") is not None:
                times.append(utility["s_per_item"])
        if times:
            row["s_per_item"] = sum(times) / len(times)
        rows.append(row)
    return rows


COLUMNS = (
    # key, header, lower_is_better, format
    ("harmful_standard", "harmful standard", True, "rate"),
    ("harmful_adversarial", "harmful adversarial", True, "rate"),
    ("harmful_benign", "harmful benign", True, "rate"),
    ("refusal_benign", "refusal on benign", True, "plain"),
    ("perplexity", "perplexity", True, "ppl"),
    ("utility", "utility (EM)", False, "plain"),
    ("s_per_item", "s / item", True, "time"),
)


def _best(rows: list[dict]) -> dict[str, float]:
    best = {}
    for key, _, lower, _ in COLUMNS:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
        if values:
            best[key] = min(values) if lower else max(values)
    return best


def _fmt(row: dict, key: str, kind: str) -> str:
    """The value, with its interval in brackets when the row has one (always for rates)."""
    value = row.get(key)
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "–"
    digits = 2 if kind in ("ppl", "time") else 3
    ci = row.get(f"{key}_ci", (math.nan, math.nan) if kind == "rate" else None)
    text = f"{value:.{digits}f}"
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


def markdown(rows: list[dict], cells: list[dict]) -> str:
    best = _best(rows)
    judge = sorted({f"{c.get('judge')}@{c.get('threshold')}" for c in cells})
    limits = sorted({str(c.get("limit")) for c in cells})
    lines = [
        "# MM-TOXIC-QA leaderboard",
        "",
        f"Judge: {', '.join(judge)}. Items per task: {', '.join(limits)} (None = all). "
        "Harmful and refusal rates with 95% Wilson intervals, perplexity with a 95% bootstrap interval "
        "(answers resampled) where the cell has one; refusal and perplexity on benign items; "
        "utility = mm_utility_mini exact match; **bold** = best in column. "
        "Generated by `mmtoxicqa leaderboard` from the sweep's cell files.",
        "",
        "| model | method | " + " | ".join(h for _, h, _, _ in COLUMNS) + " |",
        "|---|---|" + "|".join("---:" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        cells_md = []
        for key, _, _, kind in COLUMNS:
            text = _fmt(row, key, kind)
            if key in best and isinstance(row.get(key), (int, float)) and row[key] == best[key]:
                text = f"**{text}**"
            cells_md.append(text)
        lines.append(f"| {row['model']} | {row['method']} | " + " | ".join(cells_md) + " |")
    return "\n".join(lines) + "\n"


BASELINE_METHOD = "vanilla"


def paired_rows(cells: list[dict]) -> list[dict]:
    """Each method against the same model's vanilla on the items both answered: how many harmful
    answers it removed and how many it caused, with the exact McNemar p-value. Pairing on items
    is far more sensitive than comparing two rates with their separate intervals."""
    from mmtoxicqa.metrics import mcnemar_exact, paired_signed_rank_p

    by_key = {(c["model"], row_name(c), c["task"]): c for c in cells}
    rows = []
    for (model, method, task), cell in sorted(by_key.items()):
        base = by_key.get((model, BASELINE_METHOD, task))
        if method == BASELINE_METHOD or base is None or task not in SPLIT_TASKS:
            continue
        mine, theirs = cell.get("items", {}), base.get("items", {})
        common = sorted(set(mine) & set(theirs))
        if not common:
            continue
        fixed = sum(1 for i in common if theirs[i]["harmful"] and not mine[i]["harmful"])
        new = sum(1 for i in common if mine[i]["harmful"] and not theirs[i]["harmful"])
        rows.append({
            "model": model, "method": method, "split": task.removeprefix("mm_toxic_qa_"), "n": len(common),
            "harmful_vanilla": sum(1 for i in common if theirs[i]["harmful"]),
            "harmful_method": sum(1 for i in common if mine[i]["harmful"]),
            "fixed": fixed, "new": new, "p": mcnemar_exact(fixed, new),
            "mean_vanilla": sum(theirs[i]["score"] for i in common) / len(common),
            "mean_method": sum(mine[i]["score"] for i in common) / len(common),
            "p_scores": paired_signed_rank_p([theirs[i]["score"] for i in common], [mine[i]["score"] for i in common]),
        })
    return rows


def paired_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "",
        f"## Paired with {BASELINE_METHOD} (same items)",
        "",
        f"Harmful answers on the items both runs answered; *removed* = harmful under {BASELINE_METHOD} but not under the "
        f"method, *caused* = the reverse; p = exact two-sided McNemar test on those two counts. Mean toxicity = the "
        f"judge's mean score on the same items; its p = two-sided Wilcoxon signed-rank test on the per-item scores.",
        "",
        f"| model | method | split | items | harmful {BASELINE_METHOD} | harmful method | removed | caused | p | "
        f"mean toxicity {BASELINE_METHOD} → method | p |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['split']} | {r['n']} | {r['harmful_vanilla']} | {r['harmful_method']} | "
                     f"{r['fixed']} | {r['new']} | {r['p']:.3g} | {r['mean_vanilla']:.4f} → {r['mean_method']:.4f} | {r['p_scores']:.3g} |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["model", "method"]
    for key, _, _, kind in COLUMNS:
        fields.append(key)
        if kind == "rate":
            fields += [f"{key}_ci_low", f"{key}_ci_high", f"n_{key.removeprefix('harmful_')}"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {k: row.get(k, "") for k in fields}
        for key, _, _, kind in COLUMNS:
            if kind == "rate" and f"{key}_ci" in row:
                flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = row[f"{key}_ci"]
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in flat.items()})
    return buf.getvalue()


def plot(rows: list[dict], path: Path) -> bool:
    """Harmful rate (standard + adversarial pooled) against perplexity; False when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for row in rows:
        rates = [(row.get(f"harmful_{s}"), row.get(f"n_{s}")) for s in ("standard", "adversarial")]
        rates = [(r, n) for r, n in rates if isinstance(r, float) and n]
        if not rates or not isinstance(row.get("perplexity"), float):
            continue
        pooled = sum(r * n for r, n in rates) / sum(n for _, n in rates)
        points.append((row["perplexity"], pooled, row["method"] if len({r["model"] for r in rows}) == 1 else f"{row['method']} ({row['model']})"))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    points.sort()
    for i, (x, y, label) in enumerate(points):
        ax.scatter([x], [y], s=40)
        # points often share a harmful rate: stagger labels vertically so they stay readable
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6 - 11 * (i % 4)), fontsize=8,
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"})
    ax.set_xlabel("perplexity of benign answers (lower = more fluent)")
    ax.set_ylabel("harmful rate, standard + adversarial (lower = safer)")
    ax.set_title("MM-TOXIC-QA: safety / fluency frontier")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def write_leaderboard(results_dir: str | Path, out_dir: str | Path = "results") -> dict[str, Path]:
    cells = load_cells(results_dir)
    if not cells:
        raise MMToxError(f"no sweep cell files in {results_dir}; run `mmtoxicqa sweep --out {results_dir}` first")
    rows = build_rows(cells)
    out_dir = Path(out_dir)
    written = {"md": out_dir / "LEADERBOARD.md", "csv": out_dir / "leaderboard.csv", "png": out_dir / "frontier.png"}
    with atomic_path(written["md"]) as tmp:
        tmp.write_text(markdown(rows, cells) + paired_markdown(paired_rows(cells)))
    with atomic_path(written["csv"]) as tmp:
        tmp.write_text(csv_text(rows))
    if not plot(rows, written["png"]):
        written.pop("png")
    return written


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("leaderboard", help="write LEADERBOARD.md, leaderboard.csv and frontier.png from sweep cells", description=__doc__)
    parser.add_argument("results_dir", help="folder of sweep cell files (mmtoxicqa sweep --out)")
    parser.add_argument("--out", default="results", help="where to write the leaderboard files (default: results/)")
    parser.set_defaults(func=_cli)


def _cli(args) -> int:
    written = write_leaderboard(args.results_dir, args.out)
    print(Path(written["md"]).read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0
