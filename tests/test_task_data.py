"""The MM-TOXIC-QA tasks read their data through lmms-eval's own loader (mmtoxicqa.lmms.task_data), and
every task still serves the same docs in the same order as the pyarrow reader it replaced: runs
that are under way (and results already written) stay comparable item for item."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.data.hub import DEFAULT_REPO_ID

REPO = Path(__file__).resolve().parents[1]
TASKS = {  # task -> the split its YAML names
    "mm_toxic_qa_standard": "standard",
    "mm_toxic_qa_adversarial": "adversarial",
    "mm_toxic_qa_benign": "benign",
    "mm_toxic_qa_organism": "standard",
    "mm_toxic_qa_organism_image": "standard",
    "mm_toxic_qa_organism_untargeted": "standard",
    "mm_toxic_qa_organism_image_untargeted": "standard",
    "mm_toxic_qa_corpus_toxic": "adversarial",
    "mm_toxic_qa_corpus_neutral": "benign",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from source_fixtures import write_fixture_sources

    from mmtoxicqa.data.builder import build

    out = tmp_path_factory.mktemp("data")
    build(write_fixture_sources(tmp_path_factory.mktemp("src")), out, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", include_path=str(REPO / "tasks"))


@pytest.fixture()
def env(monkeypatch, tmp_path):
    """A private datasets cache and a cheap judge; MMTOXICQA_DATA unset and an empty mmtoxicqa cache."""
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("MMTOXICQA_JUDGE", "refusal")
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MMTOXICQA_DATA", raising=False)
    monkeypatch.delenv("MMTOXICQA_SOURCE", raising=False)
    from lmms_eval.api import task as lmms_task

    # lmms-eval resolves its datasets cache once per process (lru_cache): without this, a test that ran
    # earlier in the same pytest process decides where this one's datasets go
    lmms_task._resolve_hf_datasets_cache_dir.cache_clear()
    yield monkeypatch
    lmms_task._resolve_hf_datasets_cache_dir.cache_clear()


def old_ids(folder: Path, task: str) -> list[str]:
    """The doc ids the tasks served before #24, computed here the way that code did: the split's parquet
    read with pyarrow, the fixed shuffle (seed 1234), then each task's filter."""
    import datasets
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    from mmtoxicqa.data.schema import FEATURES
    from mmtoxicqa.modeling.organism.eval_items import eval_docs
    from mmtoxicqa.modeling.organism.recipe import image_only

    table = pq.read_table(folder / f"{TASKS[task]}.parquet").select(list(FEATURES)).cast(FEATURES.arrow_schema)
    docs = datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=FEATURES)).shuffle(seed=1234).flatten_indices()
    rows = docs.to_list()
    if task.startswith("mm_toxic_qa_organism"):
        rows = eval_docs(rows, targeted=not task.endswith("untargeted"))
        rows = [image_only(r) for r in rows] if "_image" in task else rows
    elif task == "mm_toxic_qa_corpus_toxic":
        rows = [r for r in rows if r["attack"] == "toxic_continuation"]
    elif task == "mm_toxic_qa_corpus_neutral":
        rows = [r for r in rows if r["source"] == "toxigen" and r["attack"] == "none"]
    return [r["id"] for r in rows]


def served(task_manager, names) -> dict:
    loaded = task_manager.load_task_or_group(list(names))
    return {name: loaded[name] for name in names}


def test_every_task_serves_the_docs_it_served_before(built, task_manager, env, tmp_path):
    """MMTOXICQA_DATA=<built folder> (the hub layout, read by datasets.load_dataset), the same folder as
    the default ($MMTOXICQA_CACHE/data), and a folder built before the hub layout (bare <split>.parquet
    files): the first 20 ids of every task, and how many there are, are what the old reader gave."""
    expected = {task: old_ids(built, task) for task in TASKS}
    assert all(expected.values()) and len(set(map(tuple, expected.values()))) > 3  # real, different tasks

    old_layout = tmp_path / "old-layout"
    old_layout.mkdir()
    for split in ("standard", "adversarial", "benign"):
        shutil.copyfile(built / f"{split}.parquet", old_layout / f"{split}.parquet")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "data").symlink_to(built)

    for setting, dataset_path in ((str(built), str(built)), (None, str(tmp_path / "cache" / "data")), (str(old_layout), "parquet")):
        if setting:
            env.setenv("MMTOXICQA_DATA", setting)
        else:
            env.delenv("MMTOXICQA_DATA", raising=False)
        for name, task in served(task_manager, TASKS).items():
            ids = list(task.test_docs()["id"])
            assert ids[:20] == expected[name][:20] and len(ids) == len(expected[name]), (setting, name)
            assert task.config.dataset_path == dataset_path  # the run's recorded config names what was read
            assert task.config.test_split == TASKS[name]
    assert (tmp_path / "hf-datasets").is_dir()  # lmms-eval's datasets cache served them


