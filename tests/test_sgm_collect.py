"""SGM responses: which tokens count (padding and image placeholders excluded), pooling, storage,
resuming from a checkpoint, and refusing NaN activations -- on real tiny models."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.sgm import collect, discover_sites, fit_glasses
from mmtoxicqa.sgm.toy import tiny_llama, trigger_batches

VOCAB = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(vocab_size=VOCAB, num_hidden_layers=2, intermediate_size=40, seed=3)


@pytest.fixture(scope="module")
def data():
    return trigger_batches(8, 7, VOCAB, seq_len=10, batch_size=4, seed=5)


def _capture(model, sites, batch):
    """Full per-token inputs of every site's projection, with our own hooks (independent of collect)."""
    seen = {}
    modules = [model.get_submodule(s.module_name) for s in sites]
    handles = [
        m.register_forward_pre_hook(lambda mod, args, k=k: seen.__setitem__(k, args[0].detach().clone())) for k, m in enumerate(modules)
    ]
    try:
        with torch.inference_mode():
            model(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.cat([seen[k] for k in range(len(sites))], dim=-1)  # (B, T, M)


def test_max_and_mean_pool_over_counted_tokens_only(llama, data):
    batches, labels, _, _ = data
    sites = discover_sites(llama)
    full = torch.cat([_capture(llama, sites, b) for b in batches])
    mask = torch.cat([b["attention_mask"] for b in batches]).bool()
    assert not bool(mask.all())  # there is padding to exclude
    expect_max = full.masked_fill(~mask[..., None], float("-inf")).amax(1)
    expect_mean = (full * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    got_max = collect(llama, batches, labels, progress=False)
    got_mean = collect(llama, batches, labels, pooling="mean", progress=False)
    assert torch.equal(got_max.pooled, expect_max)
    torch.testing.assert_close(got_mean.pooled, expect_mean, rtol=1e-5, atol=1e-6)
    assert torch.equal(got_max.token_counts, mask.sum(1)) and torch.equal(got_max.labels, labels)
    # Padding really is excluded: a padded row pools like the same text alone.
    row = int((~mask).any(1).nonzero()[0])
    alone = {
        "input_ids": torch.cat([b["input_ids"] for b in batches])[row : row + 1, ~(~mask[row])],
        "attention_mask": torch.ones(1, int(mask[row].sum()), dtype=torch.long),
    }
    single = collect(llama, [alone], [1], progress=False)
    torch.testing.assert_close(single.pooled[0], got_max.pooled[row], rtol=1e-4, atol=1e-5)
    # Storage dtype, early stop off, and the caller's own token_mask / ignored ids.
    half = collect(llama, batches, labels, dtype=torch.float16, progress=False)
    assert half.pooled.dtype == torch.float16 and torch.equal(half.pooled, expect_max.half())
    assert torch.equal(collect(llama, batches, labels, early_stop=False, progress=False).pooled, expect_max)
    first = batches[0]
    token = int(first["input_ids"][0, -1])
    ignore = collect(llama, [first], [0, 1, 0, 1], ignore_token_ids=[token], progress=False)
    keep = first["attention_mask"].bool() & (first["input_ids"] != token)
    assert torch.equal(ignore.pooled, full[:4].masked_fill(~keep[..., None], float("-inf")).amax(1))
    own = collect(llama, [{**first, "token_mask": keep}], [0, 1, 0, 1], progress=False)
    assert torch.equal(own.pooled, ignore.pooled)


def test_llava_image_placeholders_are_not_pooled(tiny_llava_dir):
    """A real LLaVA forward with pixel_values. By construction neuron 0 of layer 0 fires hugely at image
    positions only (the projector emits one fixed vector u and the neuron reads direction u), so
    pooling over all positions would differ; the pooled value must be the max over text positions."""
    from mmtoxicqa.modeling.loading import build_inputs, load_model

    loaded = load_model(str(tiny_llava_dir))
    with torch.no_grad():
        projector = loaded.model.model.multi_modal_projector
        u = torch.randn(projector.linear_2.out_features, generator=torch.Generator().manual_seed(0)) * 0.02
        projector.linear_2.weight.zero_()
        projector.linear_2.bias.copy_(u)
        mlp = loaded.model.model.language_model.layers[0].mlp
        mlp.gate_proj.weight[0] = 5 * u / u.norm()
        mlp.up_proj.weight[0] = 5 * u / u.norm()
    image_id = loaded.model.config.image_token_index

    def conv(color, text):
        return [
            {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (32, 32), color)}, {"type": "text", "text": text}]}
        ]

    batch = dict(build_inputs(loaded, [conv((200, 10, 10), "describe the picture"), conv((0, 90, 30), "how to pick a lock steal a car")]))
    assert "pixel_values" in batch and bool((batch["input_ids"] == image_id).any())
    sites = discover_sites(loaded)
    assert all(".language_model." in s.module_name for s in sites)
    full = _capture(loaded.model, sites, batch)
    attended = batch["attention_mask"].bool()
    text = attended & (batch["input_ids"] != image_id)
    over_text = full.masked_fill(~text[..., None], float("-inf")).amax(1)
    over_all = full.masked_fill(~attended[..., None], float("-inf")).amax(1)
    assert float(over_all[:, 0].min()) > 5 * float(over_text[:, 0].max())  # image positions dominate neuron 0
    responses = collect(loaded, [batch], [0, 1], progress=False)  # a LoadedModel is accepted as is
    assert torch.equal(responses.pooled, over_text)
    assert responses.token_counts.tolist() == text.sum(1).tolist()
    # The batch layout calibration.py produces (token_mask attached) gives the same result.
    from mmtoxicqa.modeling.positions import text_mask

    mask = text_mask(batch["input_ids"], batch["attention_mask"], loaded.image_token_ids)
    again = collect(loaded.model, [{**batch, "token_mask": mask}], [0, 1], progress=False)
    assert torch.equal(again.pooled, over_text)


