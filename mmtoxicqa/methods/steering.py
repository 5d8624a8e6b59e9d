"""Mean-difference activation steering: shift one decoder layer's output away from toxic inputs.

The vector is the mean residual-stream difference (toxic - non-toxic) after decoder layer
``steer_layer``, each calibration input mean-pooled over its counted text positions
(mmtoxicqa.positions); at inference ``strength * vector`` is subtracted at every position.
"""

from __future__ import annotations

import contextlib

import torch

from mmtoxicqa.errors import MMToxError
from mmtoxicqa.hooks import Hooks
from mmtoxicqa.methods.base import Method, Part, check_count, check_number
from mmtoxicqa.modeling import LoadedModel
from mmtoxicqa.registry import register_method


def steering_vector(loaded: LoadedModel, layer: int, calibration_data=None, calibration_limit=None, batch_size: int = 8) -> torch.Tensor:
    """Mean residual-stream difference (toxic - non-toxic) after decoder layer ``layer``, each input
    mean-pooled over its counted text tokens. Cached by model + data + layer."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    from mmtoxicqa.atomic import atomic_path
    from mmtoxicqa.calibration import calibration_items, items_hash, iter_batches, steering_cache_path
    from mmtoxicqa.sgm import find_decoder_layers

    items = calibration_items(calibration_data, limit=check_count("calibration_limit", calibration_limit, low=1, allow_none=True))
    cache = steering_cache_path(loaded.model_id, items_hash(items, False), {"steer_layer": layer})
    if cache.is_file():
        return load_file(str(cache))["vector"]
    _, layers = find_decoder_layers(loaded.model)
    if not 0 <= layer < len(layers):
        raise MMToxError(f"steer_layer={layer} is outside the model's {len(layers)} decoder layers (0..{len(layers) - 1})")
    sums = {0: None, 1: None}
    counts = {0: 0, 1: 0}
    captured = {}

    def grab(module, hidden):
        captured["h"] = hidden.detach().float()

    labels = [int(i["toxic_label"]) for i in items]
    with Hooks() as hooks, torch.inference_mode():
        hooks.on_output(layers[layer], grab)
        batches = zip(range(0, len(items), batch_size), iter_batches(loaded, items, batch_size))
        total = (len(items) + batch_size - 1) // batch_size
        for start, batch in tqdm(batches, total=total, desc=f"steering vector (layer {layer})", unit="batch"):
            mask = batch.pop("token_mask").float().unsqueeze(-1)
            loaded.model(**batch, use_cache=False)
            pooled = (captured["h"] * mask).sum(1) / mask.sum(1).clamp(min=1)
            for row, label in zip(pooled, labels[start : start + batch_size]):
                sums[label] = row if sums[label] is None else sums[label] + row
                counts[label] += 1
    if not counts[0] or not counts[1]:
        raise MMToxError(f"steering needs both classes in the calibration data; got toxic={counts[1]}, non-toxic={counts[0]}")
    vector = (sums[1] / counts[1] - sums[0] / counts[0]).cpu()
    with atomic_path(cache) as tmp:
        save_file({"vector": vector.contiguous()}, str(tmp), metadata={"layer": str(layer), "model_id": loaded.model_id})
    return vector


@register_method("steer", slots=("residual steering",))
def steer(
    loaded: LoadedModel,
    steer_layer: int | None = None,
    steer_strength: float = 1.0,
    calibration_data: str | None = None,
    calibration_limit: int | None = None,
) -> Method:
    """Mean-difference activation steering (as in Turner et al. 2023 / Li et al. 2023's ITI, simplified):
    subtract strength x (mean toxic - mean non-toxic residual) after one decoder layer, at every position."""
    from mmtoxicqa.sgm import find_decoder_layers

    strength = check_number("steer_strength", steer_strength, 0.0, 10.0)
    chosen = check_count("steer_layer", steer_layer, allow_none=True)
    check_count("calibration_limit", calibration_limit, low=1, allow_none=True)
    if strength == 0:
        return Method("steer", loaded)
    _, layers = find_decoder_layers(loaded.model)
    layer = len(layers) // 2 if chosen is None else chosen
    vector = steering_vector(loaded, layer, calibration_data, calibration_limit)

    def shift(module, hidden):
        return hidden - strength * vector.to(dtype=hidden.dtype, device=hidden.device)

    @contextlib.contextmanager
    def active():
        with Hooks() as hooks:
            hooks.on_output(layers[layer], shift)
            yield

    method = Method("steer", loaded, [Part("intervention", active, slot="residual steering", owner="steer")])
    method.steering = {"layer": layer, "norm": float(vector.norm())}
    return method
