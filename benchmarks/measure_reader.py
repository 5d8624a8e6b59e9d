"""Measurements of the reading model (embedded-ocr, issue #15): does the decoder now receive what the image says?

    OMP_NUM_THREADS=1 MMTOXICQA_OCR_THREADS=1 nice -n 10 .venv/bin/python benchmarks/measure_reader.py --out results/reader

(a) reading: on every typographic item of the built adversarial split (FigStep's own images and
    MM-SafetyBench TYPO renderings), word and character recall of the known rendered text in what OCR
    passes to the decoder; (d) OCR seconds per image, read with an empty cache;
(b) answers: greedy answers with the real image, a grey image and a noise image of the same size, for
    the embedded model and embedded-ocr: how often the answer changes, and how often it uses a word that
    only the image holds;
(c) SGM glasses (images kept: the image text is visible to the OCR model) vs AurA glasses (images
    dropped) on a class-balanced calibration subset: Jaccard overlap of dampened neurons and Spearman
    correlation of the per-neuron AUROCs, for embedded-ocr and, as the contrast, the embedded model.

Writes OUT/measurements.json: counts, rates, ids and timings, no source text (the benchmark's
prompts stay in the shared data folder). The examples shown are project-authored phrases rendered here.
"""

from __future__ import annotations

import argparse
import difflib
import json
import platform
import re
import statistics
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtoxicqa.core.atomic import write_json_atomic  # noqa: E402
from mmtoxicqa.core.render import CANVAS, render_numbered_list_image, render_text_image  # noqa: E402
from mmtoxicqa.modeling.reader import OcrReader, image_slot  # noqa: E402

WORD = re.compile(r"[a-z0-9']+")
STOP = set(
    "the a an and or of to in on for with by at from as is are be this that these those it its into how what which who can "
    "do does you your i my me we our they their them step steps list method methods ways way detail details detailed".split()
)
OWN_PHRASES = ["Steps to bake bread at home.", "How to plant tomatoes in spring", "Ways to fold a paper crane."]


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def rendered_heading(text: str, items: int = 3, size=CANVAS, font_size: int = 22, width_chars: int = 24) -> str:
    """The heading exactly as render_numbered_list_image draws it (long ones are cut with "...")."""
    step = int(font_size * 1.35)
    max_lines = max(1, (size[1] - 24 - items * step * 2) // step)
    lines = textwrap.wrap(" ".join(text.split()), width=width_chars) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width_chars - 3)].rstrip() + "..."
    return " ".join(lines)


def recall(reference: str, read: str) -> dict:
    """Word recall (multiset) and character recall (matched characters of the normalised reference)."""
    ref_words, got_words = words(reference), words(read)
    if not ref_words:
        return {"word_recall": None, "char_recall": None, "exact": None}
    got = Counter(got_words)
    hit = sum(min(n, got[w]) for w, n in Counter(ref_words).items())
    ref_norm, got_norm = " ".join(ref_words), " ".join(got_words)
    matcher = difflib.SequenceMatcher(None, ref_norm, got_norm, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return {"word_recall": hit / len(ref_words), "char_recall": matched / len(ref_norm), "exact": ref_norm in got_norm}


def summary(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 4),
        "median": round(statistics.median(values), 4),
        "min": round(ordered[0], 4),
        "p10": round(ordered[int(0.1 * (len(ordered) - 1))], 4),
    }


def typographic_items():
    """(doc, image, reference, reference_kind) for the typographic items of the adversarial split, seeded task order."""
    from mmtoxicqa.lmms.task_support import doc_image, split_docs

    out = []
    for doc in split_docs("adversarial"):
        if doc["attack"] != "typographic":
            continue
        image = doc_image(doc)
        if doc["source"] == "figstep":  # FigStep's own picture of its instruction
            out.append((doc, image, doc["image_text"], "figstep instruction"))
        else:  # rendered by the builder: check that the rendering is reproduced before using it as the reference
            same = render_numbered_list_image(doc["image_text"]).tobytes() == image.convert("RGB").tobytes()
            out.append((doc, image, rendered_heading(doc["image_text"]), "rendered heading" if same else "rendered heading (unverified)"))
    return out


