"""Mean-difference steering vectors, accumulated over calibration batches by any pass that runs them.

A separate module so that both the ``steer`` method and SGM's calibration pass (which computes the
vector on the side: collect once, derive all) can use it without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from mmtoxicqa.core.atomic import atomic_path
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.sgm import find_decoder_layers

if TYPE_CHECKING:
    from mmtoxicqa.modeling.loading import LoadedModel


class SteeringAccumulator:
    """Per-class sums of one decoder layer's output, each input mean-pooled over its counted tokens.

    It rides along any forward pass over the calibration batches (its own, or SGM's collection:
    :meth:`follow` wraps the batch iterator), so one pass over the items can feed both."""

    def __init__(self, layers, layer: int, labels):
        self.layer = layer
        self.layer_module = layers[layer]
        self.labels = [int(v) for v in labels]
        self.sums: dict[int, torch.Tensor | None] = {0: None, 1: None}
        self.counts = {0: 0, 1: 0}
        self.missed = 0  # batches whose forward pass did not reach the layer (e.g. resumed from a checkpoint)
        self._hidden = None
        self._seen = 0

    def grab(self, module, hidden):
        self._hidden = hidden.detach().float()

    def add(self, mask: torch.Tensor) -> None:
        """Fold in the batch whose forward pass just ran (its ``token_mask``)."""
        size = int(mask.shape[0])
        labels = self.labels[self._seen : self._seen + size]
        self._seen += size
        if self._hidden is None:
            self.missed += 1
            return
        weights = mask.to(self._hidden.device).float().unsqueeze(-1)
        pooled = (self._hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        self._hidden = None
        for row, label in zip(pooled, labels):
            self.sums[label] = row if self.sums[label] is None else self.sums[label] + row
            self.counts[label] += 1

    def follow(self, batches):
        """Yield ``batches`` unchanged, folding each one in after the consumer's forward pass ran."""
        pending = None
        for batch in batches:
            if pending is not None:
                self.add(pending)
            pending = batch["token_mask"]
            yield batch
        if pending is not None:
            self.add(pending)

    @property
    def complete(self) -> bool:
        return not self.missed and self._seen == len(self.labels)

    def vector(self) -> torch.Tensor:
        if not self.counts[0] or not self.counts[1]:
            raise MMToxError(f"steering needs both classes in the calibration data; got toxic={self.counts[1]}, non-toxic={self.counts[0]}")
        return (self.sums[1] / self.counts[1] - self.sums[0] / self.counts[0]).cpu()


def save_steering_vector(path, vector: torch.Tensor, layer: int, model_id: str, items: int) -> None:

    with atomic_path(path) as tmp:
        meta = {"layer": str(layer), "model_id": model_id, "calibration_items": str(items)}
        save_file({"vector": vector.contiguous()}, str(tmp), metadata=meta)


def default_steer_layer(loaded: LoadedModel) -> int:

    return len(find_decoder_layers(loaded.model)[1]) // 2
