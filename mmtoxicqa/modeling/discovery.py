"""Where the neurons are: the MLP intermediate activations of the language decoder.

A *neuron* is one input feature of an MLP's output projection in a decoder layer of the
LANGUAGE model, i.e. the activation after image and text tokens have been fused:

* gated MLPs (LLaMA, Qwen, Mistral, Gemma, Phi-3, Mllama text): the input of ``down_proj``
  (``act(gate_proj(x)) * up_proj(x)``);
* classic MLPs: the input of ``c_proj`` (GPT-2, a ``Conv1D``), ``fc2`` (OPT, Phi),
  ``dense_4h_to_h`` (GPT-NeoX, Falcon, BLOOM), ``fc_out`` (GPT-J), ``w2``/``wo``.

Discovery never hard-codes one module path. It finds the language decoder through the
model's own ``get_decoder()`` (which multimodal models in transformers route to their
language model) or, failing that, by walking every ``ModuleList`` of the model that is not
under a vision tower / projector / connector, and keeps the list whose blocks hold an MLP.
In each block it takes the MLP container (``mlp``, ``feed_forward``, ``ffn`` ...), or the block
itself when the MLP is inlined (OPT), and finds the output projection by name, then by shape
(the one projection that maps back to the hidden size).

Two placements (``site``), recorded in the glasses:

* ``down_input`` (default): one site per layer, the input of the output projection (what is rated is
  what is scaled: the post-activation neurons);
* ``gate_up_output``: AurA's released placement (apple/ml-aura hooks module outputs: ``gate_proj`` and
  ``up_proj`` for Llama-style MLPs, ``c_fc`` for GPT-2): one site per input projection of the MLP,
  reading and scaling its *output* features (before the activation), each with its own alphas.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mmtoxicqa.core.errors import MMToxError

# Path components that mark the non-language parts of a multimodal model.
EXCLUDED_COMPONENTS = frozenset(
    {
        "vision_tower",
        "vision_model",
        "visual",
        "vision",
        "vision_encoder",
        "image_encoder",
        "multi_modal_projector",
        "mm_projector",
        "projector",
        "connector",
        "resampler",
        "perceiver",
        "image_newline",
        "audio_tower",
        "audio_model",
        "audio",
        "vision_embed_tokens",
        "img_processor",
    }
)
# Children of a decoder block that hold the MLP, and the MLP's output projection, by name.
MLP_CONTAINER_NAMES = ("mlp", "feed_forward", "ffn", "ff", "mlp_block", "block_sparse_moe")
OUTPUT_PROJECTION_NAMES = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "w2", "wo", "out_proj")
ATTENTION_NAMES = ("attn", "attention", "self_attn", "cross_attn", "self_attention", "encoder_attn", "crossattention")
LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer", "block", "decoder_layers")
# The MLP's input projections (hidden -> intermediate), by name, for site="gate_up_output".
INPUT_PROJECTION_NAMES = ("gate_proj", "up_proj", "c_fc", "fc1", "dense_h_to_4h", "fc_in", "w1", "w3", "wi")
SITE_KINDS = ("down_input", "gate_up_output")


@dataclass(frozen=True)
class NeuronSite:
    """One MLP output projection whose ``width`` input features are the layer's neurons."""

    layer_index: int
    module_name: str
    width: int
    reads: str = "input"  # "input": the module's input features (down_input); "output": its output features (gate_up_output)

    def to_dict(self) -> dict:
        out = {"layer_index": self.layer_index, "module_name": self.module_name, "width": self.width}
        if self.reads != "input":  # files of input sites stay as they were
            out["reads"] = self.reads
        return out

    @classmethod
    def from_dict(cls, data: dict) -> NeuronSite:
        reads = str(data.get("reads", "input"))
        if reads not in ("input", "output"):
            raise MMToxError(f"site {data.get('module_name')} reads {reads!r}; expected 'input' or 'output'")
        return cls(int(data["layer_index"]), str(data["module_name"]), int(data["width"]), reads)


def unwrap_model(model):
    """Accept a ``torch.nn.Module`` or an object holding one as ``.model`` (mmtoxicqa's LoadedModel)."""
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        return inner
    raise MMToxError(f"expected a torch model (nn.Module) or a LoadedModel, got {type(model).__name__}; pass the Hugging Face model object")


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D``: a linear layer whose weight is stored (in_features, out_features)."""
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2


def projection_in_out(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear-like module, or None if it is not one."""
    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    if is_conv1d(module):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(in_f, int) and isinstance(out_f, int):  # quantised linears (bitsandbytes, ...)
        return in_f, out_f
    return None