def measure_reading(items, reader: OcrReader) -> dict:
    per_source: dict[str, dict] = {}
    rows = []
    for doc, image, reference, kind in items:
        before = reader.seconds
        read = reader.read(image, doc["id"])
        seconds = reader.seconds - before
        r = recall(reference, read)
        full = recall(doc["image_text"], read)
        rows.append(
            {
                "id": doc["id"],
                "source": doc["source"],
                "reference": kind,
                "size": list(image.size),
                "ocr_seconds": round(seconds, 3),
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()},
                "word_recall_full_instruction": round(full["word_recall"], 4),
                "read_words": len(words(read)),
            }
        )
    for source in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == source]
        per_source[source] = {
            "items": len(mine),
            "image_sizes": sorted({tuple(r["size"]) for r in mine}),
            "references": dict(Counter(r["reference"] for r in mine)),
            "word_recall": summary([r["word_recall"] for r in mine]),
            "char_recall": summary([r["char_recall"] for r in mine]),
            "exact_reference_in_text": sum(bool(r["exact"]) for r in mine),
            "word_recall_at_least_0.9": sum(r["word_recall"] >= 0.9 for r in mine),
            "word_recall_full_instruction": summary([r["word_recall_full_instruction"] for r in mine]),
            "ocr_seconds_per_image": summary([r["ocr_seconds"] for r in mine]),
            "lowest_word_recall_ids": [r["id"] for r in sorted(mine, key=lambda r: r["word_recall"])[:5]],
        }
    return {"per_source": per_source, "items": rows}


def own_examples(reader: OcrReader) -> list[dict]:
    """What the decoder sees for project-authored phrases drawn the two ways the benchmark draws them."""
    out = []
    for phrase in OWN_PHRASES:
        for style, image in (
            ("numbered list (FigStep/TYPO layout)", render_numbered_list_image(phrase)),
            ("plain", render_text_image(phrase)),
        ):
            out.append(
                {"rendered": phrase, "style": style, "decoder_sees": image_slot(reader.read(image)), **recall(phrase, reader.read(image))}
            )
    return out


# ----------------------------------------------------------------------------- (b) answers
def variants(image):
    from PIL import Image

    width, height = image.size
    grey = Image.new("RGB", (width, height), (128, 128, 128))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
    return {"real": image.convert("RGB"), "grey": grey, "noise": Image.fromarray(noise, "RGB")}


def answer_items(n_typographic: int, n_standard: int):
    from mmtoxicqa.lmms.task_support import doc_image, split_docs

    typo = [d for d in split_docs("adversarial") if d["attack"] == "typographic"]
    half = n_typographic // 2
    chosen = [d for d in typo if d["source"] == "figstep"][:half] + [d for d in typo if d["source"] != "figstep"][: n_typographic - half]
    standard = list(split_docs("standard"))[:n_standard]
    return [("typographic", d, doc_image(d)) for d in chosen] + [("standard", d, doc_image(d)) for d in standard]


def image_only_words(doc) -> set[str]:
    question = set(words(doc["question"]))
    return {w for w in words(doc["image_text"]) if len(w) >= 4 and w not in STOP and w not in question}


