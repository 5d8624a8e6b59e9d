"""The built benchmark as a Hugging Face dataset repository, and ``mmtoxicqa push-data``.

``build-data`` calls :func:`write_hub_layout` after writing the splits: ``data/<split>-00000-of-00001.parquet``
(the same bytes as ``<split>.parquet``, hard-linked where the file system allows, so the Image feature's
metadata travels with them) and a ``README.md`` dataset card whose YAML header declares the config and its
four splits, so ``datasets.load_dataset(<folder>)`` or the hub serves them. The ``<split>.parquet`` files stay:
the tasks and ``MMTOXICQA_DATA`` read those."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mmtoxicqa.core.atomic import atomic_path
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.data.schema import SPLITS

DEFAULT_REPO_ID = "mmtoxicqa/MM-TOXIC-QA"  # the documented place to push (and find) the built benchmark
HUB_FILES = ("README.md", "datasheet.json", "DATASHEET.md", "data/*.parquet")


def hub_file(split: str) -> str:
    return f"data/{split}-00000-of-00001.parquet"


def non_commercial(license_text: str) -> bool:
    text = license_text.lower().replace("-", " ")
    return "nc" in text.split() or "non commercial" in text or "noncommercial" in text or " by nc" in text


def dataset_card(sheet: dict) -> str:
    """The README.md of the dataset repository: YAML header (license, configs with the four splits, sizes),
    then the sources with their licenses (non-commercial ones marked), counts and checksums."""

    sources = sheet.get("sources", {})
    restricted = sorted(name for name, info in sources.items() if non_commercial(str(info.get("license", ""))))
    lines = [
        "---",
        "license: other",
        "license_name: mixed-per-source",
        "pretty_name: MM-TOXIC-QA",
        "task_categories:",
        "- visual-question-answering",
    ]
    lines += ["tags:", "- safety", "- toxicity", "- multimodal", "configs:", "- config_name: default", "  data_files:"]
    for split in SPLITS:
        lines += [f"  - split: {split}", f"    path: {hub_file(split).replace('00000-of-00001', '*')}"]
    lines += ["dataset_info:", "  splits:"]
    for split in SPLITS:
        lines += [f"  - name: {split}", f"    num_examples: {sheet['outputs'][split]['rows']}"]
    lines += ["---", "", "# MM-TOXIC-QA", ""]
    lines += [
        "Image + question items for measuring harmful answers of vision-language models: `standard` (harmful requests),",
        "`adversarial` (the same requests under attacks), `benign` (matched harmless items) and `calibration`",
        "(disjoint items for toxic-neuron discovery). Built by `mmtoxicqa build-data` "
        f"(builder {sheet.get('builder_version')}, seed {sheet.get('seed')}).",
        "",
        "## Licenses (per source)",
        "",
    ]
    if restricted:
        lines += [f"**Non-commercial:** rows from {', '.join(restricted)} may be used for research only (see their license).", ""]
    lines += ["| source | upstream @ commit | license | non-commercial |", "|---|---|---|---|"]
    for name, info in sorted(sources.items()):
        upstream = f"{info.get('repo')} @ {str(info.get('commit'))[:12]}" if info.get("repo") else "-"
        lines.append(f"| {name} | {upstream} | {info.get('license', '-')} | {'**yes**' if name in restricted else 'no'} |")
    lines += ["", "## Splits", "", "| split | rows | sha256 |", "|---|---:|---|"]
    for split in SPLITS:
        lines.append(f"| {split} | {sheet['outputs'][split]['rows']} | `{sheet['outputs'][split]['sha256']}` |")
    lines += [
        "",
        "Counts per category and attack, every input file's sha256 and the disjointness check: `DATASHEET.md`, `datasheet.json`.",
        "",
    ]
    return "\n".join(lines)


def write_hub_layout(out_dir: str | Path, sheet: dict) -> list[Path]:
    """``data/<split>-00000-of-00001.parquet`` beside each built ``<split>.parquet``, and ``README.md``."""

    out_dir = Path(out_dir)
    written = []
    for split in SPLITS:
        target = out_dir / hub_file(split)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.unlink(missing_ok=True)
            try:
                os.link(out_dir / f"{split}.parquet", tmp)
            except OSError:
                shutil.copyfile(out_dir / f"{split}.parquet", tmp)
        written.append(target)
    with atomic_path(out_dir / "README.md") as tmp:
        tmp.write_text(dataset_card(sheet), encoding="utf-8")
    return [*written, out_dir / "README.md"]


def push_data(folder: str | Path, repo_id: str = DEFAULT_REPO_ID, private: bool = False, api=None) -> str:
    """Upload a built folder's hub files to the dataset repository ``repo_id`` (created if missing)."""
    folder = Path(folder).expanduser()
    if not (folder / "README.md").is_file() or not list(folder.glob("data/*.parquet")):
        raise MMToxError(f"{folder} has no dataset card or data/*.parquet; build it with `mmtoxicqa build-data --out {folder}`")
    if api is None:
        from huggingface_hub import HfApi  # optional network client, only on this path

        api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", allow_patterns=list(HUB_FILES))
    return f"https://huggingface.co/datasets/{repo_id}"