def site_width(module: nn.Module, reads: str = "input") -> int:
    shape = projection_in_out(module)
    if shape is None:
        raise MMToxError(f"{type(module).__name__} is not a linear projection; SGM needs an nn.Linear or Conv1D MLP projection")
    return shape[0] if reads == "input" else shape[1]


def _excluded(name: str) -> bool:
    return any(part in EXCLUDED_COMPONENTS for part in name.split("."))


def _mlp_output_projection(block: nn.Module, hidden_size: int | None) -> tuple[str, nn.Module] | None:
    """The MLP output projection inside one decoder block, as (relative name, module)."""
    children = dict(block.named_children())
    containers = [(n, children[n]) for n in MLP_CONTAINER_NAMES if n in children]
    scopes = containers if containers else [("", block)]
    for prefix, scope in scopes:
        scope_children = dict(scope.named_children())
        if any("expert" in n for n, _ in scope.named_modules()):
            raise MMToxError(
                f"block {type(block).__name__} has a mixture-of-experts MLP ({type(scope).__name__}); "
                "SGM supports dense MLPs only; use a dense model"
            )
        for name in OUTPUT_PROJECTION_NAMES:
            module = scope_children.get(name)
            if module is not None and projection_in_out(module) is not None:
                if name == "out_proj" and not containers:
                    continue  # at block level out_proj is usually attention's
                return (f"{prefix}.{name}" if prefix else name), module
        # By shape: the single linear child (outside attention) mapping back to the hidden size from a wider input.
        candidates = []
        for name, module in scope_children.items():
            if name in ATTENTION_NAMES:
                continue
            shape = projection_in_out(module)
            if shape is None:
                continue
            in_f, out_f = shape
            if (hidden_size is None or out_f == hidden_size) and in_f != out_f and in_f > out_f:
                candidates.append((name, module))
        if containers and len(candidates) == 1:
            name, module = candidates[0]
            return f"{prefix}.{name}", module
    return None


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("hidden_size", "n_embd", "d_model"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int):
                return value
    return None


def _layer_lists(root: nn.Module, root_name: str) -> list[tuple[str, nn.ModuleList]]:
    """Every ModuleList under ``root`` (full names), vision/projector parts excluded."""
    out = []
    for name, module in root.named_modules():
        full = f"{root_name}.{name}" if root_name and name else (root_name or name)
        if isinstance(module, nn.ModuleList) and len(module) > 0 and not _excluded(full):
            out.append((full, module))
    return out


def _decoder_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    names = {id(m): n for n, m in model.named_modules()}
    roots: list[tuple[str, nn.Module]] = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError, TypeError):  # some remote-code models raise here
            decoder = None
        if isinstance(decoder, nn.Module) and id(decoder) in names:
            roots.append((names[id(decoder)], decoder))
    for attr in ("language_model", "text_model"):
        for holder in (model, getattr(model, "model", None)):
            sub = getattr(holder, attr, None) if holder is not None else None
            if isinstance(sub, nn.Module) and id(sub) in names:
                roots.append((names[id(sub)], sub))
    roots.append(("", model))
    return roots


def find_decoder_layers(model) -> tuple[str, nn.ModuleList]:
    """The language model's list of decoder blocks: (full module name, ModuleList)."""
    model = unwrap_model(model)
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if embeddings is not None and not isinstance(embeddings, nn.Embedding) and not hasattr(embeddings, "num_embeddings"):
        raise MMToxError(
            f"could not find the language decoder's MLP layers in {type(model).__name__}: its input embedding is a "
            f"{type(embeddings).__name__}, not a token embedding; SGM works on (multimodal) language models"
        )
    hidden = _hidden_size(model)
    for root_name, root in _decoder_candidates(model):
        best = None
        for name, layers in _layer_lists(root, root_name):
            with_mlp = sum(_mlp_output_projection(block, hidden) is not None for block in layers)
            if with_mlp < len(layers) or with_mlp == 0:
                continue
            leaf = name.rsplit(".", 1)[-1]
            key = (len(layers), leaf in LAYER_LIST_NAMES, -name.count("."))
            if best is None or key > best[0]:
                best = (key, name, layers)
        if best is not None:
            return best[1], best[2]
    raise MMToxError(
        f"could not find the language decoder's MLP layers in {type(model).__name__}; "
        "SGM needs decoder blocks with an MLP output projection (down_proj / c_proj / fc2 ...)"
    )