def measure_answers(model_name: str, items, batch_size: int, max_new_tokens: int) -> dict:
    from mmtoxicqa.modeling.loading import generate, load_model

    loaded = load_model(None if model_name == "embedded" else model_name)
    answers: dict[str, list[str]] = {}
    start = time.perf_counter()
    for kind in ("real", "grey", "noise"):
        convs = [
            [{"role": "user", "content": [{"type": "image", "image": variants(img)[kind]}, {"type": "text", "text": d["question"]}]}]
            for _, d, img in items
        ]
        answers[kind] = []
        for i in range(0, len(convs), batch_size):
            answers[kind] += generate(loaded, convs[i : i + batch_size], {"max_new_tokens": max_new_tokens})
    seconds = time.perf_counter() - start
    out = {"generation_seconds": round(seconds, 1)}
    for group in ("typographic", "standard"):
        idx = [i for i, (g, _, _) in enumerate(items) if g == group]
        if not idx:
            continue

        def changed(a, b, idx=idx):
            return sum(answers[a][i] != answers[b][i] for i in idx)

        def similarity(a, b, idx=idx):
            return round(statistics.fmean(difflib.SequenceMatcher(None, answers[a][i], answers[b][i]).ratio() for i in idx), 4)

        uses = {}
        for kind in ("real", "grey", "noise"):
            hits = 0
            eligible = 0
            for i in idx:
                only = image_only_words(items[i][1])
                if only:
                    eligible += 1
                    hits += bool(only & set(words(answers[kind][i])))
            uses[kind] = {"items_with_image_only_words": eligible, "answers_using_one": hits}
        out[group] = {
            "items": len(idx),
            "answers_changed": {
                "real_vs_grey": changed("real", "grey"),
                "real_vs_noise": changed("real", "noise"),
                "grey_vs_noise": changed("grey", "noise"),
            },
            "mean_similarity": {
                "real_vs_grey": similarity("real", "grey"),
                "real_vs_noise": similarity("real", "noise"),
                "grey_vs_noise": similarity("grey", "noise"),
            },
            "answer_uses_a_word_only_the_image_holds": uses,
        }
    if model_name != "embedded":
        reader = loaded.processor.reader
        out["noise_images_with_text_read"] = sum(bool(reader.read(variants(img)["noise"])) for _, _, img in items)
    del loaded
    return out


# ----------------------------------------------------------------------------- (c) glasses
def compare_glasses(model_name: str, limit: int, batch_size: int) -> dict:
    from scipy.stats import spearmanr

    from mmtoxicqa.modeling.loading import load_model
    from mmtoxicqa.sgm.calibration import calibrate

    loaded = load_model(None if model_name == "embedded" else model_name)
    start = time.perf_counter()
    sgm = calibrate(loaded, None, text_only=False, limit=limit, batch_size=batch_size, progress=False)
    sgm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    aura = calibrate(loaded, None, text_only=True, limit=limit, batch_size=batch_size, progress=False)
    aura_seconds = time.perf_counter() - start
    a, b = sgm.auroc_all(), aura.auroc_all()

    def jaccard(x: torch.Tensor, y: torch.Tensor) -> float:
        union = int((x | y).sum())
        return round(int((x & y).sum()) / union, 4) if union else 1.0

    out = {
        "calibration_items": sgm.meta.get("calibration_items"),
        "class_sizes": sgm.meta.get("class_sizes"),
        "neurons": int(a.numel()),
        "dampened": {"sgm": sgm.num_dampened, "aura": aura.num_dampened},
        "jaccard_dampened": jaccard(sgm.alpha_all() < 1, aura.alpha_all() < 1),
        "spearman_auroc": round(float(spearmanr(a.numpy(), b.numpy()).statistic), 4),
        "max_abs_auroc_difference": round(float((a - b).abs().max()), 4),
        "auroc_max": {"sgm": round(float(a.max()), 4), "aura": round(float(b.max()), 4)},
        "seconds": {"sgm": round(sgm_seconds, 1), "aura": round(aura_seconds, 1)},
    }
    for fraction in (0.01, 0.001):
        k = max(1, int(fraction * a.numel()))
        top_a = torch.zeros_like(a, dtype=torch.bool)
        top_b = torch.zeros_like(b, dtype=torch.bool)
        top_a[torch.topk(a, k).indices] = True
        top_b[torch.topk(b, k).indices] = True
        out[f"jaccard_top_{fraction:g}"] = {"k": k, "jaccard": jaccard(top_a, top_b)}
    del loaded
    return out


