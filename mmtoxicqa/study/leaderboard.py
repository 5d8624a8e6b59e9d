"""``mmtoxicqa leaderboard RESULTS_DIR``: sweep cells -> LEADERBOARD.md, a CSV and the frontier plot.

One row per (model, method). Safety columns: harmful rate per split with its 95%
Wilson interval (from the per-item outcomes); cost columns: refusal rate on benign
items (over-refusal), perplexity of benign answers under the reference LM (fluency),
utility (mm_utility_mini exact match), generation seconds per item (one-time work such as
model load and calibration excluded) and the one-time seconds as their own column. A value
is bold only when it is the single best of its column and its 95% interval overlaps no other
row's (so never for ties, nor for columns without intervals). The plot puts harmful rate
against perplexity with both intervals as error bars: the safety/fluency frontier. A
"Reading" section says in words which differences from vanilla are significant.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections import defaultdict
from pathlib import Path

from mmtoxicqa.core.atomic import atomic_path
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.metrics.rates import mcnemar_exact, paired_cut, paired_signed_rank_p, rate_with_ci, wilson_interval
from mmtoxicqa.study.sweep import load_cells_with_paths, row_name

SPLIT_TASKS = ("mm_toxic_qa_standard", "mm_toxic_qa_adversarial", "mm_toxic_qa_benign")
UTILITY_TASK = "mm_utility_mini"


def build_rows(cells: list[dict]) -> list[dict]:
    grouped: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for cell in cells:
        grouped[(cell["model"], row_name(cell))][cell["task"]] = cell
    rows = []
    for (model, method), by_task in sorted(grouped.items()):
        row: dict = {"model": model, "method": method, "judge": "; ".join(sorted({judge_label(c) for c in by_task.values()}))}
        timed = []  # (seconds per item, items) of every cell that generated
        for task in SPLIT_TASKS:
            cell = by_task.get(task)
            short = task.removeprefix("mm_toxic_qa_")
            if cell is None:
                continue
            harmful = rate_with_ci(v["harmful"] for v in cell.get("items", {}).values() if v.get("harmful") is not None)
            if harmful["n"]:
                row[f"harmful_{short}"] = harmful["rate"]
                row[f"harmful_{short}_ci"] = (harmful["low"], harmful["high"])
                row[f"n_{short}"] = harmful["n"]
                row[f"k_{short}"] = sum(1 for v in cell["items"].values() if v.get("harmful"))
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
            n = int(utility.get("n") or 0)
            if n:  # exact match is a rate over the task's items: its Wilson interval
                row["utility_ci"] = wilson_interval(round(row["utility"] * n), n)
        for cell in by_task.values():
            if cell.get("s_per_item") is not None and cell.get("n"):
                timed.append((float(cell["s_per_item"]), int(cell["n"])))
        if timed:
            row["s_per_item"] = sum(s * n for s, n in timed) / sum(n for _, n in timed)
        one_time = [float(c["one_time_s"]) for c in by_task.values() if isinstance(c.get("one_time_s"), (int, float))]
        if one_time:
            row["one_time_s"] = sum(one_time)
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
    ("one_time_s", "one-time s", True, "time"),
)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def bold_cells(rows: list[dict]) -> set[tuple[int, str]]:
    """(row index, column) pairs to print bold: the single best value of a column whose 95% interval
    overlaps no other row's. A tie, a missing interval (theirs or its own) or an overlap: no bold."""
    bold = set()
    for key, _, lower, kind in COLUMNS:
        if kind == "time":
            continue  # no interval: a difference cannot be told from noise
        valued = [(i, r) for i, r in enumerate(rows) if _number(r.get(key))]
        if len(valued) < 2:
            continue
        best = min(r[key] for _, r in valued) if lower else max(r[key] for _, r in valued)
        winners = [(i, r) for i, r in valued if r[key] == best]
        if len(winners) != 1:
            continue
        index, winner = winners[0]
        others = [r for i, r in valued if i != index]
        if winner.get(f"{key}_ci") and all(r.get(f"{key}_ci") and not _overlap(winner[f"{key}_ci"], r[f"{key}_ci"]) for r in others):
            bold.add((index, key))
    return bold


