"""LLaVA-1.5-7B's real configuration on the ``meta`` device (shapes, no weights): SGM finds its 32 x 11008
decoder neurons and none of the vision tower's, hooks see them in a forward pass, and fused mode and the
export fold into (4096, 11008) ``down_proj`` weights under the hub checkpoint's key names. Nothing is
materialised: every tensor stays on ``meta``. The configuration is the one ``benchmarks/gpu_check.sh``
builds with random weights on a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.methods.export import Checkpoint, TensorInfo, plan_folds
from mmtoxicqa.modeling.discovery import site_modules
from mmtoxicqa.sgm import Glasses, discover_sites, wear
from mmtoxicqa.sgm.wear import neuron_dim, scale_neurons

REPO = Path(__file__).resolve().parents[1]
LAYERS, HIDDEN, NEURONS = 32, 4096, 11008


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llava7b():
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        return LlavaForConditionalGeneration(_gpu_check().llava15_7b_config()).eval()


@pytest.fixture(scope="module")
def glasses(llava7b):
    sites = discover_sites(llava7b)
    auroc = torch.rand(sum(s.width for s in sites), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return Glasses.from_auroc(sites, auroc, strength=1.0, meta={"model_type": "llava", "decoder_layers": LAYERS})


def test_the_configuration_is_llava_15_7b_and_stays_on_meta(llava7b):
    assert {p.device.type for p in llava7b.parameters()} == {"meta"}
    # llava-hf/llava-1.5-7b-hf: the Llama-2-7B decoder (6,738,415,616 + 64 more vocabulary rows in the embedding
    # and the untied head: 6,738,939,904), CLIP ViT-L/14 at 336 px (303,507,456), the two-layer projector (20,979,712)
    assert sum(p.numel() for p in llava7b.parameters()) == 7_063_427_072
    assert sum(p.numel() for p in llava7b.model.vision_tower.parameters()) == 303_507_456
    assert sum(p.numel() for p in llava7b.model.multi_modal_projector.parameters()) == 20_979_712


def test_sites_are_the_32_decoder_mlps_not_the_vision_tower(llava7b):
    sites = discover_sites(llava7b)
    assert [s.module_name for s in sites] == [f"model.language_model.layers.{i}.mlp.down_proj" for i in range(LAYERS)]
    assert {s.width for s in sites} == {NEURONS} and sum(s.width for s in sites) == 352_256
    clip_mlps = [k for k in llava7b.state_dict() if k.startswith("model.vision_tower.") and k.endswith("mlp.fc2.weight")]
    assert len(clip_mlps) == 24  # 24 CLIP MLPs (fc2, width 4096): none taken
    gate_up = discover_sites(llava7b, site="gate_up_output")
    assert [s.module_name.rsplit(".", 1)[1] for s in gate_up] == ["gate_proj", "up_proj"] * LAYERS
    assert {(s.width, s.reads) for s in gate_up} == {(NEURONS, "output")}


def test_hooks_see_every_layers_neurons_in_a_meta_forward(llava7b, glasses):
    glasses.validate(llava7b)
    modules = site_modules(llava7b, glasses.sites)
    seen = []
    with wear(llava7b, glasses, mode="hooks") as handle:
        assert handle.layers_touched == LAYERS
        recorders = [m.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape))) for m in modules]
        try:
            with torch.no_grad():
                out = llava7b.model.language_model(input_ids=torch.zeros(2, 7, dtype=torch.long, device="meta"))
        finally:
            for recorder in recorders:
                recorder.remove()
    assert seen == [(2, 7, NEURONS)] * LAYERS  # the scaled input of every down_proj, batch 2 x 7 tokens
    assert out.last_hidden_state.shape == (2, 7, HIDDEN) and out.last_hidden_state.device.type == "meta"
    assert all(not m._forward_pre_hooks for m in modules)  # taken off on exit


def test_fused_shapes_and_the_export_plan_on_the_hub_key_layout(llava7b, glasses):
    for module, alpha in zip(site_modules(llava7b, glasses.sites), glasses.alpha):
        assert module.weight.shape == (HIDDEN, NEURONS) and neuron_dim(module) == 1  # neuron j = weight column j
        folded = scale_neurons(module.weight, alpha, neuron_dim(module))
        assert folded.shape == (HIDDEN, NEURONS) and folded.device.type == "meta" and folded.dtype == module.weight.dtype
    # the hub checkpoint's names (transformers < 4.52 layout, as llava-hf/llava-1.5-7b-hf's index lists them), bf16
    renames = (
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
        ("model.vision_tower.", "vision_tower.vision_model."),  # transformers 5's CLIP has no vision_model level
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
    )
    tensors = {}
    for key, tensor in llava7b.state_dict().items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        assert key.split(".")[0] in ("language_model", "vision_tower", "multi_modal_projector"), key
        tensors[key] = TensorInfo("model-00001-of-00003.safetensors", list(tensor.shape), "BF16", 0, tensor.numel() * 2)
    checkpoint = Checkpoint(Path("llava-1.5-7b-hf"), ["model-00001-of-00003.safetensors"], "model.safetensors.index.json", tensors, [])
    folds = plan_folds(glasses, llava7b, checkpoint)
    assert [f.key for f in folds] == [f"language_model.model.layers.{i}.mlp.down_proj.weight" for i in range(LAYERS)]
    assert {(tuple(f.info.shape), f.dim, f.alpha.numel()) for f in folds} == {((HIDDEN, NEURONS), 1, NEURONS)}
    assert sum(f.dampened for f in folds) == glasses.num_dampened


def test_fused_mode_on_meta_is_refused_in_one_line(llava7b, glasses):
    with pytest.raises(MMToxError, match=r"layer 0 .* has no weights: the model was built on the meta device.*mode='hooks'") as info:
        with wear(llava7b, glasses, mode="fused"):
            pass
    assert "\n" not in str(info.value)
    assert all(p.device.type == "meta" for p in llava7b.parameters()) and not getattr(llava7b, "_mmtoxicqa_sgm_worn", None)
