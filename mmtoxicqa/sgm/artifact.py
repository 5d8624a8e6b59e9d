"""The glasses file: one safetensors file, no pickle.

Tensors (one pair per site; ``P`` = ``layers.{i}`` with ``i`` the decoder layer index for the default
``down_input`` sites, ``layers.{i}.{module}`` (e.g. ``layers.3.gate_proj``) for ``gate_up_output`` sites):

* ``P.alpha``  float32 (width,)  dampening factor of each neuron (1 = untouched)
* ``P.auroc``  float64 (width,)  each neuron's AUROC toxic vs non-toxic
* ``P.placebo_auroc`` float64 (width,), optional: the AUROC of the same pooled responses
  under permuted labels (seed ``meta.placebo_seed``): the ranking a placebo wears (``Glasses.placebo``)

Header metadata (safetensors ``__metadata__``, all strings):

* ``format`` = ``mmtoxicqa-sgm-glasses``, ``format_version`` = ``1``
* ``mmtoxicqa_version``: the library version that wrote it
* ``sites``: JSON list of ``{layer_index, module_name, width}`` in layer order
* ``meta``: JSON object: model_id, model_type, pooling, strength, select, layers, dtype,
  data_hash, class_sizes, n_inputs, placeholder/ignored token ids, created (UTC ISO time)

Writes are atomic (temporary file + rename). Reading refuses, in one line, anything that
is not such a file (truncated, another format, missing tensors, wrong widths).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import mmtoxicqa
from mmtoxicqa.core.atomic import atomic_path
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.discovery import NeuronSite
from mmtoxicqa.sgm.auroc import auroc_problem

FORMAT = "mmtoxicqa-sgm-glasses"
FORMAT_VERSION = "1"


def _prefix(site: NeuronSite) -> str:
    if site.reads == "input":
        return f"layers.{site.layer_index}"
    return f"layers.{site.layer_index}.{site.module_name.rsplit('.', 1)[-1]}"


def _tensor_names(site: NeuronSite) -> tuple[str, str]:
    return f"{_prefix(site)}.alpha", f"{_prefix(site)}.auroc"


def save_glasses(glasses, path) -> Path:
    """Write ``glasses`` to ``path`` (a ``.safetensors`` file) atomically; returns the path."""

    path = Path(path)
    tensors = {}
    for site, auroc, alpha in zip(glasses.sites, glasses.auroc, glasses.alpha):
        alpha_key, auroc_key = _tensor_names(site)
        tensors[alpha_key] = alpha.detach().to(torch.float32).cpu().contiguous()
        tensors[auroc_key] = auroc.detach().to(torch.float64).cpu().contiguous()
    for site, placebo in zip(glasses.sites, glasses.placebo_auroc or ()):
        tensors[f"{_prefix(site)}.placebo_auroc"] = placebo.detach().to(torch.float64).cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mmtoxicqa_version": mmtoxicqa.__version__,
        "sites": json.dumps([s.to_dict() for s in glasses.sites]),
        "meta": json.dumps(glasses.meta, sort_keys=True, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _bad(path: Path, why: str) -> MMToxError:
    return MMToxError(
        f"{path} is not a usable SGM glasses file ({why}); re-create it with fit_glasses(...).save(path) or `mmtoxicqa calibrate`"
    )


def read_glasses(path) -> tuple[list[NeuronSite], list[torch.Tensor], list[torch.Tensor], dict, list[torch.Tensor] | None]:
    """Read a glasses file written by :func:`save_glasses`: ``(sites, aurocs, alphas, meta)``.

    Returns the parts, not a :class:`~mmtoxicqa.sgm.glasses.Glasses`, so this module does not
    import the class that imports it (``Glasses.load`` assembles them)."""

    path = Path(path)
    if not path.is_file():
        raise MMToxError(f"glasses file {path} does not exist; pass the path of a .safetensors file written by Glasses.save()")
    size = path.stat().st_size
    if size < 8:
        raise _bad(path, f"only {size} bytes")
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
    if header_len <= 0 or header_len > size - 8:
        raise _bad(path, "not a safetensors file or truncated header")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise _bad(path, f"format is {metadata.get('format')!r}, expected {FORMAT!r}")
            if metadata.get("format_version") != FORMAT_VERSION:
                raise _bad(
                    path, f"format_version {metadata.get('format_version')!r} is not supported by this mmtoxicqa (reads {FORMAT_VERSION})"
                )
            try:
                sites = [NeuronSite.from_dict(d) for d in json.loads(metadata["sites"])]
                meta = json.loads(metadata.get("meta", "{}"))
            except (KeyError, ValueError, TypeError) as exc:
                raise _bad(path, f"broken header metadata: {type(exc).__name__}") from None
            keys = set(handle.keys())
            alphas, aurocs, placebo = [], [], []
            for site in sites:
                alpha_key, auroc_key = _tensor_names(site)
                if alpha_key not in keys or auroc_key not in keys:
                    raise _bad(path, f"tensors for layer {site.layer_index} are missing")
                alpha = handle.get_tensor(alpha_key)
                auroc = handle.get_tensor(auroc_key)
                if alpha.shape != (site.width,) or auroc.shape != (site.width,):
                    raise _bad(path, f"layer {site.layer_index} tensors do not have the recorded width {site.width}")
                alphas.append(alpha.to(torch.float32))
                aurocs.append(auroc.to(torch.float64))
                placebo_key = f"{_prefix(site)}.placebo_auroc"
                if placebo_key in keys:
                    placebo.append(handle.get_tensor(placebo_key).to(torch.float64))
    except SafetensorError as exc:
        raise _bad(path, f"safetensors: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise _bad(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    for a in alphas:
        if not torch.isfinite(a).all() or (a < 0).any() or (a > 1).any():
            raise _bad(path, "alpha values outside [0, 1]")
    for site, a in zip(sites, aurocs):
        problem = auroc_problem(a)
        if problem:
            raise _bad(path, f"layer {site.layer_index}: {problem}")
    if placebo and len(placebo) != len(sites):
        raise _bad(path, "placebo AUROCs are missing for some layers")
    return sites, aurocs, alphas, meta, placebo or None