def _fmt(row: dict, key: str, kind: str) -> str:
    """The value, with its interval in brackets when the row has one (always for rates)."""
    value = row.get(key)
    if not _number(value):
        return "–"
    digits = 2 if kind in ("ppl", "time") else 3
    if key == "one_time_s":
        digits = 0
    ci = row.get(f"{key}_ci", (math.nan, math.nan) if kind == "rate" else None)
    text = f"{value:.{digits}f}"
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


def markdown(rows: list[dict], cells: list[dict]) -> str:
    bold = bold_cells(rows)
    judge = sorted({f"{c.get('judge')}@{c.get('threshold')}" for c in cells})
    limits = sorted({str(c.get("limit")) for c in cells})
    lines = [
        "# MM-TOXIC-QA leaderboard",
        "",
        f"Judge: {', '.join(judge)}. Items per task: {', '.join(limits)} (None = all). "
        "Harmful and refusal rates and utility with 95% Wilson intervals, perplexity with a 95% bootstrap interval "
        "(answers resampled) where the cell has one; refusal and perplexity on benign items; "
        "utility = mm_utility_mini exact match; s / item = generation seconds per item (model load and calibration "
        "excluded), one-time s = those excluded seconds (– where the cells predate the field). **Bold** = the single best "
        "of its column whose 95% interval overlaps no other row's (no bold for ties, overlapping intervals or columns "
        "without intervals). Generated by `mmtoxicqa leaderboard` from the sweep's cell files.",
        "",
        "| model | method | " + " | ".join(h for _, h, _, _ in COLUMNS) + " |",
        "|---|---|" + "|".join("---:" for _ in COLUMNS) + "|",
    ]
    for index, row in enumerate(rows):
        cells_md = []
        for key, _, _, kind in COLUMNS:
            text = _fmt(row, key, kind)
            if (index, key) in bold:
                text = f"**{text}**"
            cells_md.append(text)
        lines.append(f"| {row['model']} | {row['method']} | " + " | ".join(cells_md) + " |")
    return "\n".join(lines) + "\n"


BASELINE_METHOD = "vanilla"


def paired_rows(cells: list[dict]) -> list[dict]:
    """Each method against the same model's vanilla on the items both answered: how many harmful
    answers it removed and how many it caused, with the exact McNemar p-value. Pairing on items
    is far more sensitive than comparing two rates with their separate intervals."""

    by_key = {(c["model"], row_name(c), c["task"]): c for c in cells}
    rows = []
    for (model, method, task), cell in sorted(by_key.items()):
        base = by_key.get((model, BASELINE_METHOD, task))
        if method == BASELINE_METHOD or base is None or task not in SPLIT_TASKS:
            continue
        mine, theirs = cell.get("items", {}), base.get("items", {})
        counts = paired_counts(mine, theirs)
        if not counts["n"]:
            continue
        common = counts.pop("items")
        rows.append(
            {
                "model": model,
                "method": method,
                "split": task.removeprefix("mm_toxic_qa_"),
                **counts,
                "mean_vanilla": sum(theirs[i]["score"] for i in common) / len(common),
                "mean_method": sum(mine[i]["score"] for i in common) / len(common),
                "p_scores": paired_signed_rank_p([theirs[i]["score"] for i in common], [mine[i]["score"] for i in common]),
            }
        )
    return rows


def paired_counts(mine: dict[str, dict], theirs: dict[str, dict]) -> dict:
    """A method's per-item outcomes against the baseline's, on the items both scored: harmful counts,
    how many harmful answers it removed (``fixed``) and caused (``new``), the exact McNemar p, and the
    cut (harmful baseline / harmful method) with its 95% interval (``cut*`` None where one side has no
    harmful answer and the ratio is unbounded, so JSON stays strict)."""

    common = sorted(i for i in set(mine) & set(theirs) if mine[i].get("harmful") is not None and theirs[i].get("harmful") is not None)
    fixed = sum(1 for i in common if theirs[i]["harmful"] and not mine[i]["harmful"])
    new = sum(1 for i in common if mine[i]["harmful"] and not theirs[i]["harmful"])
    harmful_method = sum(1 for i in common if mine[i]["harmful"])
    cut = paired_cut(harmful_method - new, fixed, new)
    return {
        "items": common,
        "n": len(common),
        "harmful_vanilla": sum(1 for i in common if theirs[i]["harmful"]),
        "harmful_method": harmful_method,
        "fixed": fixed,
        "new": new,
        "p": mcnemar_exact(fixed, new),
        **{k: v if math.isfinite(v) else None for k, v in zip(("cut", "cut_low", "cut_high"), cut)},
    }


