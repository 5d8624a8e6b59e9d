"""SGM end to end on a real random LLaMA with planted toxic neurons (no mocks).

The planted neurons are exact detectors of a trigger token that only toxic inputs contain
(see mmtoxicqa.sgm.toy): on non-toxic inputs their activation is exactly 0, so dampening them
must leave non-toxic logits bit-identical, while toxic logits must move.
"""

from __future__ import annotations

import pytest
import torch

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.sgm import Glasses, collect, fit_glasses, put_on, take_off, wear
from mmtoxicqa.sgm.toy import plant_neurons, tiny_llama, trigger_batches

TRIGGER = 7
VOCAB = 64
PLANTED = [(0, 5), (1, 17), (2, 40)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted_model():
    return plant_neurons(tiny_llama(vocab_size=VOCAB, num_hidden_layers=3, intermediate_size=64), TRIGGER, PLANTED)


@pytest.fixture(scope="module")
def data():
    return trigger_batches(24, TRIGGER, VOCAB, seq_len=12, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def glasses(planted_model, data):
    batches, labels, _, _ = data
    return fit_glasses(planted_model, batches, labels, progress=False, model_id="toy-planted")


def _logits(model, ids, mask):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_planted_neurons_rank_first_with_auroc_one(glasses):
    top = glasses.top_neurons(len(PLANTED) + 1)
    assert {(layer, neuron) for layer, neuron, _, _ in top[: len(PLANTED)]} == set(PLANTED)
    assert all(score == 1.0 and alpha == 0.0 for _, _, score, alpha in top[: len(PLANTED)])
    assert top[len(PLANTED)][2] < 0.9  # every other neuron is clearly worse
    summary = glasses.summary()
    assert summary["class_sizes"] == {"toxic": 24, "non_toxic": 24}
    assert summary["neurons"] == 3 * 64 and summary["auroc_quantiles"]["1"] == 1.0
    assert [row["layer"] for row in summary["per_layer"]] == [0, 1, 2]
    assert "dampened" in glasses.summary_text()


def test_suppression_changes_toxic_keeps_non_toxic(planted_model, glasses, data):
    _, labels, ids, mask = data
    toxic = labels == 1
    narrow = glasses.with_options(select={"top_k": len(PLANTED)})
    assert narrow.num_dampened == len(PLANTED)
    before = _logits(planted_model, ids, mask)
    for mode in ("hooks", "fused"):
        with wear(planted_model, narrow, mode=mode):
            worn = _logits(planted_model, ids, mask)
        assert torch.equal(worn[~toxic], before[~toxic]), mode
        moved = (worn[toxic] - before[toxic]).abs().amax(dim=(1, 2))
        assert bool((moved > 1e-2).all()), (mode, moved)
    assert torch.equal(_logits(planted_model, ids, mask), before)


def test_worn_glasses_zero_the_planted_responses(planted_model, glasses, data):
    """Under full-strength glasses (alpha 0 for AUROC 1) the planted neurons' inputs to down_proj are 0."""
    batches, labels, _, _ = data
    with wear(planted_model, glasses):
        worn = collect(planted_model, batches, labels, progress=False)
    plain = collect(planted_model, batches, labels, progress=False)
    for layer, neuron in PLANTED:
        column = worn.site_columns(layer).start + neuron
        assert bool((worn.pooled[:, column] == 0).all())
        assert bool((plain.pooled[labels == 1, column] > 1.0).all())
        assert bool((plain.pooled[labels == 0, column] == 0).all())


def test_strength_zero_is_bit_identical(planted_model, glasses, data):
    _, _, ids, mask = data
    off = glasses.with_options(strength=0.0)
    assert off.num_dampened == 0 and torch.equal(off.alpha_all(), torch.ones(off.num_neurons))
    before = _logits(planted_model, ids, mask)
    for mode in ("hooks", "fused"):
        with wear(planted_model, off, mode=mode):
            assert torch.equal(_logits(planted_model, ids, mask), before)


def test_fused_equals_hooks_in_generation_and_restores_bit_for_bit(planted_model, glasses, data):
    _, _, ids, mask = data
    ids, mask = ids[:6], mask[:6]
    half = glasses.with_options(strength=0.7)  # many neurons, fractional alphas
    state = _state(planted_model)
    outputs = {}
    for mode in ("hooks", "fused"):
        with wear(planted_model, half, mode=mode) as handle:
            assert handle.layers_touched == 3
            with torch.inference_mode():
                out = planted_model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=6,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=0,
                )
        outputs[mode] = out
        after = _state(planted_model)
        assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state), mode
    assert torch.equal(outputs["hooks"].sequences, outputs["fused"].sequences)
    for a, b in zip(outputs["hooks"].logits, outputs["fused"].logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        vanilla = planted_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert vanilla.shape == outputs["hooks"].sequences.shape


def test_put_on_remove_and_double_wear(planted_model, glasses, data):
    _, _, ids, mask = data
    before = _logits(planted_model, ids, mask)
    handle = put_on(planted_model, glasses, mode="fused")
    with pytest.raises(MMToxError, match="already wears"):
        put_on(planted_model, glasses)
    assert not torch.equal(_logits(planted_model, ids, mask), before)
    handle.remove()
    handle.remove()  # idempotent
    assert torch.equal(_logits(planted_model, ids, mask), before)
    put_on(planted_model, glasses)
    assert take_off(planted_model) is True and take_off(planted_model) is False
    assert torch.equal(_logits(planted_model, ids, mask), before)
    with pytest.raises(MMToxError, match="mode"):
        put_on(planted_model, glasses, mode="magic")
    # An exception inside the with block still takes the glasses off.
    with pytest.raises(RuntimeError), wear(planted_model, glasses, mode="fused"):
        raise RuntimeError("boom")
    assert torch.equal(_logits(planted_model, ids, mask), before)


def test_save_load_roundtrip_and_metadata(planted_model, glasses, tmp_path):
    import json

    from safetensors import safe_open

    import mmtoxicqa

    path = glasses.save(tmp_path / "g.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        meta = handle.metadata()
    assert {"layers.0.alpha", "layers.0.auroc", "layers.2.alpha", "layers.2.auroc"} <= keys
    info = json.loads(meta["meta"])
    assert info["model_type"] == "llama" and info["model_id"] == "toy-planted"
    assert info["class_sizes"] == {"toxic": 24, "non_toxic": 24} and len(info["data_hash"]) == 64
    assert info["pooling"] == "max" and info["strength"] == 1.0 and info["select"] is None
    assert meta["mmtoxicqa_version"] == mmtoxicqa.__version__
    assert [s["module_name"] for s in json.loads(meta["sites"])] == [f"model.layers.{i}.mlp.down_proj" for i in range(3)]
    loaded = Glasses.load(path, planted_model)
    assert loaded.sites == glasses.sites
    assert all(torch.equal(a, b) for a, b in zip(loaded.alpha, glasses.alpha))
    assert all(torch.equal(a, b) for a, b in zip(loaded.auroc, glasses.auroc))
    assert not list(tmp_path.glob("*.tmp"))


def test_same_data_same_hash_and_options(planted_model, data):
    batches, labels, _, _ = data
    a = fit_glasses(planted_model, batches, labels, progress=False, layers="1:", pooling="mean", select="top_k=2", strength=0.5)
    b = fit_glasses(planted_model, batches, labels, progress=False, layers=[1, 2], pooling="mean", select={"top_k": 2}, strength=0.5)
    assert a.meta["data_hash"] == b.meta["data_hash"]
    assert [s.layer_index for s in a.sites] == [1, 2]
    assert a.num_dampened == 2 and {(layer, n) for layer, n, _, _ in a.top_neurons(2)} == {(1, 17), (2, 40)}
    assert a.alpha_all().min() == pytest.approx(0.0 + 0.5)  # AUROC 1 at strength 0.5
    # Labels carried in the batches give the same glasses.
    labelled, start = [], 0
    for batch in batches:
        n = batch["input_ids"].shape[0]
        labelled.append({**batch, "toxic_label": labels[start : start + n]})
        start += n
    c = fit_glasses(planted_model, labelled, progress=False, layers="1:", pooling="mean", select="top_k=2", strength=0.5)
    assert torch.equal(c.alpha_all(), a.alpha_all())
    pairs = [({k: v for k, v in batch.items() if k != "toxic_label"}, batch["toxic_label"].tolist()) for batch in labelled]
    d = fit_glasses(planted_model, iter(pairs), progress=False, layers="1:", pooling="mean", select="top_k=2", strength=0.5)
    assert torch.equal(d.alpha_all(), a.alpha_all()) and d.meta["data_hash"] == c.meta["data_hash"]
