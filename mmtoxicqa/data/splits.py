"""Reading built MM-TOXIC-QA splits, and making sure no corrupt image reaches a model."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mmtoxicqa.core import paths, settings
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_file
from mmtoxicqa.core.image_io import strict_decoding
from mmtoxicqa.data.schema import FEATURES, SPLITS


def split_path(name: str, data_dir: str | Path | None = None) -> Path:

    if name not in SPLITS:
        raise MMToxError(f"unknown MM-TOXIC-QA split {name!r}; use one of {', '.join(SPLITS)}")
    root = Path(data_dir).expanduser() if data_dir else paths.data_dir()
    return root / f"{name}.parquet"


def load_split(name: str, data_dir: str | Path | None = None):
    """Load split ``name`` (standard, adversarial, benign, calibration) as a ``datasets.Dataset``.

    Reads ``<data_dir or paths.data_dir()>/<name>.parquet``; the ``image`` column decodes
    to PIL images on access.
    """
    import datasets  # heavy: the datasets stack, only for data work

    path = split_path(name, data_dir)
    root = path.parent
    if not path.is_file():
        raise MMToxError(
            f"MM-TOXIC-QA data not found at {root}; build it with "
            f"`mmtoxicqa build-data --sources ../shared/data --out {root}` (or set MMTOXICQA_DATA)"
        )
    # Read with pyarrow directly: no copy into the Hugging Face datasets cache, so a
    # rebuilt file is never shadowed by a stale cached one.
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable  # heavy: the datasets stack, only for data work

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a truncated/foreign file
        raise MMToxError(
            f"{path} is not a readable MM-TOXIC-QA parquet file ({type(exc).__name__}); rebuild it with "
            f"`mmtoxicqa build-data --sources ../shared/data --out {root}`"
        ) from exc
    missing = [c for c in FEATURES if c not in table.column_names]
    if missing:
        raise MMToxError(
            f"{path} lacks the column(s) {', '.join(missing)} (built by an older builder?); rebuild it with "
            f"`mmtoxicqa build-data --sources ../shared/data --out {root}`"
        )
    try:
        table = table.select(list(FEATURES)).cast(FEATURES.arrow_schema)
    except Exception as exc:  # wrong column types
        raise MMToxError(
            f"{path} has columns of the wrong type ({type(exc).__name__}); rebuild it with "
            f"`mmtoxicqa build-data --sources ../shared/data --out {root}`"
        ) from exc
    check_images(table, path)
    ds = datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=FEATURES), split=name)
    return ds


_CHECKED: set[tuple] = set()  # (path, size, mtime) of split files, or dataset fingerprints, whose images all decode


def rebuild_hint(out: str | Path) -> str:
    return f"`mmtoxicqa build-data --sources ../shared/data --out {out}`"


def check_images(table, path: Path) -> None:
    """Decode every stored image of a split once per file version; a corrupt one is a one-line
    MMToxError naming its item id (``datasets`` would otherwise fail deep inside lmms-eval's task
    setup, naming nothing). Decoding is strict here even where ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
    is on (lmms-eval turns it on globally, which would let a truncated image through as grey)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        _check_table(table, str(path), rebuild_hint(path.parent))
        _CHECKED.add(key)


def check_split(dataset, split: str, where: str):
    """A split as lmms-eval loaded it (from ``where``: a built folder or a hub id), checked as
    :func:`load_split` checks a file: every schema column there, cast to the schema's types, every
    image decoding (once per dataset fingerprint). Returns the dataset to serve."""

    fix = f"rebuild it with {rebuild_hint(where)}" if Path(where).exists() else f"rebuild and push it ({rebuild_hint('DIR')})"
    missing = [c for c in FEATURES if c not in dataset.column_names]
    if missing:
        raise MMToxError(
            f"MM-TOXIC-QA {split} split of {where} lacks the column(s) {', '.join(missing)} (built by an older builder?); {fix}"
        )
    if dataset.features != FEATURES:
        try:
            dataset = dataset.select_columns(list(FEATURES)).cast(FEATURES)
        except Exception as exc:  # wrong column types
            raise MMToxError(f"MM-TOXIC-QA {split} split of {where} has columns of the wrong type ({type(exc).__name__}); {fix}") from exc
    key = ("dataset", dataset._fingerprint)
    if key not in _CHECKED:
        _check_table(dataset.data.table, f"{where} ({split} split)", rebuild_hint(where if Path(where).exists() else "DIR"))
        _CHECKED.add(key)
    return dataset


