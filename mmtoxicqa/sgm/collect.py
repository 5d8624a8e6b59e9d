"""Responses: each calibration input's pooled activation of every neuron, streamed.

Forward pre-hooks on the sites' output projections see the MLP intermediate activation
``(batch, tokens, width)``; each hook pools it over the *counted* tokens of each input and
writes one row per input into the batch's slice of the pooled ``N x M`` matrix. Per-token
activations never outlive the hook call.

Counted tokens: the ``text`` scope of :mod:`mmtoxicqa.modeling.positions` (attended, not an image/video
placeholder of the model config or ``placeholder_token_ids``, not in ``ignore_token_ids``), AND-ed
with the batch's own boolean ``token_mask`` when it carries one (same shape as ``input_ids``; the
calibration batches carry the ``text`` or ``request`` scope there).

Pooling: ``max`` (default, as AurA) or ``mean`` over the counted tokens.

Non-finite activations: a NaN or +/-inf reaching a pooled value (max and sum both propagate NaN;
max propagates +inf, mean any inf) raises MMToxError naming the layer, checked once per batch
(one device sync). A lone -inf among finite values under max pooling is not seen.

Labels: ``labels`` (one 0/1 per input, in batch order) or, when ``labels`` is None, a
``toxic_label`` entry in every batch (or ``(batch, labels)`` pairs instead of batches). Batch entries ``token_mask`` and ``toxic_label`` are
removed before the forward pass; everything else goes to ``model(**batch)``.

Resuming: with ``checkpoint_path`` (a directory), each finished batch is written atomically as
``batch_NNNNNN.safetensors`` (its pooled rows, labels, counted-token counts and the hash of its
inputs). A rerun with the same batches loads finished ones instead of running the model and
refuses a checkpoint made from different inputs or options. ``batch_offset`` numbers the files
from that index: processes that each collect one shard of the batches (data parallel) share one
folder, and a rerun with another number of processes reuses the finished batches.

Storage: the pooled matrix is float32 by default; ``dtype=torch.float16`` / ``torch.bfloat16``
halves it. Pooling is computed in float32 (a bfloat16 model's max-pooled values are bfloat16
numbers already, so storing them as bfloat16 loses nothing). float16 overflows above 65504: a
pooled value that does is refused in one line naming the layer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from tqdm.auto import tqdm

from mmtoxicqa.core.atomic import atomic_path, write_json_atomic
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.discovery import NeuronSite, discover_sites, site_modules, site_offsets, unwrap_model
from mmtoxicqa.modeling.hooks import Hooks
from mmtoxicqa.modeling.placement import execution_device, input_device
from mmtoxicqa.modeling.positions import placeholder_token_ids as declared_placeholder_ids
from mmtoxicqa.modeling.positions import text_mask

log = logging.getLogger(__name__)

POOLINGS = ("max", "mean")
RESERVED_KEYS = ("token_mask", "toxic_label")
CHECKPOINT_VERSION = 1
STORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class _StopForward(Exception):
    """Raised by the last site's hook: nothing after it is needed for the responses."""


@dataclass
class Responses:
    """Pooled activations: ``pooled[i, offsets[k] + j]`` is input i's pooled neuron j of ``sites[k]``."""

    sites: list[NeuronSite]
    pooled: torch.Tensor  # (N, M)
    labels: torch.Tensor | None  # (N,) int64 0/1
    token_counts: torch.Tensor  # (N,) counted tokens per input
    pooling: str
    data_hash: str
    not_fired: list[str] = field(default_factory=list)  # sites whose module never ran (their column is 0)

    @property
    def offsets(self) -> list[int]:
        return site_offsets(self.sites)

    def site_columns(self, k: int) -> slice:
        start = self.offsets[k]
        return slice(start, start + self.sites[k].width)

    def class_sizes(self) -> dict[str, int]:
        if self.labels is None:
            return {}
        toxic = int(self.labels.sum())
        return {"toxic": toxic, "non_toxic": int(self.labels.numel()) - toxic}