def test_the_seed_set_serves_the_gate_items(task_manager, env):
    """MMTOXICQA_DATA=seed (the CI gate): the shipped seed file through lmms-eval, shaped per split,
    in the fixed shuffle; `make gate`'s --limit 16 evaluates exactly the items of its baseline."""
    from mmtoxicqa.lmms.task_support import seed_docs

    env.setenv("MMTOXICQA_DATA", "seed")
    baseline = json.loads((REPO / "results" / "gate_baseline.json").read_text())["tasks"]
    tasks = served(task_manager, ["mm_toxic_qa_standard", "mm_toxic_qa_adversarial", "mm_toxic_qa_benign"])
    for name, task in tasks.items():
        split = name.removeprefix("mm_toxic_qa_")
        import datasets

        ids = list(task.test_docs()["id"])
        assert ids == list(datasets.Dataset.from_list(seed_docs(split)).shuffle(seed=1234)["id"])
        assert task.config.dataset_path == "json" and task.config.dataset_kwargs["data_files"][split].endswith("seed_items.jsonl")
        if name in baseline:
            assert set(ids[:16]) == set(baseline[name]["items"])


def test_the_yaml_declares_the_documented_hub_id_and_seed_task_keeps_its_file():
    import yaml

    template = yaml.safe_load((REPO / "tasks" / "mm_toxic_qa" / "_mm_toxic_qa_template.yaml").read_text().replace("!function", ""))
    assert template["dataset_path"] == DEFAULT_REPO_ID
    assert f"`{DEFAULT_REPO_ID}`" in (REPO / "README.md").read_text()
    for name, split in TASKS.items():
        assert yaml.safe_load((REPO / "tasks" / "mm_toxic_qa" / f"{name}.yaml").read_text().replace("!function", ""))["test_split"] == split


def test_a_missing_folder_is_one_line_at_once(task_manager, env, tmp_path):
    env.setenv("MMTOXICQA_DATA", str(tmp_path / "nowhere"))
    started = time.monotonic()
    with pytest.raises(MMToxError) as info:
        served(task_manager, ["mm_toxic_qa_standard"])
    assert time.monotonic() - started < 10  # no retry rounds for a folder that is not there
    nowhere = tmp_path / "nowhere"
    assert str(info.value) == (
        f"MM-TOXIC-QA data not found at {nowhere}; build it with `mmtoxicqa build-data --sources ../shared/data --out {nowhere}` (or set MMTOXICQA_DATA)"
    )


def test_an_unreachable_hub_id_is_one_line(task_manager, env):
    """Nothing set, nothing built, offline (conftest): the documented hub id cannot be read; one line
    naming it and what to run instead, not lmms-eval's RetryError."""
    with pytest.raises(MMToxError) as info:
        served(task_manager, ["mm_toxic_qa_benign"])
    message = str(info.value)
    assert message.startswith(f"MM-TOXIC-QA data: cannot load the hub dataset {DEFAULT_REPO_ID} (")
    assert "mmtoxicqa build-data --sources ../shared/data" in message and "`seed`" in message and "\n" not in message

    env.setenv("MMTOXICQA_DATA", "someone/their-copy")  # not a path here: read as a hub id
    with pytest.raises(MMToxError) as info:
        served(task_manager, ["mm_toxic_qa_benign"])
    assert str(info.value).startswith(
        "MM-TOXIC-QA data: cannot load the hub dataset someone/their-copy (MMTOXICQA_DATA=someone/their-copy is no folder here either) ("
    )


def test_a_corrupt_image_in_loaded_data_names_the_item(built, task_manager, env, tmp_path):
    """The check load_split made on a file holds for what lmms-eval loads: one line, the item, the fix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    path = broken / "benign.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[3]["image"] = {"bytes": rows[3]["image"]["bytes"][:60], "path": None}
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    shutil.rmtree(broken / "data")  # read as bare <split>.parquet files
    (broken / "README.md").unlink()
    env.setenv("MMTOXICQA_DATA", str(broken))
    with pytest.raises(MMToxError) as info:
        served(task_manager, ["mm_toxic_qa_benign"])
    assert str(info.value).startswith(f"{broken} (benign split): item {rows[3]['id']}: image is corrupt and cannot be decoded")
    assert str(info.value).endswith(f"rebuild the data (`mmtoxicqa build-data --sources ../shared/data --out {broken}`)")
