"""Wearing the glasses: every forward pass (prompt and each generated token) sees ``alpha * activation``.

Two modes, mathematically identical (``W (alpha * x) == (W diag(alpha)) x``):

* ``hooks`` (default): a forward pre-hook multiplies the input of each site's output
  projection by alpha (for ``gate_up_output`` sites, a forward hook multiplies the output of the
  gate/up projection). No parameter is touched; removing the hooks restores the model.
* ``fused``: alpha is folded into the projection weight's input columns
  (``W[:, j] *= alpha_j``; for GPT-2's ``Conv1D``, whose weight is (in, out), rows); for output sites
  into its rows and its bias (``W[j, :] *= alpha_j``, ``b[j] *= alpha_j``). Zero
  overhead at inference. The original values of the changed columns are kept and copied
  back on removal, so the weights are restored bit for bit.

Only layers with some alpha < 1 are touched. Results of the two modes agree to floating-point
rounding (the product is formed in a different order), not bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.discovery import is_conv1d, site_modules, unwrap_model
from mmtoxicqa.modeling.hooks import Hooks
from mmtoxicqa.modeling.placement import is_offloaded

MODES = ("hooks", "fused")
_WORN_ATTR = "_mmtoxicqa_sgm_worn"


class GlassesHandle:
    """Glasses put on a model; ``remove()`` (or leaving the ``with`` block) takes them off."""

    def __init__(self, model: nn.Module, mode: str):
        self.model = model
        self.mode = mode
        self._hooks = Hooks()
        self._saved: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]] = []  # (weight, index, dim, original)
        self.active = True

    @property
    def layers_touched(self) -> int:
        return len(self._hooks) + len(self._saved)

    def remove(self) -> None:
        if not self.active:
            return
        self._hooks.remove()
        with torch.no_grad():
            for weight, index, dim, original in reversed(self._saved):
                weight.index_copy_(dim, index, original)
        self._saved = []
        self.active = False
        if getattr(self.model, _WORN_ATTR, None) is self:
            delattr(self.model, _WORN_ATTR)

    def __enter__(self) -> GlassesHandle:
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False


def neuron_dim(module: nn.Module, reads: str = "input") -> int:
    """The weight dim that indexes a projection's neurons: its input features (``reads="input"``: 1 for
    ``nn.Linear``, weight (out, in); 0 for GPT-2's ``Conv1D``, weight (in, out)) or its output features
    (``reads="output"``: the other dim; the bias is scaled too)."""
    input_dim = 0 if is_conv1d(module) else 1
    return input_dim if reads == "input" else 1 - input_dim


def scale_neurons(weight: torch.Tensor, alpha: torch.Tensor, dim: int) -> torch.Tensor:
    """``weight`` (or a block of its rows/columns) with neuron j, index j along ``dim``, multiplied by ``alpha[j]``.

    The product is formed in float32 (float64 for float64 weights) and returned in ``weight``'s dtype. Fused
    wearing and ``mmtoxicqa export`` both fold through this, so their weights agree bit for bit."""
    compute = torch.promote_types(weight.dtype, torch.float32)
    shape = (-1, 1) if dim == 0 else (1, -1)
    return (weight.to(compute) * alpha.to(device=weight.device, dtype=compute).view(shape)).to(weight.dtype)


def _scale_input(alpha: torch.Tensor):
    """Input callback: ``x * alpha``, alpha cast once per (device, dtype)."""
    cache: dict = {}

    def scale(module, x):
        factor = cache.get((x.device, x.dtype))
        if factor is None:
            factor = alpha.to(device=x.device, dtype=x.dtype)
            cache[(x.device, x.dtype)] = factor
        return x * factor

    return scale


def put_on(model, glasses, mode: str = "hooks") -> GlassesHandle:
    """Apply ``glasses`` to ``model`` until ``handle.remove()``; refuses glasses for another model."""
    if mode not in MODES:
        raise MMToxError(f"mode={mode!r} is not a way to wear glasses; use 'hooks' (default) or 'fused'")
    net = unwrap_model(model)
    glasses.validate(net)
    if getattr(net, _WORN_ATTR, None) is not None:
        raise MMToxError(
            "this model already wears SGM glasses; take them off (handle.remove() / leave the with block) before putting on others"
        )
    modules = site_modules(net, glasses.sites)
    handle = GlassesHandle(net, mode)
    try:
        for site, module, alpha in zip(glasses.sites, modules, glasses.alpha):
            changed = (alpha != 1).nonzero().squeeze(1)
            if changed.numel() == 0:
                continue
            if mode == "hooks":
                (handle._hooks.on_input if site.reads == "input" else handle._hooks.on_output)(module, _scale_input(alpha.float()))
                continue
            if is_offloaded(module) and getattr(net, "hf_device_map", None) is None:  # meta weights, no device map: never loaded
                raise MMToxError(
                    f"layer {site.layer_index} ({site.module_name}) has no weights: the model was built on the meta device (shapes "
                    "only), so fused mode has nothing to fold into; load its weights, or use mode='hooks'"
                )
            if is_offloaded(module):
                raise MMToxError(
                    f"layer {site.layer_index} ({site.module_name}) is offloaded by the device_map (its weights are brought in "
                    "at every pass), so fused mode cannot fold into them; use mode='hooks' (sgm_mode=hooks), raise max_memory, "
                    "or serve an `mmtoxicqa export`"
                )
            weight = getattr(module, "weight", None)
            if (
                not isinstance(weight, torch.Tensor)
                or not weight.is_floating_point()
                or weight.dim() != 2
                or type(weight) not in (nn.Parameter, torch.Tensor)
                or weight.device.type == "meta"
            ):
                raise MMToxError(
                    f"layer {site.layer_index} ({site.module_name}) has a {type(weight).__name__} weight "
                    f"({getattr(weight, 'dtype', None)}, {getattr(weight, 'device', None)}) that cannot be scaled in place; use mode='hooks'"
                )
            dim = neuron_dim(module, site.reads)
            index = changed.to(weight.device)
            targets = [(weight, dim)]
            bias = getattr(module, "bias", None)
            if site.reads == "output" and isinstance(bias, torch.Tensor):
                targets.append((bias, 0))  # an output feature is W[j] x + b[j]: both scale
            with torch.no_grad():
                for tensor, tensor_dim in targets:
                    original = tensor.index_select(tensor_dim, index).clone()
                    scaled = (
                        scale_neurons(original, alpha.index_select(0, changed), tensor_dim)
                        if tensor.dim() == 2
                        else (original.float() * alpha.index_select(0, changed).to(original.device)).to(original.dtype)
                    )
                    handle._saved.append((tensor, index, tensor_dim, original))
                    tensor.index_copy_(tensor_dim, index, scaled)
    except BaseException:
        handle.remove()
        raise
    setattr(net, _WORN_ATTR, handle)
    return handle


@contextlib.contextmanager
def wear(model, glasses, mode: str = "hooks") -> Iterator[GlassesHandle]:
    """``with wear(model, glasses): model.generate(...)`` -- the glasses come off on exit, even on error."""
    handle = put_on(model, glasses, mode)
    try:
        yield handle
    finally:
        handle.remove()


def take_off(model) -> bool:
    """Remove whatever glasses ``model`` wears; returns whether it wore any."""
    net = unwrap_model(model)
    handle = getattr(net, _WORN_ATTR, None)
    if handle is None:
        return False
    handle.remove()
    return True
