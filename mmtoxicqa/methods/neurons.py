"""Activation interventions: SGM and its relatives (AurA, Det0, Damp) and mean-difference steering.

All of them are calibrated on the benchmark's ``calibration`` split (or ``calibration_data=``)
and act through forward hooks that are active only while a generation runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch

from mmtoxicqa.errors import MMToxError
from mmtoxicqa.methods import register
from mmtoxicqa.methods.base import Method, Part
from mmtoxicqa.modeling import LoadedModel

NEURON_SLOT = "neuron dampening (sgm / aura / det0 / damp)"


def _glasses(loaded: LoadedModel, glasses: str | None, *, text_only: bool, pooling: str, layers, calibration_data, calibration_limit,
             tokens: str = "text"):
    from mmtoxicqa.calibration import fit
    from mmtoxicqa.sgm import Glasses

    if glasses:
        path = Path(glasses).expanduser()
        if not path.is_file():
            raise MMToxError(f"glasses={glasses!r} not found; make them with `mmtoxicqa calibrate --out {glasses}` or omit glasses= to calibrate now")
        return Glasses.load(path, loaded.model)
    limit = None if calibration_limit in (None, "", "None") else int(calibration_limit)
    return fit(loaded, calibration_data, text_only=text_only, pooling=pooling, layers=layers, limit=limit, tokens=tokens)


def _wear_part(loaded: LoadedModel, glasses, mode: str, owner: str) -> Part:
    from mmtoxicqa.sgm import wear

    if mode not in ("hooks", "fused"):
        raise MMToxError(f"{owner}_mode={mode!r} must be 'hooks' or 'fused'")
    return Part("intervention", lambda: wear(loaded.model, glasses, mode=mode), slot=NEURON_SLOT, owner=owner)


def _strength(name: str, value, low: float = 0.0, high: float = 1.0) -> float:
    from mmtoxicqa.methods.catalog import _strength as check

    return check(name, value, low, high)


@register("sgm")
def sgm(loaded: LoadedModel, glasses: str | None = None, sgm_strength: float = 1.0, sgm_select: str | None = None, sgm_mode: str = "hooks",
        sgm_pooling: str = "max", sgm_layers: str | None = None, sgm_tokens: str = "text", calibration_data: str | None = None,
        calibration_limit: int | None = None) -> Method:
    """SGM, safety glasses for toxic neurons (this project; builds on AurA, Suau et al. 2024): language-decoder
    MLP neurons rated by AUROC on fused image+text calibration inputs, each scaled by
    alpha = 1 - s * (2 AUROC - 1) during every forward pass."""
    strength = _strength("sgm_strength", sgm_strength)
    if strength == 0:
        return Method("sgm", loaded)
    fitted = _glasses(loaded, glasses, text_only=False, pooling=sgm_pooling, layers=sgm_layers, calibration_data=calibration_data,
                      calibration_limit=calibration_limit, tokens=sgm_tokens)
    fitted = fitted.with_options(strength=strength, select=sgm_select)
    method = Method("sgm", loaded, [_wear_part(loaded, fitted, sgm_mode, "sgm")])
    method.glasses = fitted
    return method


@register("aura")
def aura(loaded: LoadedModel, aura_strength: float = 1.0, aura_mode: str = "hooks", calibration_data: str | None = None, calibration_limit: int | None = None) -> Method:
    """AurA (Suau et al. 2024, "Whispering Experts"): SGM's machinery calibrated on the text alone
    (images dropped): the unimodal ablation."""
    strength = _strength("aura_strength", aura_strength)
    if strength == 0:
        return Method("aura", loaded)
    fitted = _glasses(loaded, None, text_only=True, pooling="max", layers=None, calibration_data=calibration_data, calibration_limit=calibration_limit)
    method = Method("aura", loaded, [_wear_part(loaded, fitted.with_options(strength=strength), aura_mode, "aura")])
    method.glasses = fitted
    return method


def _fixed_alpha(fitted, top_k: int, factor: float):
    """Glasses whose top-k AUROC neurons get ``factor`` and every other neuron 1."""
    from mmtoxicqa.sgm.glasses import Glasses, selection_mask

    mask = selection_mask(fitted.auroc_all(), {"top_k": top_k})
    alpha = torch.where(mask, torch.full_like(fitted.alpha_all(), factor), torch.ones_like(fitted.alpha_all()))
    widths = [s.width for s in fitted.sites]
    return Glasses(fitted.sites, fitted.auroc, list(alpha.split(widths)), dict(fitted.meta, fixed_factor=factor, top_k=top_k))


@register("det0")
def det0(loaded: LoadedModel, det0_top_k: int = 200, calibration_data: str | None = None, calibration_limit: int | None = None) -> Method:
    """Det0 (Suau et al. 2024's baseline, after Suau et al. 2022 "Self-conditioning"): the top-k
    expert neurons by AUROC are set to zero."""
    k = int(det0_top_k)
    if k < 0:
        raise MMToxError(f"det0_top_k={det0_top_k!r} must be >= 0")
    if k == 0:
        return Method("det0", loaded)
    fitted = _glasses(loaded, None, text_only=False, pooling="max", layers=None, calibration_data=calibration_data, calibration_limit=calibration_limit)
    return Method("det0", loaded, [_wear_part(loaded, _fixed_alpha(fitted, k, 0.0), "hooks", "det0")])


@register("damp")
def damp(loaded: LoadedModel, damp_top_k: int = 200, damp_factor: float = 0.5, calibration_data: str | None = None, calibration_limit: int | None = None) -> Method:
    """Damp (Suau et al. 2024's baseline): the top-k expert neurons by AUROC are multiplied by a
    fixed factor (factor 1 = off)."""
    factor = _strength("damp_factor", damp_factor)
    k = int(damp_top_k)
    if k < 0:
        raise MMToxError(f"damp_top_k={damp_top_k!r} must be >= 0")
    if k == 0 or factor == 1.0:
        return Method("damp", loaded)
    fitted = _glasses(loaded, None, text_only=False, pooling="max", layers=None, calibration_data=calibration_data, calibration_limit=calibration_limit)
    return Method("damp", loaded, [_wear_part(loaded, _fixed_alpha(fitted, k, factor), "hooks", "damp")])


# ----------------------------------------------------------------------------- steering
def _layer_output_hook(vector: torch.Tensor, strength: float):
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        shifted = hidden - strength * vector.to(dtype=hidden.dtype, device=hidden.device)
        if isinstance(output, tuple):
            return (shifted,) + tuple(output[1:])
        return shifted

    return hook


def steering_vector(loaded: LoadedModel, layer: int, calibration_data=None, calibration_limit=None, batch_size: int = 8) -> torch.Tensor:
    """Mean residual-stream difference (toxic - non-toxic) after decoder layer ``layer``, each input
    mean-pooled over its counted text tokens. Cached by model + data + layer."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    from mmtoxicqa.atomic import atomic_path
    from mmtoxicqa.calibration import calibration_items, glasses_cache_path, items_hash, iter_batches
    from mmtoxicqa.sgm import find_decoder_layers

    items = calibration_items(calibration_data, limit=None if calibration_limit in (None, "") else int(calibration_limit))
    cache = glasses_cache_path(loaded.model_id, items_hash(items, False), {"steer_layer": layer}).with_suffix(".steer.safetensors")
    if cache.is_file():
        return load_file(str(cache))["vector"]
    _, layers = find_decoder_layers(loaded.model)
    if not 0 <= layer < len(layers):
        raise MMToxError(f"steer_layer={layer} is outside the model's {len(layers)} decoder layers (0..{len(layers) - 1})")
    sums = {0: None, 1: None}
    counts = {0: 0, 1: 0}
    captured = {}

    def grab(module, args, output):
        captured["h"] = (output[0] if isinstance(output, tuple) else output).detach().float()

    handle = layers[layer].register_forward_hook(grab)
    labels = [int(i["toxic_label"]) for i in items]
    try:
        with torch.inference_mode():
            batches = zip(range(0, len(items), batch_size), iter_batches(loaded, items, batch_size))
            for start, batch in tqdm(batches, total=(len(items) + batch_size - 1) // batch_size, desc=f"steering vector (layer {layer})", unit="batch"):
                mask = batch.pop("token_mask").float().unsqueeze(-1)
                loaded.model(**batch, use_cache=False)
                pooled = (captured["h"] * mask).sum(1) / mask.sum(1).clamp(min=1)
                for row, label in zip(pooled, labels[start: start + batch_size]):
                    sums[label] = row if sums[label] is None else sums[label] + row
                    counts[label] += 1
    finally:
        handle.remove()
    if not counts[0] or not counts[1]:
        raise MMToxError(f"steering needs both classes in the calibration data; got toxic={counts[1]}, non-toxic={counts[0]}")
    vector = (sums[1] / counts[1] - sums[0] / counts[0]).cpu()
    with atomic_path(cache) as tmp:
        save_file({"vector": vector.contiguous()}, str(tmp), metadata={"layer": str(layer), "model_id": loaded.model_id})
    return vector


@register("steer")
def steer(loaded: LoadedModel, steer_layer: int | None = None, steer_strength: float = 1.0, calibration_data: str | None = None,
          calibration_limit: int | None = None) -> Method:
    """Mean-difference activation steering (as in Turner et al. 2023 / Li et al. 2023's ITI, simplified):
    subtract strength x (mean toxic - mean non-toxic residual) after one decoder layer, at every position."""
    from mmtoxicqa.sgm import find_decoder_layers

    strength = _strength("steer_strength", steer_strength, 0.0, 10.0)
    if strength == 0:
        return Method("steer", loaded)
    _, layers = find_decoder_layers(loaded.model)
    layer = len(layers) // 2 if steer_layer in (None, "", "None") else int(steer_layer)
    vector = steering_vector(loaded, layer, calibration_data, calibration_limit)

    @contextlib.contextmanager
    def active():
        handle = layers[layer].register_forward_hook(_layer_output_hook(vector, strength))
        try:
            yield
        finally:
            handle.remove()

    method = Method("steer", loaded, [Part("intervention", active, slot=f"residual steering", owner="steer")])
    method.steering = {"layer": layer, "norm": float(vector.norm())}
    return method