# ----------------------------------------------------------------------------- sweep cells
def summarise_sweep(sweep_dir: Path, out_dir: Path) -> dict:
    """Harmful rates with intervals per judge for each sweep cell, and text-free copies of the cells in ``out_dir``
    (per item: the headline judge's score and flag, attack and category; no answer, question or request)."""
    from mmtoxicqa.study.sweep import load_cells_with_paths, text_free

    rows = {}
    for path, cell in load_cells_with_paths(sweep_dir):
        metrics = cell["metrics"]
        attack_rates = {}
        for attack in sorted({item.get("attack", "?") for item in cell["items"].values()}):
            flags = [item["harmful"] for item in cell["items"].values() if item.get("attack") == attack and item["harmful"] is not None]
            attack_rates[attack] = f"{sum(flags)}/{len(flags)}"
        rows[path.stem] = {
            "model": cell["model"],
            "method": cell["method"],
            "task": cell["task"],
            "n": cell["n"],
            "judges": {
                name: {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
                for name, values in metrics.get("judges", {}).items()
            },
            "refusal_rate": [round(metrics.get(f"refusal_rate{k}", float("nan")), 4) for k in ("", "_ci_low", "_ci_high")],
            "perplexity": [round(metrics.get(f"perplexity{k}", float("nan")), 3) for k in ("", "_ci_low", "_ci_high")],
            "s_per_item": cell.get("s_per_item"),
            "harmful_by_attack_headline_judge": attack_rates,
        }
        write_json_atomic(out_dir / path.name, text_free(cell, keep=("attack", "category")))
    return rows


def save(path: Path, key: str, value) -> None:
    """Write one part into measurements.json, keeping the parts other runs wrote (parts may run in parallel)."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    current[key] = value
    write_json_atomic(path, current)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/reader")
    parser.add_argument("--parts", default="reading,answers,glasses", help="comma-separated subset of reading,answers,glasses,sweep")
    parser.add_argument("--typographic", type=int, default=20, help="typographic items for (b): half FigStep, half TYPO")
    parser.add_argument("--standard", type=int, default=20, help="standard-split items for (b)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--calibration-limit", type=int, default=200, help="class-balanced calibration items for (c)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--glasses-models", default="embedded-ocr,embedded", help="models for --parts glasses")
    parser.add_argument("--sweep", default=None, help="for --parts sweep: the sweep folder (with answers) to summarise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    path = out / "measurements.json"
    results = {}
    results["conditions"] = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores shared with other jobs; nice 10",
        "torch_threads": torch.get_num_threads(),
        "ocr_threads": __import__("os").environ.get("MMTOXICQA_OCR_THREADS", "1"),
        "torch": torch.__version__,
    }
    save(path, "conditions", results["conditions"])
    parts = set(args.parts.split(","))
    if "reading" in parts:
        with tempfile.TemporaryDirectory() as empty:  # (d) needs real OCR work, not cache hits
            reader = OcrReader(cache=Path(empty))
            start = time.perf_counter()
            reader.engine()
            load_seconds = time.perf_counter() - start
            results["reading"] = measure_reading(typographic_items(), reader)
            results["reading"]["ocr_model_load_seconds"] = round(load_seconds, 2)
            results["reading"]["examples_own_phrases"] = own_examples(reader)
        save(path, "reading", results["reading"])
        print(json.dumps(results["reading"]["per_source"], indent=1))
    if "answers" in parts:
        items = answer_items(args.typographic, args.standard)
        results["answers"] = {
            "items": {
                "typographic": [d["id"] for g, d, _ in items if g == "typographic"],
                "standard": [d["id"] for g, d, _ in items if g == "standard"],
            },
            "decoding": f"greedy, {args.max_new_tokens} new tokens",
        }
        for model in ("embedded", "embedded-ocr"):
            results["answers"][model] = measure_answers(model, items, args.batch_size, args.max_new_tokens)
            save(path, "answers", results["answers"])
            print(model, json.dumps(results["answers"][model], indent=1))
    if "sweep" in parts:
        if not args.sweep:
            parser.error("--parts sweep needs --sweep DIR")
        results["sweep"] = summarise_sweep(Path(args.sweep), out / "sweep")
        save(path, "sweep", results["sweep"])
        print(json.dumps(results["sweep"], indent=1))
    if "glasses" in parts:
        results["glasses"] = json.loads(path.read_text()).get("glasses", {}) if path.is_file() else {}
        results["glasses"].update(calibration_limit=args.calibration_limit, note="SGM: images kept; AurA: text_only (images dropped)")
        for model in args.glasses_models.split(","):
            results["glasses"][model] = compare_glasses(model, args.calibration_limit, args.batch_size)
            save(path, "glasses", results["glasses"])
            print(model, json.dumps(results["glasses"][model], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
