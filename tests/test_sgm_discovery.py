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

from mmtoxicqa.errors import MMToxError
from mmtoxicqa.sgm import collect, discover_sites, find_decoder_layers, wear
from mmtoxicqa.sgm.glasses import Glasses

VOCAB = 128
HIDDEN = 32
INTER = 48


pytestmark = pytest.mark.usefixtures("one_thread")


def _text(**extra):
    cfg = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg.update(extra)
    return cfg


_CLIP = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16)
_SIGLIP = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)


def _build(name: str):
    """(model, expected number of text layers, expected prefix of the site names)."""
    if name == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**_text())), 2, "model.layers."
    if name == "mistral":
        return T.MistralForCausalLM(T.MistralConfig(**_text())), 2, "model.layers."
    if name == "qwen2":
        return T.Qwen2ForCausalLM(T.Qwen2Config(**_text())), 2, "model.layers."
    if name == "gemma":
        return T.GemmaForCausalLM(T.GemmaConfig(**_text(head_dim=8))), 2, "model.layers."
    if name == "phi3":
        return T.Phi3ForCausalLM(T.Phi3Config(**_text())), 2, "model.layers."
    if name == "gpt2":
        return (
            T.GPT2LMHeadModel(
                T.GPT2Config(
                    vocab_size=VOCAB, n_embd=HIDDEN, n_inner=INTER, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
                )
            ),
            2,
            "transformer.h.",
        )
    if name == "opt":
        return (
            T.OPTForCausalLM(
                T.OPTConfig(
                    vocab_size=VOCAB,
                    hidden_size=HIDDEN,
                    ffn_dim=INTER,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    word_embed_proj_dim=HIDDEN,
                    max_position_embeddings=64,
                    pad_token_id=0,
                    bos_token_id=1,
                    eos_token_id=2,
                )
            ),
            2,
            "model.decoder.layers.",
        )
    if name == "gpt_neox":
        return (
            T.GPTNeoXForCausalLM(
                T.GPTNeoXConfig(
                    vocab_size=VOCAB,
                    hidden_size=HIDDEN,
                    intermediate_size=INTER,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    max_position_embeddings=64,
                    pad_token_id=0,
                    bos_token_id=1,
                    eos_token_id=2,
                )
            ),
            2,
            "gpt_neox.layers.",
        )
    if name == "llava":
        return (
            T.LlavaForConditionalGeneration(
                T.LlavaConfig(vision_config=T.CLIPVisionConfig(**_CLIP), text_config=T.LlamaConfig(**_text()), image_token_index=100)
            ),
            2,
            "model.language_model.layers.",
        )
    if name == "llava_next":
        cfg = T.LlavaNextConfig(
            vision_config=T.CLIPVisionConfig(**_CLIP),
            text_config=T.LlamaConfig(**_text()),
            image_token_index=100,
            image_grid_pinpoints=[[32, 32]],
        )
        return T.LlavaNextForConditionalGeneration(cfg), 2, "model.language_model.layers."
    if name == "qwen2_vl":
        cfg = T.Qwen2VLConfig(
            text_config=_text(rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
            vision_config=dict(
                depth=1,
                embed_dim=16,
                hidden_size=HIDDEN,
                num_heads=2,
                mlp_ratio=2,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
            ),
            image_token_id=100,
            video_token_id=101,
        )
        return T.Qwen2VLForConditionalGeneration(cfg), 2, "model.language_model.layers."
    if name == "qwen2_5_vl":
        cfg = T.Qwen2_5_VLConfig(
            text_config=_text(rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
            vision_config=dict(
                depth=1,
                hidden_size=16,
                intermediate_size=24,
                out_hidden_size=HIDDEN,
                num_heads=2,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                fullatt_block_indexes=[0],
            ),
            image_token_id=100,
            video_token_id=101,
        )
        return T.Qwen2_5_VLForConditionalGeneration(cfg), 2, "model.language_model.layers."
    if name == "idefics3":
        cfg = T.Idefics3Config(text_config=T.LlamaConfig(**_text()), vision_config=_SIGLIP, scale_factor=2, image_token_id=100)
        return T.Idefics3ForConditionalGeneration(cfg), 2, "model.text_model.layers."
    if name == "smolvlm":
        cfg = T.SmolVLMConfig(text_config=T.LlamaConfig(**_text()), vision_config=_SIGLIP, scale_factor=2, image_token_id=100)
        return T.SmolVLMForConditionalGeneration(cfg), 2, "model.text_model.layers."
    if name == "mllama":
        cfg = T.MllamaConfig(
            text_config=_text(num_hidden_layers=4, cross_attention_layers=[1]),
            vision_config=dict(
                hidden_size=16,
                intermediate_size=24,
                num_hidden_layers=2,
                num_global_layers=1,
                num_attention_heads=2,
                image_size=32,
                patch_size=16,
                vision_output_dim=HIDDEN,
                intermediate_layers_indices=[0],
                max_num_tiles=1,
                supported_aspect_ratios=[[1, 1]],
            ),
            image_token_index=100,
        )
        return T.MllamaForConditionalGeneration(cfg), 4, "model.language_model.layers."
    raise AssertionError(name)


ARCHS = [
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "phi3",
    "gpt2",
    "opt",
    "gpt_neox",
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "smolvlm",
    "mllama",
]
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
