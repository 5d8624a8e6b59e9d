"""Where the MM-TOXIC-QA tasks read their data from, handed to lmms-eval's own dataset loading.

The task YAMLs declare the documented hub id (``dataset_path: mmtoxicqa/MM-TOXIC-QA``) and one
``test_split`` each. When lmms-eval loads a task that declares that id, :func:`install`'s hook on
``ConfigurableTask.download`` swaps in, in this order:

1. ``MMTOXICQA_DATA=seed``: the shipped seed file (``dataset_path: json``);
2. ``MMTOXICQA_DATA=<folder>``: a built folder (the hub layout, ``datasets.load_dataset(folder)``;
   a folder built before that layout is read as ``parquet`` data files);
3. ``MMTOXICQA_DATA=<owner/name>`` (not an existing path): that hub dataset;
4. unset: the folder ``build-data`` writes by default (``$MMTOXICQA_CACHE/data``) when it is built,
   else the declared hub id.

Then lmms-eval's ``download`` runs as for any task (``datasets.load_dataset``, its cache, ``--limit``),
and the task's recorded config names what was read. A source that cannot be read is one MMToxError
line saying what to run, before lmms-eval retries anything (a local folder does not get better in 2 s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mmtoxicqa.core import paths, settings
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.data.hub import DEFAULT_REPO_ID

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FIX = (
    "build it with `mmtoxicqa build-data --sources ../shared/data` (or `make data`), or set MMTOXICQA_DATA "
    "to a built folder, a reachable hub dataset id, or `seed` (the 80 shipped items)"
)


@dataclass(frozen=True)
class TaskData:
    """lmms-eval's dataset keys for one split, and what they point at (for messages)."""

    dataset_path: str
    dataset_kwargs: dict = field(default_factory=dict)
    where: str = ""
    kind: str = "hub"  # "seed", "folder" or "hub"


def missing_folder(root: Path) -> MMToxError:
    return MMToxError(
        f"MM-TOXIC-QA data not found at {root}; build it with "
        f"`mmtoxicqa build-data --sources ../shared/data --out {root}` (or set MMTOXICQA_DATA)"
    )


def folder_data(root: Path, split: str) -> TaskData | None:
    """A built folder's split: its hub layout when it has one, else its ``<split>.parquet``; None if neither."""
    if (root / "README.md").is_file() and any((root / "data").glob(f"{split}-*.parquet")):
        return TaskData(str(root), {}, str(root), "folder")
    if (root / f"{split}.parquet").is_file():
        return TaskData("parquet", {"data_files": {split: str(root / f"{split}.parquet")}}, str(root), "folder")
    return None


def resolve(split: str, declared: str = DEFAULT_REPO_ID) -> TaskData:
    """Where split ``split`` comes from now (see the module docstring for the order)."""
    setting = settings.data_setting()
    if settings.seed_data():
        return TaskData("json", {"data_files": {split: str(paths.seed_file())}}, "seed", "seed")
    if setting:
        root = Path(setting).expanduser()
        if root.exists() or not _HUB_ID.match(setting):
            found = folder_data(root, split)
            if found is None:
                raise missing_folder(root)
            return found
        return TaskData(setting, {}, setting, "hub")
    return folder_data(paths.data_dir(), split) or TaskData(declared, {}, declared, "hub")


def unreachable(data: TaskData, exc: BaseException) -> MMToxError:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    also = f" (MMTOXICQA_DATA={data.where} is no folder here either)" if settings.data_setting() == data.where else ""
    return MMToxError(f"MM-TOXIC-QA data: cannot load the hub dataset {data.where}{also} ({type(exc).__name__}: {reason}); {FIX}")


def offline() -> bool:
    """Hugging Face offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, as the libraries read them)."""
    import datasets  # heavy: the datasets stack, only for data work

    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def install() -> None:
    """Hook lmms-eval's ``ConfigurableTask.download`` (idempotent): a task that declares the MM-TOXIC-QA
    hub id reads :func:`resolve`'s source; every other task is untouched."""
    from lmms_eval.api.task import ConfigurableTask  # heavy: lmms-eval imports torch and its model registry

    original = ConfigurableTask.download
    if getattr(original, "_mmtoxicqa_data", False):
        return
    once = getattr(original, "__wrapped__", original)  # lmms-eval's body without its retry decorator

    def download(self, dataset_kwargs=None):
        if self.DATASET_PATH != DEFAULT_REPO_ID:
            return original(self, dataset_kwargs)
        data = resolve(self.config.test_split or "standard", self.DATASET_PATH)
        kwargs = {**(dataset_kwargs or {}), **data.dataset_kwargs}
        self.DATASET_PATH = self.config.dataset_path = data.dataset_path
        self.config.dataset_kwargs = dict(kwargs)  # the results' config names what was read
        if data.kind != "hub":
            return once(self, kwargs)  # local: nothing to retry, and an MMToxError stays one line
        try:
            return (once if offline() else original)(self, kwargs)  # offline: retrying cannot help
        except MMToxError:
            raise
        except Exception as exc:  # tenacity's RetryError after lmms-eval's retries: say what went wrong
            last = getattr(getattr(exc, "last_attempt", None), "exception", lambda: None)()
            if isinstance(last, MMToxError):
                raise last from None
            raise unreachable(data, last or exc) from None

    download._mmtoxicqa_data = True
    download.__doc__ = original.__doc__
    ConfigurableTask.download = download