def normalize_layers(layers, num_layers: int) -> list[int]:
    """Turn a layer restriction into sorted layer indices.

    ``layers``: None (all), an int, a ``slice``/``range``, a sequence of ints (negative counts from
    the end), or a string ``"4:12"`` (half-open range, either end optional) / ``"0,3,5"``.
    """
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, str):
        text = layers.strip()
        try:
            if ":" in text:
                start, _, stop = text.partition(":")
                layers = slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
            else:
                layers = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise MMToxError(f"layers={layers!r} is not a layer range; write e.g. '4:12' or '0,3,5'") from None
    if isinstance(layers, slice):
        indices = list(range(num_layers))[layers]
    elif isinstance(layers, (int,)) and not isinstance(layers, bool):
        indices = [layers]
    elif isinstance(layers, Iterable):
        indices = list(layers)
    else:
        raise MMToxError(f"layers={layers!r} is not a layer selection; pass None, an int, a range/slice, a list of ints or 'a:b'")
    out = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise MMToxError(f"layers={layers!r}: {index!r} is not a layer index; pass integers")
        real = index + num_layers if index < 0 else index
        if not 0 <= real < num_layers:
            raise MMToxError(
                f"layers={layers!r}: layer {index} is out of range for a decoder with {num_layers} layers (0..{num_layers - 1})"
            )
        out.append(real)
    out = sorted(set(out))
    if not out:
        raise MMToxError(f"layers={layers!r} selects no layer of a decoder with {num_layers} layers; widen the range")
    return out


def _mlp_input_projections(block: nn.Module, hidden_size: int | None) -> list[tuple[str, nn.Module]]:
    """The MLP's input projections (hidden -> intermediate) inside one decoder block, by name, else by
    shape (every linear child of the MLP container mapping the hidden size to a wider output)."""
    children = dict(block.named_children())
    containers = [(n, children[n]) for n in MLP_CONTAINER_NAMES if n in children]
    for prefix, scope in containers or [("", block)]:
        scope_children = dict(scope.named_children())
        named = [(n, scope_children[n]) for n in INPUT_PROJECTION_NAMES if n in scope_children]
        if not named and containers:
            named = [
                (n, m)
                for n, m in scope_children.items()
                if (shape := projection_in_out(m)) is not None and shape[0] < shape[1] and hidden_size in (None, shape[0])
            ]
        found = [(f"{prefix}.{n}" if prefix else n, m) for n, m in named if projection_in_out(m) is not None]
        if found:
            return found
    return []


def discover_sites(model, layers=None, site: str = "down_input") -> list[NeuronSite]:
    """The MLP neuron sites of the language decoder in layer order: one per (selected) layer for
    ``down_input``, one per MLP input projection for ``gate_up_output`` (see the module docstring)."""
    if site not in SITE_KINDS:
        raise MMToxError(f"site={site!r} is not a neuron placement; use one of {', '.join(SITE_KINDS)}")
    model = unwrap_model(model)
    list_name, blocks = find_decoder_layers(model)
    hidden = _hidden_size(model)
    sites = []
    for index in normalize_layers(layers, len(blocks)):
        if site == "gate_up_output":
            found = _mlp_input_projections(blocks[index], hidden)
            if not found:
                raise MMToxError(
                    f"decoder layer {index} ({type(blocks[index]).__name__}) has no MLP input projection SGM can find; use site=down_input"
                )
            sites += [NeuronSite(index, f"{list_name}.{index}.{rel}", site_width(m, "output"), "output") for rel, m in found]
            continue
        found = _mlp_output_projection(blocks[index], hidden)
        assert found is not None  # find_decoder_layers checked every block
        rel, module = found
        sites.append(NeuronSite(index, f"{list_name}.{index}.{rel}", site_width(module)))
    return sites


def site_modules(model, sites: Sequence[NeuronSite]) -> list[nn.Module]:
    """The projection module of each site, checking that it exists and has the recorded width."""
    model = unwrap_model(model)
    modules = []
    for site in sites:
        try:
            module = model.get_submodule(site.module_name)
        except AttributeError:
            raise MMToxError(
                f"module {site.module_name} (layer {site.layer_index}) does not exist in this {type(model).__name__}; these glasses/sites belong to another model"
            ) from None
        width = site_width(module, site.reads)
        if width != site.width:
            raise MMToxError(
                f"module {site.module_name} has {width} {site.reads} features but the site records {site.width}; these glasses/sites belong to another model"
            )
        modules.append(module)
    return modules


def site_offsets(sites: Sequence[NeuronSite]) -> list[int]:
    """Where each site's neurons start in the concatenation of all sites' neurons (layer order)."""
    starts, total = [], 0
    for site in sites:
        starts.append(total)
        total += site.width
    return starts