def _check_table(table, label: str, rebuild: str) -> None:

    with strict_decoding():
        _decode_all(table, label, rebuild)


def _decode_all(table, label: str, rebuild: str) -> None:

    ids = table.column("id")
    images = table.column("image")
    for index in range(len(table)):
        value = images[index].as_py()
        if value is None:
            continue
        data = value.get("bytes") if isinstance(value, dict) else None
        try:
            if data:  # the stored form: decode only (what datasets does on access), no RGB copy
                try:
                    with Image.open(io.BytesIO(data)) as opened:
                        opened.load()
                        ok = opened.width >= 1 and opened.height >= 1
                except Exception:  # PIL raises many types for corrupt data; validate_image names the reason
                    ok = False
                if ok:
                    continue
            validate_image(value, str(ids[index].as_py()))
        except MMToxError as exc:
            raise MMToxError(
                f"{label}: {exc}".removesuffix("; rebuild the data or drop the item") + f"; rebuild the data ({rebuild})"
            ) from None


SOURCE_ENV = "MMTOXICQA_SOURCE"


def filter_source(dataset, sources: str | None = None):
    """Keep the rows whose ``source`` column is in ``sources`` (comma-separated; default: the
    ``MMTOXICQA_SOURCE`` environment variable; unset or empty keeps every row).

    ``MMTOXICQA_SOURCE=extra`` evaluates only the items added with ``build-data --extra``.
    A filter that keeps no row is a one-line error naming the sources the split has."""

    wanted = settings.raw(SOURCE_ENV) if sources is None else sources
    names = [n.strip() for n in str(wanted).split(",") if n.strip()]
    if not names:
        return dataset
    column = dataset["source"]
    keep = [i for i, source in enumerate(column) if source in names]
    if not keep:
        split = getattr(dataset, "split", None) or "this split"
        have = ", ".join(sorted(set(column))) or "none"
        raise MMToxError(
            f"{SOURCE_ENV}={wanted} keeps no row of {split} (its sources: {have}); set {SOURCE_ENV} to some of them or unset it"
        )
    return dataset.select(keep)


def validate_image(value, item_id: str = "?"):
    """Return ``value`` as a fully decoded RGB PIL image, or raise a one-line MMToxError.

    Accepts a PIL image, raw bytes, a ``{"bytes": ..., "path": ...}`` dict (the datasets
    storage form) or a file path.
    """

    try:
        if isinstance(value, Image.Image):
            image = value
            image.load()
        else:
            if isinstance(value, dict):
                data = value.get("bytes")
                if data is None and value.get("path"):
                    data = Path(value["path"]).read_bytes()
            elif isinstance(value, (bytes, bytearray)):
                data = bytes(value)
            elif isinstance(value, (str, Path)):
                data = Path(value).read_bytes()
            else:
                raise MMToxError(f"item {item_id}: image is a {type(value).__name__}, not an image; rebuild the data")
            if not data:
                raise MMToxError(f"item {item_id}: image is empty; rebuild the data or drop the item")
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = opened.copy()
        if image.width < 1 or image.height < 1:
            raise MMToxError(f"item {item_id}: image has zero size; rebuild the data or drop the item")
        return image.convert("RGB")
    except MMToxError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MMToxError(
            f"item {item_id}: image is corrupt and cannot be decoded ({type(exc).__name__}); rebuild the data or drop the item"
        ) from exc


def data_fingerprint(seed: bool | None = None) -> dict:
    """Which benchmark data a run reads: ``{"path", "sha256"}`` of the built folder's datasheet.json
    (it pins every split file's hash), or of the shipped seed file (``seed=True``, or by default when
    ``MMTOXICQA_DATA=seed``). Recorded in results and sweep cells, so numbers from different data
    are never mixed."""

    if seed is None:
        seed = settings.seed_data()
    if seed:
        return {"path": "seed", "sha256": sha256_file(paths.seed_file())}
    sheet = paths.data_dir() / "datasheet.json"
    found = {"path": str(paths.data_dir()), "sha256": sha256_file(sheet) if sheet.is_file() else None}
    source = settings.text("MMTOXICQA_SOURCE")
    return {**found, "source": source} if source else found  # a source filter changes what is evaluated
