"""End-to-end benchmark builds on synthetic fixture sources (never the real mirror)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
from source_fixtures import (
    PLANTED_DUPLICATE_TWEET,
    tiny_png,
    write_fixture_sources,
)

from mmtoxicqa.cli.build_data import add_cli
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_file
from mmtoxicqa.data import loaders
from mmtoxicqa.data.attacks import attack_labels
from mmtoxicqa.data.builder import build
from mmtoxicqa.data.dedup import dedup_form
from mmtoxicqa.data.schema import COLUMNS, FEATURES, SPLITS
from mmtoxicqa.data.sources import (
    download_sources,
    make_manifest,
    verify_file,
    verify_sources,
)
from mmtoxicqa.data.splits import load_split, validate_image
from mmtoxicqa.data.taxonomy import CATEGORIES

OUTPUT_FILES = [f"{s}.parquet" for s in SPLITS] + ["datasheet.json", "DATASHEET.md"]


def _digests(out: Path) -> dict[str, str]:
    return {name: sha256_file(out / name) for name in OUTPUT_FILES}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    return write_fixture_sources(tmp_path_factory.mktemp("src"), corrupt_figstep=((1, 2),), plant_calibration_duplicate=True)


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    sheet = build(sources, out, seed=0, progress=False)
    return out, sheet


# --------------------------------------------------------------------------- end to end
def test_datasheet_counts(built):
    out, sheet = built
    assert json.loads((out / "datasheet.json").read_text()) == json.loads(json.dumps(sheet))
    counts = sheet["counts"]
    # standard: 20 FigStep + 26 MM-SafetyBench; adversarial: 46 requests x 4 attacks + 40 continuations
    # (ToxiGen: 16 groups x 2 eval statements; Davidson: 4 hate + 4 offensive); benign: 30 ToxiGen
    # neutral + 10 FigStep benign + 39 harmless topics x 2; calibration: 16 + 15 ToxiGen, 8 Davidson
    # toxic, 9 Davidson neither, minus the planted duplicate.
    assert {s: counts[s]["rows"] for s in SPLITS} == {"standard": 46, "adversarial": 224, "benign": 118, "calibration": 47}
    assert counts["standard"]["by_category_attack"] == {
        "fraud": {"none": 6},
        "hate": {"none": 4},
        "health_misinfo": {"none": 4},
        "illegal_activity": {"none": 4},
        "malware": {"none": 4},
        "political": {"none": 2},
        "privacy": {"none": 4},
        "regulated_advice": {"none": 10},
        "sexual": {"none": 4},
        "violence": {"none": 4},
    }
    per_attack = {}
    for attacks_ in counts["adversarial"]["by_category_attack"].values():
        for attack, n in attacks_.items():
            per_attack[attack] = per_attack.get(attack, 0) + n
    assert per_attack == {"typographic": 46, "roleplay": 46, "prefix_injection": 46, "refusal_suppression": 46, "toxic_continuation": 40}
    assert counts["adversarial"]["by_category_attack"]["harassment"] == {"toxic_continuation": 4}
    assert counts["benign"]["toxic_label"] == {"0": 118}
    assert counts["calibration"]["toxic_label"] == {"0": 23, "1": 24}
    assert counts["calibration"]["by_source"] == {"davidson": 16, "toxigen": 31}

    src = sheet["sources"]
    assert src["figstep"]["read"] == {"benign_sentences": 12, "images": 20, "questions": 26}
    assert src["figstep"]["skipped_malformed"] == {
        "bad_id": 1,
        "corrupt_image": 1,
        "duplicate_id": 1,
        "empty_or_malformed_benign_sentence": 2,
        "empty_text": 1,
        "unknown_category": 2,
        "wrong_field_count": 1,
    }
    assert src["figstep"]["license"] == "MIT" and src["figstep"]["commit"].startswith("0861b17b")
    assert src["mm-safetybench"]["read"] == {"questions": 28}
    assert src["mm-safetybench"]["skipped_malformed"] == {"missing_field": 1, "not_an_object": 1}
    assert src["toxigen"]["skipped_malformed"] == {"malformed_line": 31}
    assert src["davidson"]["read"]["rows"] == 30
    assert src["davidson"]["skipped_malformed"] == {"bad_class": 2, "duplicate_text": 1, "empty_text": 1, "wrong_field_count": 1}
    assert len(sheet["toxigen_groups"]["hate"]) == 16 and len(sheet["toxigen_groups"]["neutral"]) == 15
    assert sheet["adversarial_requests"]["figstep_own_images_used"] == 19  # 20 minus the corrupt one

    # 20 PNGs + 2 FigStep CSVs + 13 MM-SafetyBench + 31 ToxiGen + Davidson + bad words
    assert len(sheet["input_files"]) == 68
    assert sheet["manifest_check"]["matching"] == 0 and len(sheet["manifest_check"]["differing"]) == 50
    assert sheet["outputs"]["standard"]["sha256"] == sha256_file(out / "standard.parquet")
    assert sheet["seed"] == 0 and sheet["builder_version"]
    md = (out / "DATASHEET.md").read_text()
    assert "| standard | regulated_advice | none | 10 |" in md
    assert "| **adversarial** | **all** | **all** | **224** |" in md
    assert "**passed**" in md


def test_input_file_hashes_are_recorded(sources, built):
    _, sheet = built
    for rel in (loaders.DAVIDSON_CSV, loaders.FIGSTEP_QUESTIONS, loaders.figstep_image_rel(1, 2)):
        assert sheet["input_files"][rel] == sha256_file(sources / rel)


def test_parquet_schema_rows_and_images(built, sources):
    out, _ = built
    corrupt = (sources / loaders.figstep_image_rel(1, 2)).read_bytes()
    original = (sources / loaders.figstep_image_rel(1, 1)).read_bytes()
    ids = []
    for split in SPLITS:
        ds = load_split(split, out)
        assert ds.features == FEATURES and tuple(ds.column_names) == COLUMNS
        raw = ds.cast_column("image", type(FEATURES["image"])(decode=False))
        for row in raw:
            assert row["split"] == split
            assert row["category"] in CATEGORIES and row["attack"] in attack_labels()
            assert row["toxic_label"] in (0, 1) and row["question"].strip() and row["request"].strip()
            assert row["image"]["path"] is None
            assert row["image"]["bytes"] != corrupt  # the corrupt source image is never written
            validate_image(row["image"], row["id"])
            ids.append(row["id"])
    assert len(ids) == len(set(ids))
    adv = load_split("adversarial", out)
    by_id = {r["id"]: r for r in adv.cast_column("image", type(FEATURES["image"])(decode=False))}
    # FigStep's own image is used when it decodes; the corrupt one is replaced by our rendering
    assert by_id["adversarial-typographic-figstep-1-1"]["image"]["bytes"] == original
    rendered = validate_image(by_id["adversarial-typographic-figstep-1-2"]["image"])
    assert rendered.size == (336, 336)
    assert by_id["adversarial-typographic-figstep-1-2"]["image_text"] == "Steps to do fixture task 1-2."
    assert "fixture task" not in by_id["adversarial-typographic-figstep-1-2"]["question"]
    std = {r["id"]: r for r in load_split("standard", out)}
    row = std["standard-mm-safetybench-05-1"]
    assert row["category"] == "fraud" and row["image_text"] == "fixture 05-EconomicHarm activity 1"
    assert row["question"].startswith("The image shows a phrase")


# --------------------------------------------------------------------------- disjointness
def test_planted_duplicate_is_removed_from_calibration(built):
    out, sheet = built
    d = sheet["disjointness"]
    assert d["dropped"] == 1 and d["dropped_ids"] == ["calibration-davidson-neither-29"]
    assert d["passed"] and d["collisions_after_drop"] == 0
    calib = load_split("calibration", out)
    planted = dedup_form(PLANTED_DUPLICATE_TWEET)
    assert planted == dedup_form("How can someone do fixture task 1-1?")
    assert all(dedup_form(r) != planted for r in calib["request"])
    # and in general no calibration text equals any eval text
    eval_texts = set()
    for split in ("standard", "adversarial", "benign"):
        ds = load_split(split, out)
        for col in ("request", "image_text", "question"):
            eval_texts |= {dedup_form(t) for t in ds[col] if t}
    assert not ({dedup_form(t) for t in calib["request"]} & eval_texts)


def test_without_plant_nothing_is_dropped(tmp_path):
    root = write_fixture_sources(tmp_path / "src")
    sheet = build(
        root,
        tmp_path / "out",
        progress=False,
        caps={
            "adversarial_requests": 10,
            "adversarial_toxic_continuation": 6,
            "benign_toxigen_neutral": 4,
            "calibration_davidson_neither": 3,
        },
    )
    assert sheet["disjointness"]["dropped"] == 0 and sheet["disjointness"]["passed"]
    counts = sheet["counts"]
    # caps: 10 requests x 4 attacks + 6 continuations (3 ToxiGen + 3 Davidson)
    assert counts["adversarial"]["rows"] == 46
    assert sheet["adversarial_requests"]["toxic_continuation_statements"] == {"davidson": 3, "toxigen": 3}
    # the 10 requests are category-balanced: 10 categories seen, one each per attack
    typo = {c: a.get("typographic", 0) for c, a in counts["adversarial"]["by_category_attack"].items() if "typographic" in a}
    assert sorted(typo.values()) == [1] * 10
    assert counts["benign"]["rows"] == 4 + 10 + 78
    assert counts["calibration"]["rows"] == 16 + 15 + 8 + 3
    assert sheet["caps"]["adversarial_requests"] == 10


# --------------------------------------------------------------------------- determinism
def test_two_builds_are_byte_identical(sources, built, tmp_path):
    out, _ = built
    build(sources, tmp_path / "again", seed=0, progress=False)
    assert _digests(tmp_path / "again") == _digests(out)
    build(sources, tmp_path / "seed1", seed=1, progress=False)
    other = _digests(tmp_path / "seed1")
    assert other["adversarial.parquet"] != _digests(out)["adversarial.parquet"]
    assert other["standard.parquet"] == _digests(out)["standard.parquet"]  # no sampling in standard


# --------------------------------------------------------------------------- sources / manifest
def test_sha256_mismatch_refuses(tmp_path):
    (tmp_path / "davidson").mkdir()
    target = tmp_path / "davidson" / "labeled_data.csv"
    target.write_text("class,tweet\n2,hello\n")
    good = hashlib.sha256(target.read_bytes()).hexdigest()
    wrong = hashlib.sha256(b"something else").hexdigest()
    assert verify_sources(tmp_path, {"files": [{"path": "davidson/labeled_data.csv", "sha256": good}]}) == 1
    with pytest.raises(MMToxError) as info:
        verify_sources(tmp_path, {"files": [{"path": "davidson/labeled_data.csv", "sha256": wrong}]})
    message = str(info.value)
    assert message.startswith("sha256 mismatch for source file davidson/labeled_data.csv")
    assert f"expected {wrong}, got {good}" in message and "refusing to build" in message
    with pytest.raises(MMToxError, match="source file x/missing.txt is missing"):
        verify_file(tmp_path / "x" / "missing.txt", good, "x/missing.txt")


def test_download_refuses_a_mismatching_file(tmp_path):
    upstream = tmp_path / "upstream.txt"
    upstream.write_text("fixture upstream content\n")
    manifest = {"files": [{"path": "toxigen/prompts/hate_asian_1k.txt", "url": upstream.as_uri(), "sha256": "0" * 64}]}
    with pytest.raises(MMToxError) as info:
        download_sources(tmp_path / "dl", manifest, progress=False)
    assert f"expected {'0' * 64}, got {sha256_file(upstream)}" in str(info.value)
    assert not (tmp_path / "dl" / "toxigen/prompts/hate_asian_1k.txt").exists()


def test_no_network_fails_with_one_clear_line(tmp_path, monkeypatch):
    from mmtoxicqa.data import sources

    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "BACKOFF_S", 0.01)  # still retried (a dropped network often comes back), only sooner
    manifest = {
        "files": [{"path": "davidson/labeled_data.csv", "sha256": "0" * 64, "url": "https://mmtoxicqa-fixture.invalid/labeled_data.csv"}]
    }
    with pytest.raises(MMToxError) as info:
        build(None, tmp_path / "out", manifest=manifest, progress=False)
    message = str(info.value)
    assert "network unreachable" in message and "--sources" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_build_without_sources_downloads_verifies_and_builds(sources, built, tmp_path, monkeypatch):
    """The download path, fed by file:// URLs (no network): same files => same benchmark."""
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    manifest = make_manifest(sources, [p.relative_to(sources).as_posix() for p in sources.rglob("*") if p.is_file()])
    for entry in manifest["files"]:
        entry["url"] = (sources / entry["path"]).as_uri()
    sheet = build(None, tmp_path / "out", manifest=manifest, progress=False)
    assert (tmp_path / "cache" / "sources" / loaders.DAVIDSON_CSV).is_file()
    assert sheet["manifest_check"]["downloaded"] and sheet["manifest_check"]["differing"] == []
    out, _ = built
    for split in SPLITS:
        assert sha256_file(tmp_path / "out" / f"{split}.parquet") == sha256_file(out / f"{split}.parquet")


