"""Mean-difference activation steering: shift one decoder layer's output away from toxic inputs.

The vector is the mean residual-stream difference (toxic - non-toxic) after decoder layer
``steer_layer``, each calibration input mean-pooled over its counted text positions
(mmtoxicqa.modeling.positions); at inference ``strength * vector`` is subtracted at every position.
"""

from __future__ import annotations

import contextlib

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.registry import register_method
from mmtoxicqa.methods.base import Method, Part, check_count, check_number
from mmtoxicqa.modeling.hooks import Hooks
from mmtoxicqa.modeling.loading import LoadedModel
from mmtoxicqa.sgm import find_decoder_layers
from mmtoxicqa.sgm.calibration import (
    calibrate,
    calibration_items,
    glasses_cache_path,
    items_hash,
    iter_batches,
    sgm_options,
    steering_cache_path,
)
from mmtoxicqa.sgm.steering_vectors import SteeringAccumulator, default_steer_layer, save_steering_vector


def steering_vector(loaded: LoadedModel, layer: int, calibration_data=None, calibration_limit=None, batch_size: int = 8) -> torch.Tensor:
    """Mean residual-stream difference (toxic - non-toxic) after decoder layer ``layer``, each input
    mean-pooled over its counted text tokens. Cached by model + data + layer. When SGM's default
    glasses for the same items are not cached yet, both come from one pass (``calibrate``)."""

    limit = check_count("calibration_limit", calibration_limit, low=1, allow_none=True)
    items = calibration_items(calibration_data, limit=limit)
    data_hash = items_hash(items, False)
    cache = steering_cache_path(loaded.model_id, data_hash, {"steer_layer": layer})
    if cache.is_file():
        return load_file(str(cache))["vector"]
    _, layers = find_decoder_layers(loaded.model)
    if not 0 <= layer < len(layers):
        raise MMToxError(f"steer_layer={layer} is outside the model's {len(layers)} decoder layers (0..{len(layers) - 1})")
    if not glasses_cache_path(loaded.model_id, data_hash, sgm_options()).is_file():
        calibrate(loaded, calibration_data, limit=limit, batch_size=batch_size, steer_layer=layer)  # one pass: glasses + this vector
        if cache.is_file():
            return load_file(str(cache))["vector"]
    acc = SteeringAccumulator(layers, layer, [int(i["toxic_label"]) for i in items])
    with Hooks() as hooks, torch.inference_mode():
        hooks.on_output(layers[layer], acc.grab)
        total = (len(items) + batch_size - 1) // batch_size
        for batch in tqdm(
            acc.follow(iter_batches(loaded, items, batch_size)), total=total, desc=f"steering vector (layer {layer})", unit="batch"
        ):
            batch = {k: v for k, v in batch.items() if k != "token_mask"}
            loaded.model(**batch, use_cache=False)
    vector = acc.vector()
    save_steering_vector(cache, vector, layer, loaded.model_id, len(items))
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

    strength = check_number("steer_strength", steer_strength, 0.0, 10.0)
    chosen = check_count("steer_layer", steer_layer, allow_none=True)
    check_count("calibration_limit", calibration_limit, low=1, allow_none=True)
    if strength == 0:
        return Method("steer", loaded)
    _, layers = find_decoder_layers(loaded.model)
    layer = default_steer_layer(loaded) if chosen is None else chosen
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
