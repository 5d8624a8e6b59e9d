"""``--wandb PROJECT`` for ``sweep`` and ``leaderboard``: the tables (and the frontier plot) as one
Weights & Biases run, so results land where lmms-eval's own ``--wandb_args`` runs do.

wandb is an optional extra (``pip install 'mmtoxicqa[wandb]'``); it reads its own settings
(``WANDB_MODE=offline``, ``WANDB_DIR``, ``WANDB_API_KEY``) from the environment."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mmtoxicqa.core.errors import MMToxError


def _wandb():
    try:
        import wandb  # optional: only --wandb needs it
    except ImportError:
        raise MMToxError("--wandb needs wandb: pip install 'mmtoxicqa[wandb]' (or drop --wandb)") from None
    return wandb


def log_run(project: str, job: str, tables: dict[str, tuple[list[str], list[list]]], images: dict[str, Path] | None = None) -> str:
    """One wandb run in ``project``: each ``{key: (columns, rows)}`` as a ``wandb.Table``, each existing
    image file as a ``wandb.Image``. Returns the run's local folder."""
    wandb = _wandb()
    run = wandb.init(project=project, job_type=job, config={"tables": sorted(tables)})
    try:
        payload = {key: wandb.Table(columns=columns, data=rows) for key, (columns, rows) in tables.items()}
        payload.update({key: wandb.Image(str(path)) for key, path in (images or {}).items() if Path(path).is_file()})
        run.log(payload)
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def csv_table(text: str) -> tuple[list[str], list[list]]:
    """A CSV text as (columns, rows) for ``wandb.Table``."""
    reader = list(csv.reader(io.StringIO(text)))
    return (reader[0], reader[1:]) if reader else ([], [])


def cells_table(cells: list[dict]) -> tuple[list[str], list[list]]:
    """One row per sweep cell: its identity and every scalar metric (nested ones as JSON text)."""
    names = sorted({k for c in cells for k in c.get("metrics", {})})
    columns = ["model", "method", "tag", "task", "n", "judge", *names]
    rows = []
    for c in cells:
        metrics = c.get("metrics", {})
        values = [
            v if isinstance(v, (int, float, str)) or v is None else json.dumps(v, sort_keys=True) for v in (metrics.get(n) for n in names)
        ]
        rows.append([c.get("model"), c.get("method"), c.get("tag", ""), c.get("task"), c.get("n"), c.get("judge"), *values])
    return columns, rows
