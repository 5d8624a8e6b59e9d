"""SGM neuron discovery on tiny random models of every supported architecture (built offline).

For each: the sites are exactly the language decoder's MLP output projections (one per text
layer, width = intermediate size, nothing from the vision tower/projector), the hooks really
fire in a text-only forward pass, and hooks/fused wearing agree.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T
from tiny_models import ARCHS, INTER
from tiny_models import CLIP_KWARGS as _CLIP
from tiny_models import build_arch as _build
from tiny_models import text_kwargs as _text

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.sgm import collect, discover_sites, find_decoder_layers, wear
from mmtoxicqa.sgm.glasses import Glasses

pytestmark = pytest.mark.usefixtures("one_thread")

EXCLUDED = ("vision", "visual", "projector", "connector")


@pytest.mark.parametrize("name", ARCHS)
def test_discovery_finds_language_decoder_mlps(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, n_layers, prefix = _build(name)
    model.eval()
    sites = discover_sites(model)
    assert [s.layer_index for s in sites] == list(range(n_layers))
    assert all(s.width == INTER for s in sites), sites
    assert all(s.module_name.startswith(prefix) for s in sites), sites
    assert not any(part in s.module_name for s in sites for part in EXCLUDED)
    list_name, blocks = find_decoder_layers(model)
    assert len(blocks) == n_layers and prefix.startswith(list_name + ".")
    # The layer restriction.
    assert [s.layer_index for s in discover_sites(model, layers="1:")] == list(range(1, n_layers))
    assert [s.layer_index for s in discover_sites(model, layers=[-1])] == [n_layers - 1]
    # The hooks fire in a real text-only forward pass (Mllama's cross-attention layers skip text-only inputs).
    ids = torch.randint(3, 90, (4, 9), generator=torch.Generator().manual_seed(1))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    responses = collect(model, batches, [0, 1, 0, 1], progress=False)
    assert responses.pooled.shape == (4, n_layers * INTER)
    assert torch.isfinite(responses.pooled).all()
    if name == "mllama":
        cross = [s.module_name for s in sites if s.layer_index in model.config.text_config.cross_attention_layers]
        assert responses.not_fired == cross and bool((responses.pooled[:, INTER : 2 * INTER] == 0).all())
    else:
        assert responses.not_fired == []
    # Hooks and fused wearing agree (GPT-2's Conv1D stores its weight transposed).
    auroc = [torch.linspace(0.2, 1.0, s.width, dtype=torch.float64) for s in sites]
    glasses = Glasses.from_auroc(sites, torch.cat(auroc), strength=0.8, meta={"model_type": model.config.model_type})
    with torch.inference_mode():
        plain = model(**batches[0]).logits
        with wear(model, glasses):
            hooked = model(**batches[0]).logits
        with wear(model, glasses, mode="fused"):
            fused = model(**batches[0]).logits
        again = model(**batches[0]).logits
    assert torch.equal(plain, again)
    torch.testing.assert_close(hooked, fused, rtol=1e-4, atol=1e-5)
    if name != "mllama":
        assert not torch.equal(hooked, plain)


def test_layer_selection_errors():
    model = T.LlamaForCausalLM(T.LlamaConfig(**_text(num_hidden_layers=3)))
    assert [s.layer_index for s in discover_sites(model, layers=range(0, 3, 2))] == [0, 2]
    assert [s.layer_index for s in discover_sites(model, layers=slice(1, None))] == [1, 2]
    assert [s.layer_index for s in discover_sites(model, layers=1)] == [1]
    assert [s.layer_index for s in discover_sites(model, layers="0,2")] == [0, 2]
    for bad, message in ((5, "out of range"), ("x:y", "not a layer range"), ("5:", "selects no layer"), ([0.5], "not a layer index")):
        with pytest.raises(MMToxError, match=message):
            discover_sites(model, layers=bad)


def test_no_decoder_mlp_is_a_clear_error():
    vision = T.CLIPVisionModel(T.CLIPVisionConfig(**_CLIP))
    with pytest.raises(MMToxError, match="could not find the language decoder"):
        discover_sites(vision)
    with pytest.raises(MMToxError, match="nn.Module"):
        discover_sites("not a model")
