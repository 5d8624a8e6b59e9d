"""SGM in one call: discover neurons, collect pooled responses, rate them by AUROC, make glasses."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

import mmtoxicqa
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.discovery import discover_sites, find_decoder_layers, unwrap_model
from mmtoxicqa.modeling.placement import input_device
from mmtoxicqa.sgm.auroc import MIN_PER_CLASS, auroc, aurocs, check_labels
from mmtoxicqa.sgm.collect import collect
from mmtoxicqa.sgm.glasses import Glasses, check_strength, parse_select


def _layers_repr(layers):
    if layers is None or isinstance(layers, (int, str)):
        return layers
    if isinstance(layers, slice):
        return f"{'' if layers.start is None else layers.start}:{'' if layers.stop is None else layers.stop}" + (
            f":{layers.step}" if layers.step else ""
        )
    return list(layers)


def fit_glasses(
    model,
    batches: Iterable[Mapping],
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    pooling: str = "max",
    layers=None,
    strength: float = 1.0,
    select=None,
    dtype: torch.dtype = torch.float32,
    model_id: str | None = None,
    data_hash: str | None = None,
    ignore_token_ids: Sequence[int] = (),
    placeholder_token_ids: Sequence[int] | None = None,
    checkpoint_path: str | Path | None = None,
    auroc_device: str | torch.device | None = None,
    min_per_class: int = MIN_PER_CLASS,
    progress: bool = True,
    total: int | None = None,
    placebo_seed: int | None = 0,
    site: str = "down_input",
    auroc_chunk: int | None = None,
) -> Glasses:
    """Fit SGM glasses on labelled calibration batches.

    ``model``: a Hugging Face model (or mmtoxicqa ``LoadedModel``). ``batches``: model-input dicts
    (``input_ids``, ``attention_mask``, and ``pixel_values`` etc. for multimodal inputs).
    ``labels``: 1 = toxic, 0 = non-toxic per input in batch order, or None when each batch
    carries ``toxic_label``. ``pooling``: "max" | "mean" over counted tokens. ``layers``: restrict
    to some decoder layers (None = all; int, range/slice, list, or "a:b"). ``strength`` in [0, 1].
    ``select``: None (all AUROC > 0.5) | {"top_k": k} | {"top_fraction": f} | {"min_auroc": t}.
    ``dtype``: storage of the pooled responses (float32 | float16 | bfloat16; recorded as
    ``pool_dtype``). ``data_hash``: recorded in the
    glasses (default: a hash of the batches' tensors and labels). ``checkpoint_path``: a directory
    to resume calibration from. ``auroc_device``: where AUROCs are computed (default: the model's
    device), ``auroc_chunk`` columns at a time: the pooled matrix stays in CPU memory and only one
    block at a time is copied there. ``placebo_seed``: also rate the neurons under labels permuted with this seed (the
    placebo's ranking, :meth:`Glasses.placebo`); None skips it. ``site``: "down_input" (the input of each
    MLP output projection) or "gate_up_output" (the outputs of its input projections, AurA's placement).
    """
    strength = check_strength(strength)
    select = parse_select(select)
    net = unwrap_model(model)
    sites = discover_sites(net, layers, site)
    if labels is not None:
        check_labels(labels, min_per_class=min_per_class)  # fail before the forward passes
    responses = collect(
        model,
        batches,
        labels,
        sites=sites,
        pooling=pooling,
        dtype=dtype,
        placeholder_token_ids=placeholder_token_ids,
        ignore_token_ids=ignore_token_ids,
        checkpoint_path=checkpoint_path,
        progress=progress,
        total=total,
    )
    return rate_responses(
        model,
        responses,
        layers=layers,
        strength=strength,
        select=select,
        dtype=dtype,
        model_id=model_id,
        data_hash=data_hash,
        ignore_token_ids=ignore_token_ids,
        placeholder_token_ids=placeholder_token_ids,
        auroc_device=auroc_device,
        auroc_chunk=auroc_chunk,
        min_per_class=min_per_class,
        placebo_seed=placebo_seed,
        site=site,
    )


def rate_responses(
    model,
    responses,
    *,
    layers=None,
    strength: float = 1.0,
    select=None,
    dtype: torch.dtype = torch.float32,
    model_id: str | None = None,
    data_hash: str | None = None,
    ignore_token_ids: Sequence[int] = (),
    placeholder_token_ids: Sequence[int] | None = None,
    auroc_device: str | torch.device | None = None,
    auroc_chunk: int | None = None,
    min_per_class: int = MIN_PER_CLASS,
    placebo_seed: int | None = 0,
    site: str = "down_input",
) -> Glasses:
    """The second half of :func:`fit_glasses`: AUROCs (real and placebo labels, one sort per block),
    alphas and metadata from collected :class:`~mmtoxicqa.sgm.collect.Responses` of ``model``
    (also what rank 0 runs on the rows every process gathered, :mod:`mmtoxicqa.sgm.shards`)."""
    net = unwrap_model(model)
    sites = responses.sites
    if responses.labels is None:
        raise MMToxError("no labels: pass labels= (1 toxic / 0 non-toxic per input) or a toxic_label entry in every batch")
    check_labels(responses.labels, min_per_class=min_per_class)
    if auroc_device is None:  # where the model computes (a split model's parameters may be offloaded to meta)
        auroc_device = input_device(net)
    label_sets = [responses.labels]
    if placebo_seed is not None:
        permutation = torch.randperm(responses.labels.numel(), generator=torch.Generator().manual_seed(int(placebo_seed)))
        label_sets.append(responses.labels[permutation])
    # The pooled matrix stays where collect put it (CPU); only one block of columns at a time moves to auroc_device.
    rated = aurocs(responses.pooled, label_sets, chunk_size=auroc_chunk, device=auroc_device, min_per_class=min_per_class)
    auroc_all = rated[0]
    placebo_auroc = list(rated[1].split([s.width for s in sites])) if placebo_seed is not None else None
    config = getattr(net, "config", None)
    if model_id is None:
        model_id = getattr(model, "model_id", None) or getattr(config, "_name_or_path", None) or None

    pool_dtype = str(dtype).removeprefix("torch.")
    meta = {
        "model_id": model_id,
        "model_type": getattr(config, "model_type", type(net).__name__),
        "architecture": type(net).__name__,
        "decoder_layers": len(find_decoder_layers(net)[1]),
        "pooling": responses.pooling,
        "site": site,
        "layers": _layers_repr(layers),
        "dtype": pool_dtype,  # kept for readers of older files: the pooled matrix's dtype, as pool_dtype
        "pool_dtype": pool_dtype,
        "data_hash": data_hash or responses.data_hash,
        "class_sizes": responses.class_sizes(),
        "n_inputs": int(responses.labels.numel()),
        "ignore_token_ids": sorted(int(i) for i in ignore_token_ids),
        "placeholder_token_ids": None if placeholder_token_ids is None else sorted(int(i) for i in placeholder_token_ids),
        "sites_not_run": responses.not_fired,
        "min_per_class": min_per_class,
        "placebo_seed": None if placebo_seed is None else int(placebo_seed),
        "mmtoxicqa_version": mmtoxicqa.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return Glasses.from_auroc(sites, auroc_all, strength=strength, select=select, meta=meta, placebo_auroc=placebo_auroc)


def glasses_from_responses(
    responses, *, strength: float = 1.0, select=None, meta: dict | None = None, min_per_class: int = MIN_PER_CLASS
) -> Glasses:
    """Glasses from already collected :class:`~mmtoxicqa.sgm.collect.Responses` (e.g. to sweep options)."""
    if responses.labels is None:
        raise MMToxError("these responses have no labels; collect them with labels= or toxic_label batches")
    auroc_all = auroc(responses.pooled, responses.labels, min_per_class=min_per_class).cpu()
    meta = dict(meta or {})
    meta.setdefault("pooling", responses.pooling)
    meta.setdefault("data_hash", responses.data_hash)
    meta.setdefault("class_sizes", responses.class_sizes())
    return Glasses.from_auroc(responses.sites, auroc_all, strength=strength, select=select, meta=meta)