def test_checkpoint_resume_skips_finished_batches(llama, data, tmp_path):
    batches, labels, _, _ = data
    fresh = collect(llama, batches, labels, progress=False)
    ckpt = tmp_path / "ckpt"

    def killed_after(n):
        for i, b in enumerate(batches):
            if i == n:
                raise KeyboardInterrupt("killed")
            yield b

    with pytest.raises(KeyboardInterrupt):
        collect(llama, killed_after(2), labels, checkpoint_path=ckpt, progress=False)
    assert sorted(p.name for p in ckpt.glob("batch_*.safetensors")) == ["batch_000000.safetensors", "batch_000001.safetensors"]
    calls = []
    handle = llama.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        resumed = collect(llama, batches, labels, checkpoint_path=ckpt, progress=False)
    finally:
        handle.remove()
    assert len(calls) == len(batches) - 2
    assert torch.equal(resumed.pooled, fresh.pooled) and torch.equal(resumed.labels, fresh.labels)
    assert resumed.data_hash == fresh.data_hash
    # Other inputs or other options with the same checkpoint are refused.
    other = [dict(b) for b in batches]
    other[0] = {"input_ids": batches[0]["input_ids"].flip(1), "attention_mask": batches[0]["attention_mask"].flip(1)}
    with pytest.raises(MMToxError, match="different inputs"):
        collect(llama, other, labels, checkpoint_path=ckpt, progress=False)
    with pytest.raises(MMToxError, match="other settings"):
        collect(llama, batches, labels, checkpoint_path=ckpt, pooling="mean", progress=False)
    # fit_glasses takes the checkpoint too.
    glasses = fit_glasses(llama, batches, labels, checkpoint_path=ckpt, progress=False)
    assert glasses.meta["data_hash"] == fresh.data_hash


def test_nan_activation_names_the_layer(data):
    model = tiny_llama(vocab_size=VOCAB, num_hidden_layers=3, intermediate_size=40, seed=4)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, :] = float("nan")
    batches, labels, _, _ = data
    with pytest.raises(MMToxError, match=r"layer 1 \(model\.layers\.1\.mlp\.down_proj\) produced NaN/inf") as info:
        fit_glasses(model, batches, labels, progress=False)
    assert "\n" not in str(info.value)
    # Restricted to layer 0 (before the broken layer) calibration works.
    assert fit_glasses(model, batches, labels, layers=[0], progress=False).num_neurons == 40


def test_bad_batches_and_labels(llama, data):
    batches, labels, _, _ = data
    with pytest.raises(MMToxError, match="one label per input"):
        collect(llama, batches, labels[:-1], progress=False)
    with pytest.raises(MMToxError, match="one label per input"):
        collect(llama, batches, torch.cat([labels, labels]), progress=False)
    with pytest.raises(MMToxError, match="0 \\(non-toxic\\) or 1"):
        collect(llama, batches, labels * 2, progress=False)
    with pytest.raises(MMToxError, match="input_ids and attention_mask"):
        collect(llama, [{"input_ids": batches[0]["input_ids"]}], [0, 1, 0, 1], progress=False)
    with pytest.raises(MMToxError, match="labels one way"):
        collect(llama, [{**batches[0], "toxic_label": labels[:4]}], labels[:4], progress=False)
    empty = {"input_ids": batches[0]["input_ids"], "attention_mask": torch.zeros_like(batches[0]["attention_mask"])}
    with pytest.raises(MMToxError, match="no counted text token"):
        collect(llama, [empty], [0, 1, 0, 1], progress=False)
    with pytest.raises(MMToxError, match="pooling"):
        collect(llama, batches, labels, pooling="median", progress=False)
    with pytest.raises(MMToxError, match="no calibration batches"):
        collect(llama, [], [], progress=False)
    # One class empty or tiny: refused with the counts, before any forward pass for given labels.
    with pytest.raises(MMToxError, match="got 16 toxic and 0 non-toxic"):
        fit_glasses(llama, batches, torch.ones(16, dtype=torch.long), progress=False)
    with pytest.raises(MMToxError, match="got 1 toxic and 15 non-toxic"):
        fit_glasses(llama, batches, torch.tensor([1] + [0] * 15), progress=False)
    with pytest.raises(MMToxError, match="strength"):
        fit_glasses(llama, batches, labels, strength=1.5, progress=False)