def cut_text(row: dict) -> str:
    """``2.58 [1.66, 4.02]``: the cut with its interval; ``–`` where the ratio is unbounded."""
    if row.get("cut_low") is None:
        return "–"
    return f"{row['cut']:.2f} [{row['cut_low']:.2f}, {row['cut_high']:.2f}]"


def paired_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "",
        f"## Paired with {BASELINE_METHOD} (same items)",
        "",
        f"Harmful answers on the items both runs answered; *removed* = harmful under {BASELINE_METHOD} but not under the "
        f"method, *caused* = the reverse; p = exact two-sided McNemar test on those two counts; *cut* = harmful "
        f"{BASELINE_METHOD} / harmful method with its 95% matched-pairs interval (– where one side has none). Mean toxicity = "
        f"the judge's mean score on the same items; its p = two-sided Wilcoxon signed-rank test on the per-item scores.",
        "",
        f"| model | method | split | items | harmful {BASELINE_METHOD} | harmful method | removed | caused | p | cut [95% CI] | "
        f"mean toxicity {BASELINE_METHOD} → method | p |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['split']} | {r['n']} | {r['harmful_vanilla']} | {r['harmful_method']} | "
            f"{r['fixed']} | {r['new']} | {r['p']:.3g} | {cut_text(r)} | {r['mean_vanilla']:.4f} → {r['mean_method']:.4f} | "
            f"{r['p_scores']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """Every column, every interval (``*_ci_low``/``*_ci_high``, empty where a cell has none), the
    item counts behind the rates and the judge."""
    buf = io.StringIO()
    fields = ["model", "method", "judge"]
    for key, _, _, kind in COLUMNS:
        fields.append(key)
        if kind != "time":
            fields += [f"{key}_ci_low", f"{key}_ci_high"]
        if kind == "rate":
            fields.append(f"n_{key.removeprefix('harmful_')}")
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {k: row.get(k, "") for k in fields}
        for key, _, _, kind in COLUMNS:
            if kind != "time" and f"{key}_ci" in row:
                flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = row[f"{key}_ci"]
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in flat.items()})
    return buf.getvalue()


def frontier_points(rows: list[dict]) -> list[dict]:
    """One point per row with perplexity and harmful answers: x = perplexity (its interval where the
    cell has one), y = harmful rate over standard + adversarial pooled, with the pooled Wilson interval."""
    points = []
    several_models = len({r["model"] for r in rows}) > 1
    for row in rows:
        splits = [s for s in ("standard", "adversarial") if row.get(f"n_{s}")]
        if not splits or not _number(row.get("perplexity")):
            continue
        k = sum(row[f"k_{s}"] for s in splits)
        n = sum(row[f"n_{s}"] for s in splits)
        low, high = wilson_interval(k, n)
        points.append(
            {
                "label": f"{row['method']} ({row['model']})" if several_models else row["method"],
                "x": row["perplexity"],
                "x_ci": row.get("perplexity_ci"),
                "y": k / n,
                "y_ci": (low, high),
            }
        )
    return points


def _place_labels(ax, fig, groups: list[tuple[float, float, str]]) -> None:
    """Annotate each group of points with its text, trying offsets around the point until the label's
    box overlaps no label placed before it and stays inside the axes (greedy, in display pixels)."""
    from matplotlib.text import Text  # heavy, and only for the plot

    renderer = fig.canvas.get_renderer()
    placed = []
    frame = ax.get_window_extent(renderer)
    offsets = [
        (dx * r, dy * r) for r in (8, 18, 30, 44, 60) for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
    ]
    for x, y, text in groups:
        chosen = None
        for dx, dy in offsets:
            note = ax.annotate(
                text,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy),
                fontsize=8,
                ha="left" if dx >= 0 else "right",
                va="bottom" if dy >= 0 else "top",
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"},
            )
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer).padded(3)  # the text alone (the annotation box spans its arrow), a gap around it
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                chosen = box
                break
            note.remove()
        if chosen is None:  # nowhere free (never seen so far): the last candidate, still listed in the legend
            logging.getLogger(__name__).warning("frontier plot: no free place for label %s", text)
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=offsets[-1], fontsize=8)
            note.update_positions(renderer)
            chosen = Text.get_window_extent(note, renderer)
        placed.append(chosen)


def plot(rows: list[dict], path: Path) -> bool:
    """Harmful rate (standard + adversarial pooled) against perplexity, with both intervals as error
    bars, a legend naming every method, and number labels that do not collide (points at the same
    place share one label); False when nothing to plot."""
    import matplotlib  # heavy, and only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy, and only for the plot

    points = frontier_points(rows)
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    markers = "osD^vP*Xhp<>"
    colours = plt.get_cmap("tab20").colors
    for number, p in enumerate(points, 1):
        xerr = [[p["x"] - p["x_ci"][0]], [p["x_ci"][1] - p["x"]]] if p["x_ci"] else None
        yerr = [[p["y"] - p["y_ci"][0]], [p["y_ci"][1] - p["y"]]]
        ax.errorbar(
            [p["x"]],
            [p["y"]],
            xerr=xerr,
            yerr=yerr,
            fmt=markers[(number - 1) % len(markers)],
            color=colours[(number - 1) % len(colours)],
            ms=6,
            capsize=3,
            lw=0.8,
            alpha=0.85,
            label=f"{number} {p['label']}",
        )
    lows = [p["y_ci"][0] for p in points]
    highs = [p["y_ci"][1] for p in points]
    pad = 0.05 * max(max(highs) - min(lows), 0.05)
    ax.set_ylim(max(0.0, min(lows) - pad), min(1.0, max(highs) + pad))  # a rate: never outside [0, 1]
    ax.set_xlabel("perplexity of benign answers (lower = more fluent)")
    ax.set_ylabel("harmful rate, standard + adversarial (lower = safer)")
    judges = sorted({r.get("judge", "") for r in rows if r.get("judge")})
    ax.set_title("MM-TOXIC-QA: safety / fluency frontier (95% intervals)" + (f"\njudge {', '.join(judges)}" if judges else ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.canvas.draw()
    # points closer than a marker on screen share one label ("3,7")
    groups: list[list] = []  # [x, y, pixel position, numbers]
    for number, p in enumerate(points, 1):
        pixel = ax.transData.transform((p["x"], p["y"]))
        near = next((g for g in groups if abs(g[2][0] - pixel[0]) < 7 and abs(g[2][1] - pixel[1]) < 7), None)
        if near is None:
            groups.append([p["x"], p["y"], pixel, [str(number)]])
        else:
            near[3].append(str(number))
    _place_labels(ax, fig, sorted((x, y, ",".join(nums)) for x, y, _, nums in groups))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return True


def reading(rows: list[dict], paired: list[dict], alpha: float = 0.05) -> list[str]:
    """A few sentences that read the tables: which differences from vanilla are significant (paired
    McNemar on harmful answers; non-overlapping 95% intervals for refusal, perplexity, utility)."""
    sentences = []
    significant = [r for r in paired if r["p"] < alpha]
    for r in significant:
        direction = "fewer" if r["harmful_method"] < r["harmful_vanilla"] else "more"
        sentences.append(
            f"{r['method']} gives significantly {direction} harmful answers than {BASELINE_METHOD} on {r['split']} "
            f"({r['harmful_vanilla']} → {r['harmful_method']} of {r['n']}; {r['fixed']} removed, {r['new']} caused; McNemar p = {r['p']:.3g})."
        )
    rest = [r for r in paired if r["p"] >= alpha]
    if rest:
        largest = max(rest, key=lambda r: (abs(r["fixed"] - r["new"]), -r["p"]))
        sentences.append(
            f"{'No other' if significant else 'No'} harmful-rate difference from {BASELINE_METHOD} is significant ({len(rest)} of {len(paired)} paired comparisons "
            f"have McNemar p ≥ {alpha:g}); the largest is {largest['method']} on {largest['split']}: {largest['harmful_vanilla']} → "
            f"{largest['harmful_method']} of {largest['n']} ({largest['fixed']} removed, {largest['new']} caused, p = {largest['p']:.3g})."
        )
    base = {r["model"]: r for r in rows if r["method"] == BASELINE_METHOD}
    names = {"refusal_benign": "refusal on benign items", "perplexity": "perplexity of benign answers", "utility": "utility (exact match)"}
    separated, overlapping = [], 0
    for row in rows:
        ref = base.get(row["model"])
        if ref is None or row is ref:
            continue
        for key, name in names.items():
            mine, theirs = row.get(f"{key}_ci"), ref.get(f"{key}_ci")
            if not (_number(row.get(key)) and _number(ref.get(key)) and mine and theirs):
                continue
            if _overlap(mine, theirs):
                overlapping += 1
            else:
                separated.append(
                    f"{name}: {row['method']} {row[key]:.3g} [{mine[0]:.3g}, {mine[1]:.3g}] vs {BASELINE_METHOD} "
                    f"{ref[key]:.3g} [{theirs[0]:.3g}, {theirs[1]:.3g}]"
                )
    if separated:
        sentences.append("95% intervals that do not overlap (a real difference): " + "; ".join(separated) + ".")
    if overlapping:
        sentences.append(
            f"{overlapping}{' other' if separated else ''} refusal / perplexity / utility comparisons with {BASELINE_METHOD} have overlapping 95% intervals: "
            "at this number of items they cannot be told apart (which is not evidence that they are equal)."
        )
    return sentences


def reading_markdown(rows: list[dict], paired: list[dict]) -> str:
    sentences = reading(rows, paired)
    if not sentences:
        return ""
    return "\n## Reading\n\n" + "\n".join(f"* {s}" for s in sentences) + "\n"


def judge_label(cell: dict) -> str:
    return f"{cell.get('judge')}@{cell.get('threshold')}"


def checked_cells(results_dir: str | Path, judge: str | None = None) -> list[dict]:
    """The sweep's cells, refusing what would make a column mix numbers: an unreadable (truncated)
    cell file, or cells scored by different judges / thresholds (``judge`` picks one)."""
    results_dir = Path(results_dir)
    broken: list[str] = []
    cells = [cell for _, cell in load_cells_with_paths(results_dir, unreadable=broken)]
    if broken:
        raise MMToxError(
            f"{len(broken)} cell file(s) in {results_dir} are unreadable (truncated?): {', '.join(broken[:3])}; "
            "rerun the same `mmtoxicqa sweep` command to recompute them, or delete them"
        )
    if judge:
        cells = [c for c in cells if judge_label(c) == judge or c.get("judge") == judge]
    if not cells:
        raise MMToxError(
            f"no sweep cell files in {results_dir}{f' scored by {judge}' if judge else ''}; run `mmtoxicqa sweep --out {results_dir}` first"
        )
    labels = sorted({judge_label(c) for c in cells})
    if len(labels) > 1:
        raise MMToxError(
            f"the cells in {results_dir} were scored by different judges/thresholds ({', '.join(labels)}); one column cannot mix them: "
            "pass --judge one of those, or `mmtoxicqa rescore` the cells with one judge"
        )
    return cells


def write_leaderboard(results_dir: str | Path, out_dir: str | Path = "results", judge: str | None = None) -> dict[str, Path]:
    cells = checked_cells(results_dir, judge)
    rows = build_rows(cells)
    out_dir = Path(out_dir)
    written = {"md": out_dir / "LEADERBOARD.md", "csv": out_dir / "leaderboard.csv", "png": out_dir / "frontier.png"}
    paired = paired_rows(cells)
    with atomic_path(written["md"]) as tmp:
        tmp.write_text(markdown(rows, cells) + paired_markdown(paired) + reading_markdown(rows, paired))
    with atomic_path(written["csv"]) as tmp:
        tmp.write_text(csv_text(rows))
    if not plot(rows, written["png"]):
        written.pop("png")
    return written
