"""The built benchmark as a Hugging Face dataset: layout, card, load_dataset, push-data (network mocked)."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import yaml
from source_fixtures import write_fixture_sources

from mmtoxicqa.data.builder import build
from mmtoxicqa.data.hub import DEFAULT_REPO_ID, push_data

SPLITS = ("standard", "adversarial", "benign", "calibration")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    sources = write_fixture_sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("data")
    sheet = build(sources, out, seed=0, progress=False)
    return out, sheet


def test_layout_and_card(built):
    out, sheet = built
    for split in SPLITS:
        hub = out / "data" / f"{split}-00000-of-00001.parquet"
        assert hashlib.sha256(hub.read_bytes()).hexdigest() == sheet["outputs"][split]["sha256"]  # the datasheet's checksum
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    [config] = header["configs"]
    assert [f["split"] for f in config["data_files"]] == list(SPLITS)
    assert config["data_files"][0]["path"] == "data/standard-*.parquet"
    assert {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]} == {s: sheet["outputs"][s]["rows"] for s in SPLITS}
    assert "| mm-safetybench |" in card and "CC BY-NC 4.0" in card
    assert "| mm-safetybench | " in card and card.split("| mm-safetybench |")[1].splitlines()[0].endswith("**yes** |")
    assert card.split("| figstep |")[1].splitlines()[0].endswith("no |")
    assert sheet["outputs"]["benign"]["sha256"] in card


def test_load_dataset_gives_the_four_splits_with_images(built, tmp_path):
    import datasets

    out, sheet = built
    copy = tmp_path / "hub"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.parquet", "datasheet.json", "DATASHEET.md"), dirs_exist_ok=True)
    shutil.copytree(out / "data", copy / "data", dirs_exist_ok=True)  # only what a hub repository holds
    loaded = datasets.load_dataset(str(copy), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded) == sorted(SPLITS)
    assert {s: loaded[s].num_rows for s in SPLITS} == {s: sheet["outputs"][s]["rows"] for s in SPLITS}
    assert isinstance(loaded["standard"].features["image"], datasets.Image)
    assert loaded["standard"][0]["image"].size[0] > 0


def test_push_data_uploads_the_hub_files(built, tmp_path):
    out, _ = built
    calls = []

    class FakeApi:  # only the two network calls are replaced; the files they would send are checked
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, folder_path, repo_id, allow_patterns, **kwargs):
            import fnmatch
            from pathlib import Path

            root = Path(folder_path)
            files = sorted(
                str(p.relative_to(root))
                for p in root.rglob("*")
                if p.is_file() and any(fnmatch.fnmatch(str(p.relative_to(root)), a) for a in allow_patterns)
            )
            calls.append(("upload", repo_id, files, kwargs))

    url = push_data(out, "me/mm-toxic-qa", private=True, api=FakeApi())
    assert url == "https://huggingface.co/datasets/me/mm-toxic-qa"
    assert calls[0] == ("create", "me/mm-toxic-qa", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert calls[1][2] == ["DATASHEET.md", "README.md", *[f"data/{s}-00000-of-00001.parquet" for s in sorted(SPLITS)], "datasheet.json"]
    assert DEFAULT_REPO_ID.count("/") == 1
    from mmtoxicqa.core.errors import MMToxError

    with pytest.raises(MMToxError, match="build-data"):
        push_data(tmp_path, "me/x", api=FakeApi())