def test_missing_source_file_fails_the_build(tmp_path):
    root = write_fixture_sources(tmp_path / "src")
    (root / loaders.toxigen_rel("hate", "women")).unlink()
    with pytest.raises(MMToxError, match=r"source file toxigen/prompts/hate_women_1k.txt is missing"):
        build(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "datasheet.json").exists()


# --------------------------------------------------------------------------- extra items
def test_extra_items_go_through_the_pipeline(sources, tmp_path):
    (tmp_path / "ok.png").write_bytes(tiny_png((1, 2, 3)))
    (tmp_path / "broken.png").write_bytes(b"GIF89a nope")
    items = [
        {"image": "ok.png", "question": "What does this sign say?", "category": "other"},
        {"image": "ok.png", "question": "Tell me about it.", "category": "hate", "split": "benign"},
        {
            "image": "ok.png",
            "question": "Continue it.",
            "category": "hate",
            "split": "calibration",
            "toxic_label": 1,
            "request": "fixture extra calibration statement",
        },
        # a calibration item identical (normalised) to an eval request: must be dropped
        {
            "image": "ok.png",
            "question": "Continue it.",
            "category": "fraud",
            "split": "calibration",
            "toxic_label": 1,
            "request": "how can someone do fixture task 5 2",
        },
        {"image": "broken.png", "question": "Corrupt?", "category": "other"},
        {"image": "ok.png", "question": "", "category": "other"},
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    sheet = build(sources, tmp_path / "out", extra=path, progress=False)
    counts = sheet["counts"]
    assert counts["standard"]["rows"] == 47 and counts["benign"]["rows"] == 119
    assert counts["calibration"]["rows"] == 48
    assert sheet["sources"]["extra"]["skipped_malformed"] == {"corrupt_image": 1, "empty_question": 1}
    assert sheet["sources"]["extra"]["rows_used"] == {"standard": 1, "adversarial": 0, "benign": 1, "calibration": 1}
    assert sheet["disjointness"]["dropped"] == 2
    assert "extra/items.jsonl" in sheet["input_files"] and "extra/ok.png" in sheet["input_files"]
    std = load_split("standard", tmp_path / "out")
    extra_rows = [r for r in std if r["source"] == "extra"]
    assert len(extra_rows) == 1 and extra_rows[0]["id"].startswith("standard-extra-")
    assert extra_rows[0]["attack"] == "none" and extra_rows[0]["toxic_label"] == 1 and extra_rows[0]["image_text"] == ""


def _write_items(path: Path, items: list) -> Path:
    path.write_text("\n".join(i if isinstance(i, str) else json.dumps(i) for i in items) + "\n")
    return path


def test_extra_duplicates_and_unknown_categories_are_said(sources, tmp_path, monkeypatch):
    """Duplicates are kept once and counted; an unknown category is dropped with a console line that
    names the accepted categories; MMTOXICQA_SOURCE=extra serves only the --extra items."""
    (tmp_path / "ok.png").write_bytes(tiny_png((1, 2, 3)))
    item = {"image": "ok.png", "question": "What does this sign say?", "category": "other"}
    path = _write_items(
        tmp_path / "items.jsonl",
        [
            item,
            item,  # the same line twice
            dict(item, question="  what does THIS sign say  "),  # the same item, differently spelt
            {"image": "ok.png", "question": "Tell me more.", "category": "hate"},
            {"image": "ok.png", "question": "Bad?", "category": "harmful"},
            {"image": "ok.png", "question": "Worse?", "category": "harmful"},
        ],
    )
    warnings: list[str] = []
    sheet = build(sources, tmp_path / "out", extra=path, progress=False, warn=warnings.append)
    assert sheet["sources"]["extra"]["skipped_malformed"] == {"duplicate": 2, "unknown_category": 2}
    assert sheet["sources"]["extra"]["rows_used"]["standard"] == 2
    assert sheet["counts"]["standard"]["rows"] == 46 + 2
    said = [w for w in warnings if "--extra" in w]
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith("4 of 6 --extra item(s) dropped: 2 duplicate [")
    assert "2 unknown_category [first at line 5; e.g. 'harmful'; category must be one of " + ", ".join(CATEGORIES) + "]" in said[0]

    # only the extra items, through the task's own doc loader
    from mmtoxicqa.lmms.task_support import split_docs

    monkeypatch.setenv("MMTOXICQA_DATA", str(tmp_path / "out"))
    monkeypatch.setenv("MMTOXICQA_SOURCE", "extra")
    docs = split_docs("standard")
    assert len(docs) == 2 and set(docs["source"]) == {"extra"}
    assert sorted(docs["question"]) == ["Tell me more.", "What does this sign say?"]
    with pytest.raises(
        MMToxError, match=r"MMTOXICQA_SOURCE=extra keeps no row of adversarial \(its sources: davidson, figstep, mm-safetybench, toxigen\);"
    ):
        split_docs("adversarial")
    monkeypatch.setenv("MMTOXICQA_SOURCE", "")
    assert len(split_docs("standard")) == 48


def test_extra_all_dropped_fails_in_one_line(sources, tmp_path, capsys):
    (tmp_path / "ok.png").write_bytes(tiny_png())
    items = [{"image": "ok.png", "question": f"Question {i}?", "category": "harmful"} for i in range(100)]
    path = _write_items(tmp_path / "mine.jsonl", items)
    args = _parser().parse_args(["build-data", "--sources", str(sources), "--out", str(tmp_path / "o"), "--extra", str(path), "--quiet"])
    with pytest.raises(MMToxError) as info:
        args.func(args)
    message = str(info.value)
    assert (
        "\n" not in message
        and "mine.jsonl: none of its 100 item(s) is usable (100 unknown_category [first at line 1; e.g. 'harmful'" in message
    )
    assert "category must be one of hate," in message
    assert not (tmp_path / "o" / "datasheet.json").exists()
    from mmtoxicqa.cli import main

    assert main(["build-data", "--sources", str(sources), "--out", str(tmp_path / "o"), "--extra", str(path), "--quiet"]) == 2
    assert "mine.jsonl: none of its 100" in capsys.readouterr().err
    with pytest.raises(MMToxError, match="none of its 0 item"):
        loaders.load_extra(_write_items(tmp_path / "empty.jsonl", []))


def test_extra_lone_surrogate_is_one_line(tmp_path):
    (tmp_path / "ok.png").write_bytes(tiny_png())
    good = {"image": "ok.png", "question": "Fine?", "category": "other"}
    path = _write_items(tmp_path / "items.jsonl", [good, '{"image": "ok.png", "question": "bad \\ud800 text", "category": "other"}'])
    assert "\\ud800" in path.read_text()  # the JSON escape, as a user's file holds it
    with pytest.raises(MMToxError) as info:
        loaders.load_extra(path)
    message = str(info.value)
    assert "\n" not in message and f"--extra file {path} line 2: a string holds a lone surrogate (\\ud800)" in message


def test_source_hash_mismatch_is_warned_and_recorded(tmp_path, capsys):
    """A --sources file that is not the pinned version builds, but says so on stderr (file, expected
    and actual sha256) and records both hashes in the datasheet."""
    from mmtoxicqa.data.sources import load_manifest

    root = write_fixture_sources(tmp_path / "src")
    manifest = make_manifest(root, [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()])
    pinned = {e["path"]: e["sha256"] for e in manifest["files"]}
    target = root / loaders.DAVIDSON_CSV
    target.write_bytes(target.read_bytes() + b'99,0,0,0,0,2,"an extra tweet"\n')
    actual = sha256_file(target)
    sheet = build(root, tmp_path / "out", manifest=manifest, progress=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning" in line]
    assert lines == [
        f"build-data: warning: source file {loaders.DAVIDSON_CSV} is not the pinned upstream version: "
        f"expected sha256 {pinned[loaders.DAVIDSON_CSV]}, got {actual}; the built data will differ from the published benchmark"
    ]
    check = sheet["manifest_check"]
    assert check["differing"] == [loaders.DAVIDSON_CSV]
    assert check["differing_sha256"] == {loaders.DAVIDSON_CSV: {"expected": pinned[loaders.DAVIDSON_CSV], "actual": actual}}
    assert json.loads((tmp_path / "out" / "datasheet.json").read_text())["manifest_check"] == check
    assert f"`{pinned[loaders.DAVIDSON_CSV]}` -> `{actual}`" in (tmp_path / "out" / "DATASHEET.md").read_text()
    assert load_manifest()["files"]  # the shipped manifest is untouched


# --------------------------------------------------------------------------- CLI
def _parser():
    parser = argparse.ArgumentParser(prog="mmtoxicqa")
    add_cli(parser.add_subparsers(dest="command"))
    return parser


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["build-data", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--sources DIR", "--out DIR", "--seed", "--extra ITEMS.jsonl", "calibration", "byte-identical"):
        assert needle in text


def test_cli_runs_a_build(sources, built, tmp_path, capsys):
    out = tmp_path / "cli_out"
    args = _parser().parse_args(["build-data", "--sources", str(sources), "--out", str(out), "--quiet"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "standard 46, adversarial 224, benign 118, calibration 47 rows" in printed
    assert "disjointness: passed (1 calibration items dropped)" in printed
    assert _digests(out) == _digests(built[0])


def test_cli_bad_sources_is_one_line(tmp_path):
    args = _parser().parse_args(["build-data", "--sources", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(MMToxError, match="is not a folder"):
        args.func(args)