def _as_label_tensor(labels, where: str) -> torch.Tensor:
    tensor = torch.as_tensor(labels).reshape(-1)
    if tensor.dtype == torch.bool:
        tensor = tensor.long()
    if tensor.is_floating_point():
        if not torch.all((tensor == 0) | (tensor == 1)):
            raise MMToxError(f"{where}: labels must be 0 (non-toxic) or 1 (toxic); got values {sorted(set(tensor.tolist()))[:5]}")
        tensor = tensor.long()
    tensor = tensor.long().cpu()
    bad = tensor[(tensor != 0) & (tensor != 1)]
    if bad.numel():
        raise MMToxError(f"{where}: labels must be 0 (non-toxic) or 1 (toxic); got {bad[0].item()}")
    return tensor


def _hash_batch(batch: Mapping, mask: torch.Tensor, labels: torch.Tensor | None) -> str:
    digest = hashlib.sha256()
    for key in sorted(batch):
        value = batch[key]
        if isinstance(value, torch.Tensor):
            digest.update(key.encode())
            digest.update(str(tuple(value.shape)).encode())
            digest.update(value.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(mask.cpu().numpy().tobytes())
    if labels is not None:
        digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


class _Recorder:
    """Hooks that pool each site's input (or output, for output sites) into a per-batch (B, M) buffer."""

    def __init__(self, sites: Sequence[NeuronSite], modules: Sequence[nn.Module], pooling: str, early_stop: bool):
        self.sites = list(sites)
        self.modules = list(modules)
        self.pooling = pooling
        self.early_stop = early_stop
        self.offsets = site_offsets(self.sites)
        self.total = sum(site.width for site in self.sites)
        self.hooks = Hooks()
        self.mask = None  # (B, T) bool
        self.counts = None  # (B,)
        self.buffer = None  # (B, M) float32 on the first site's device
        self.fired = [0] * len(self.sites)
        self.nonfinite: list[torch.Tensor | None] = [None] * len(self.sites)
        # Hooks fire in layer order, so the forward pass can stop once the last layer's sites (one, or
        # gate and up for site="gate_up_output") have all fired.
        top = max(site.layer_index for site in self.sites)
        self.last = {k for k, site in enumerate(self.sites) if site.layer_index == top}

    def __enter__(self):
        for k, (site, module) in enumerate(zip(self.sites, self.modules)):
            # an input site pools what enters the projection; an output site what leaves it
            (self.hooks.on_input if site.reads == "input" else self.hooks.on_output)(module, self._make_hook(k))
        return self

    def __exit__(self, *exc):
        self.hooks.remove()
        return False

    def start_batch(self, mask: torch.Tensor, device: torch.device):
        self.mask = mask
        self.counts = mask.sum(1)
        self.all_counted = bool(mask.all())
        self.buffer = torch.zeros(mask.shape[0], self.total, dtype=torch.float32, device=device)
        self.fired = [0] * len(self.sites)
        self.nonfinite = [None] * len(self.sites)
        self._mask_cache = {}

    def _mask_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._mask_cache.get(device)
        if cached is None:
            mask = self.mask.to(device)
            cached = (mask.unsqueeze(-1), self.counts.to(device).clamp_min(1).unsqueeze(-1).float())
            self._mask_cache[device] = cached
        return cached

    def _make_hook(self, k: int):
        site = self.sites[k]
        start = self.offsets[k]
        stop = start + site.width

        def hook(module, x):
            batch, tokens = self.mask.shape
            if x.dim() == 2 and x.shape[0] == batch * tokens:
                x = x.view(batch, tokens, -1)
            if x.dim() != 3 or x.shape[0] != batch or x.shape[1] != tokens or x.shape[2] != site.width:
                raise MMToxError(
                    f"layer {site.layer_index} ({site.module_name}) saw activations of shape {tuple(x.shape)} but the batch "
                    f"has {batch} inputs x {tokens} tokens; the model changes the sequence length internally, so "
                    "pass batches whose input_ids already hold the expanded image tokens (the model's processor does this)"
                )
            mask3, counts = self._mask_on(x.device)
            self.fired[k] += 1
            if self.pooling == "max":
                # max propagates NaN and +inf; a -inf among finite counted values is not detected.
                pooled = x.amax(dim=1) if self.all_counted else x.masked_fill(~mask3, float("-inf")).amax(dim=1)
            else:
                pooled = torch.where(mask3, x, 0).sum(dim=1, dtype=torch.float32) / counts
            bad = ~torch.isfinite(pooled).all()
            self.nonfinite[k] = bad if self.nonfinite[k] is None else (self.nonfinite[k] | bad)
            self.buffer[:, start:stop].copy_(pooled)
            if self.early_stop and k in self.last and all(self.fired[j] for j in self.last):
                raise _StopForward
            return None

        return hook

    def check(self):
        """One device sync per batch: refuse NaN/inf activations, naming the layer."""
        flags = [f for f in self.nonfinite if f is not None]
        if not flags:
            return
        any_bad = torch.stack([f.to(flags[0].device) for f in flags])
        if bool(any_bad.any()):
            for k, flag in enumerate(self.nonfinite):
                if flag is not None and bool(flag):
                    site = self.sites[k]
                    raise MMToxError(
                        f"layer {site.layer_index} ({site.module_name}) produced NaN/inf MLP activations on a calibration input; "
                        "check the model weights and dtype (try float32) and the inputs"
                    )


def _check_float16(buffer: torch.Tensor, sites: Sequence[NeuronSite], offsets: Sequence[int]) -> None:
    """Refuse pooled values that float16 cannot hold (|x| > 65504 becomes inf), naming the layer."""
    limit = torch.finfo(torch.float16).max
    over = buffer.abs().amax(0) > limit
    if bool(over.any()):
        column = int(over.nonzero()[0])
        k = max(i for i, start in enumerate(offsets) if start <= column)
        site = sites[k]
        largest = float(buffer[:, column].abs().max())
        raise MMToxError(
            f"layer {site.layer_index} ({site.module_name}) has a pooled activation of {largest:.4g}, beyond float16's "
            f"{limit:.0f}; pass pool dtype bfloat16 or float32 (--pool-dtype / calibration_pool_dtype)"
        )


def _checkpoint_manifest(model: nn.Module, sites, pooling, dtype, ignore_ids, image_ids) -> dict:
    return {
        "version": CHECKPOINT_VERSION,
        "kind": "mmtoxicqa-sgm-responses",
        "model_type": getattr(getattr(model, "config", None), "model_type", type(model).__name__),
        "sites": [s.to_dict() for s in sites],
        "pooling": pooling,
        "dtype": str(dtype).removeprefix("torch."),
        "ignore_token_ids": sorted(ignore_ids),
        "image_token_ids": sorted(image_ids),
    }


def _open_checkpoint(path: Path, manifest: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    manifest_file = path / "manifest.json"
    if manifest_file.is_file():
        try:
            existing = json.loads(manifest_file.read_text())
        except (OSError, ValueError):
            raise MMToxError(f"checkpoint {manifest_file} is unreadable; delete {path} to start over") from None
        if existing != manifest:
            changed = sorted(k for k in set(existing) | set(manifest) if existing.get(k) != manifest.get(k))
            raise MMToxError(
                f"checkpoint {path} was made with other settings ({', '.join(changed)}); delete it or pass another checkpoint_path"
            )
    else:
        write_json_atomic(manifest_file, manifest)


def _load_shard(file: Path, input_hash: str, width: int):

    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MMToxError(f"checkpoint shard {file} is unreadable ({exc}); delete it to recompute that batch") from None
    if meta.get("input_hash") != input_hash:
        raise MMToxError(
            f"checkpoint shard {file} was computed from different inputs; pass the same batches in the same order or delete {file.parent}"
        )
    if "fired" not in tensors or tensors["pooled"].shape[1] != width:
        raise MMToxError(f"checkpoint shard {file} does not match the {width} neurons being recorded; delete {file.parent}")
    return tensors


def _save_shard(file: Path, pooled: torch.Tensor, labels: torch.Tensor | None, counts: torch.Tensor, fired: torch.Tensor, input_hash: str):

    tensors = {"pooled": pooled.contiguous(), "token_counts": counts.contiguous(), "fired": fired.contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    with atomic_path(file) as tmp:
        save_file(tensors, str(tmp), metadata={"input_hash": input_hash})


def collect(
    model,
    batches: Iterable[Mapping],
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    sites: Sequence[NeuronSite] | None = None,
    layers=None,
    pooling: str = "max",
    dtype: torch.dtype = torch.float32,
    placeholder_token_ids: Sequence[int] | None = None,
    ignore_token_ids: Sequence[int] = (),
    store_device: str | torch.device = "cpu",
    checkpoint_path: str | Path | None = None,
    early_stop: bool = True,
    progress: bool = True,
    total: int | None = None,
    forward_kwargs: Mapping | None = None,
    batch_offset: int = 0,
) -> Responses:
    """Run ``model`` over ``batches`` and return every input's pooled response of every neuron.

    ``batches``: model-input dicts (``input_ids``, ``attention_mask``, plus ``pixel_values`` etc.
    as the model's processor makes them). ``labels``: 0/1 per input in batch order, or None when
    each batch carries ``toxic_label``. ``sites``: explicit sites (default: ``discover_sites(model,
    layers)``). ``dtype``: storage dtype of the pooled matrix (float32, float16 or bfloat16; pooling itself
    is computed in the activation dtype / float32). ``placeholder_token_ids``: image/video
    placeholder ids to exclude (default: from the model config); ``ignore_token_ids``: more ids
    to exclude. ``early_stop``: stop each forward pass right after
    the last site (the remaining layers and the LM head are not needed). ``batch_offset``: the index
    of the first batch in ``checkpoint_path`` (a data-parallel shard's first global batch).
    """

    if pooling not in POOLINGS:
        raise MMToxError(f"pooling={pooling!r} is not supported; use one of {', '.join(POOLINGS)}")
    if dtype not in STORE_DTYPES:
        raise MMToxError(f"dtype={dtype} is not a float dtype for the pooled matrix; use torch.float32, torch.float16 or torch.bfloat16")
    net = unwrap_model(model)
    if placeholder_token_ids is None:
        placeholder_token_ids = sorted(declared_placeholder_ids(net))
    skip_ids = sorted({int(i) for i in list(placeholder_token_ids) + list(ignore_token_ids)})
    sites = list(sites) if sites is not None else discover_sites(net, layers)
    if not sites:
        raise MMToxError("no neuron sites to record; check the layers= selection")
    modules = site_modules(net, sites)
    device = input_device(net)
    recorder = _Recorder(sites, modules, pooling, early_stop)
    # Where the first site computes: under a device map its weights may be offloaded (meta between passes).
    buffer_device = execution_device(modules[0], device)
    store_device = torch.device(store_device)

    checkpoint = Path(checkpoint_path) if checkpoint_path is not None else None
    if checkpoint is not None:
        _open_checkpoint(checkpoint, _checkpoint_manifest(net, sites, pooling, dtype, list(ignore_token_ids), list(placeholder_token_ids)))

    given_labels = None if labels is None else _as_label_tensor(labels, "labels")
    rows: list[torch.Tensor] = []
    # With labels given, N is known: fill one preallocated matrix (no concatenation copy at the end).
    matrix = None if given_labels is None else torch.empty(given_labels.numel(), recorder.total, dtype=dtype, device=store_device)
    n_batches = 0
    row_labels: list[torch.Tensor] = []
    row_counts: list[torch.Tensor] = []
    fired_batches = [0] * len(sites)
    data_digest = hashlib.sha256()
    n_seen = 0
    if total is None:
        try:
            total = len(batches)  # type: ignore[arg-type]
        except TypeError:
            total = None
    extra = dict(forward_kwargs or {})
    extra.setdefault("use_cache", False)

    with recorder, torch.inference_mode():
        for index, raw in enumerate(tqdm(batches, total=total, desc="SGM responses", unit="batch", disable=not progress)):
            if isinstance(raw, (tuple, list)) and len(raw) == 2 and isinstance(raw[0], Mapping):
                raw = {**raw[0], "toxic_label": torch.as_tensor(raw[1])}  # (batch, labels) pairs
            if not isinstance(raw, Mapping) or "input_ids" not in raw or "attention_mask" not in raw:
                raise MMToxError(
                    f"calibration batch {index} must be a dict with input_ids and attention_mask (a processor/tokenizer output); got {type(raw).__name__}"
                )
            batch = dict(raw)
            own_mask = batch.pop("token_mask", None)
            batch_labels = batch.pop("toxic_label", None)
            input_ids, attention = batch["input_ids"], batch["attention_mask"]
            size = int(input_ids.shape[0])
            if given_labels is not None:
                if batch_labels is not None:
                    raise MMToxError(f"calibration batch {index} carries toxic_label and labels= was given too; pass labels one way")
                if n_seen + size > given_labels.numel():
                    raise MMToxError(
                        f"labels has {given_labels.numel()} entries but the batches hold more inputs (batch {index} ends at {n_seen + size}); pass one label per input"
                    )
                batch_labels = given_labels[n_seen : n_seen + size]
            elif batch_labels is not None:
                batch_labels = _as_label_tensor(batch_labels, f"calibration batch {index} toxic_label")
                if batch_labels.numel() != size:
                    raise MMToxError(f"calibration batch {index} has {size} inputs but {batch_labels.numel()} toxic_label values")
            mask = text_mask(input_ids, attention, skip_ids)
            if own_mask is not None:
                if tuple(own_mask.shape) != tuple(mask.shape):
                    raise MMToxError(
                        f"calibration batch {index}: token_mask has shape {tuple(own_mask.shape)}, input_ids {tuple(mask.shape)}; make them match"
                    )
                mask &= own_mask.to(mask.device).bool()
            counts = mask.sum(1)
            if bool((counts == 0).any()):
                row = int((counts == 0).nonzero()[0])
                raise MMToxError(
                    f"calibration batch {index} input {row} has no counted text token (all padding/image placeholders); drop it or add text"
                )
            input_hash = _hash_batch(batch, mask, batch_labels)
            data_digest.update(input_hash.encode())
            shard = checkpoint / f"batch_{index + batch_offset:06d}.safetensors" if checkpoint is not None else None
            if shard is not None and shard.is_file():
                stored = _load_shard(shard, input_hash, recorder.total)
                pooled = stored["pooled"].to(device=store_device, dtype=dtype)
                fired_batches = [f + int(c) for f, c in zip(fired_batches, stored["fired"].tolist())]
            else:
                batch = {k: (v.to(device) if isinstance(v, torch.Tensor) and v.device != device else v) for k, v in batch.items()}
                recorder.start_batch(mask.to(buffer_device), buffer_device)
                try:
                    net(**batch, **extra)
                except _StopForward:
                    pass
                recorder.check()
                twice = [sites[k].module_name for k, f in enumerate(recorder.fired) if f > 1]
                if twice:
                    raise MMToxError(
                        f"module {twice[0]} ran {max(recorder.fired)} times in one forward pass; SGM expects each MLP once per pass (pass sites= that exclude shared modules)"
                    )
                fired_batches = [f + c for f, c in zip(fired_batches, recorder.fired)]
                pooled = recorder.buffer.to(device=store_device, dtype=dtype)
                if dtype == torch.float16:
                    _check_float16(recorder.buffer, sites, recorder.offsets)
                if shard is not None:
                    fired = torch.tensor(recorder.fired, dtype=torch.int64)
                    _save_shard(shard, pooled.cpu(), batch_labels, counts.cpu(), fired, input_hash)
            if matrix is not None:
                matrix[n_seen : n_seen + size].copy_(pooled)
            else:
                rows.append(pooled)
            n_batches += 1
            row_counts.append(counts.cpu())
            if batch_labels is not None:
                row_labels.append(batch_labels)
            n_seen += size

    if n_seen == 0:
        raise MMToxError("no calibration batches were given; pass at least one batch per class")
    partial = [sites[k].module_name for k, f in enumerate(fired_batches) if 0 < f < n_batches]
    if partial:
        raise MMToxError(
            f"module {partial[0]} ran on only some calibration batches (e.g. Mllama cross-attention layers skip inputs without images); "
            "calibrate on batches that all have images, or restrict layers="
        )
    not_fired = [sites[k].module_name for k, f in enumerate(fired_batches) if f == 0]
    if not_fired:
        log.warning("SGM: %d site(s) never ran (e.g. %s); their neurons get AUROC 0.5 and are left untouched", len(not_fired), not_fired[0])
    if given_labels is not None and given_labels.numel() != n_seen:
        raise MMToxError(f"labels has {given_labels.numel()} entries but the batches hold {n_seen} inputs; pass one label per input")
    if given_labels is None and row_labels and len(row_labels) != n_batches:
        raise MMToxError("some calibration batches carry toxic_label and others do not; label every batch or pass labels=")
    all_labels = torch.cat(row_labels) if row_labels else None
    data_digest.update(f"n={n_seen}".encode())
    return Responses(
        sites=sites,
        pooled=matrix if matrix is not None else torch.cat(rows, 0),
        labels=all_labels,
        token_counts=torch.cat(row_counts),
        pooling=pooling,
        data_hash=data_digest.hexdigest(),
        not_fired=not_fired,
    )
