"""The glasses file: safetensors round trip, and one-line refusals for broken files and other models."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.sgm import Glasses, fit_glasses, put_on, wear
from mmtoxicqa.sgm.toy import tiny_llama, trigger_batches

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=48, num_hidden_layers=2, intermediate_size=40, seed=1)


@pytest.fixture(scope="module")
def glasses(model):
    batches, labels, _, _ = trigger_batches(6, 5, 48, seq_len=8, batch_size=6, seed=2)
    return fit_glasses(model, batches, labels, progress=False, model_id="toy/llama")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_roundtrip_and_no_pickle(model, glasses, tmp_path):
    path = glasses.save(tmp_path / "sub" / "g.safetensors")
    raw = path.read_bytes()
    assert b"pickle" not in raw and not raw.startswith(b"\x80")  # not a torch/pickle file
    loaded = Glasses.load(path, model)
    assert loaded.sites == glasses.sites and loaded.meta == glasses.meta
    assert torch.equal(loaded.alpha_all(), glasses.alpha_all()) and torch.equal(loaded.auroc_all(), glasses.auroc_all())
    assert loaded.auroc[0].dtype == torch.float64 and loaded.alpha[0].dtype == torch.float32
    assert loaded.with_options(strength=0.5).meta["strength"] == 0.5
    with pytest.raises(MMToxError, match="strength"):
        loaded.with_options(strength=2)
    summary = loaded.summary()
    assert summary["model_id"] == "toy/llama" and sum(r["dampened"] for r in summary["per_layer"]) == summary["dampened"]


def test_truncated_and_foreign_files_refused(glasses, tmp_path):
    from safetensors.torch import save_file

    path = glasses.save(tmp_path / "g.safetensors")
    data = path.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "tail_cut.safetensors": data[:-10],
        "header_only.safetensors": data[:40],
        "tiny.safetensors": b"\x01\x02",
        "text.safetensors": b"this is not a safetensors file at all, just some text\n" * 4,
        "pickle.safetensors": b"\x80\x04\x95" + b"\x00" * 64,
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(MMToxError, match="not a usable SGM glasses file") as info:
            Glasses.load(bad)
        assert name in _one_line(info)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(other))
    with pytest.raises(MMToxError, match="format") as info:
        Glasses.load(other)
    _one_line(info)
    with pytest.raises(MMToxError, match="does not exist") as info:
        Glasses.load(tmp_path / "missing.safetensors")
    _one_line(info)


def test_glasses_for_another_model_refused(glasses):
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=48, n_embd=32, n_inner=40, n_layer=2, n_head=4, n_positions=32))
    deeper = tiny_llama(vocab_size=48, num_hidden_layers=3, intermediate_size=40)
    wider = tiny_llama(vocab_size=48, num_hidden_layers=2, intermediate_size=56)
    for other, message in (
        (gpt2, "fitted on a 'llama' model .* this model is 'gpt2'"),
        (deeper, "2 decoder layers .* has 3"),
        (wider, "56 input features .* records 40"),
    ):
        with pytest.raises(MMToxError, match=message) as info:
            put_on(other, glasses)
        _one_line(info)
        with pytest.raises(MMToxError), wear(other, glasses, mode="fused"):
            pass
    # Nothing was left behind on a refused model.
    assert not any(m._forward_pre_hooks for m in wider.modules())


def test_load_with_model_validates(glasses, tmp_path):
    path = glasses.save(tmp_path / "g.safetensors")
    other = tiny_llama(vocab_size=48, num_hidden_layers=3, intermediate_size=40)
    with pytest.raises(MMToxError, match="decoder layers"):
        Glasses.load(path, other)


@pytest.mark.parametrize("bad_value", [5.0, -0.25, float("nan"), float("inf")])
def test_auroc_outside_unit_interval_refused(glasses, tmp_path, bad_value):
    """An AUROC of 5 would give alpha = 1 - (2 * 5 - 1) = -8 (a sign flip); a NaN AUROC would leave its
    neuron undampened without a word. Both are refused in one line, from a file and in memory."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = glasses.save(tmp_path / "g.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    layer = glasses.sites[1].layer_index
    tensors[f"layers.{layer}.auroc"][3] = bad_value
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(MMToxError, match=rf"bad.safetensors .*layer {layer}: 1 AUROC value\(s\) are NaN or outside \[0, 1\]") as info:
        Glasses.load(bad)
    _one_line(info)

    auroc_all = glasses.auroc_all().clone()
    auroc_all[7] = bad_value
    with pytest.raises(MMToxError, match=r"neuron 7: .*recompute") as info:
        Glasses.from_auroc(glasses.sites, auroc_all)
    _one_line(info)
    auroc = [a.clone() for a in glasses.auroc]
    auroc[0][2] = bad_value
    with pytest.raises(MMToxError, match=rf"layer {glasses.sites[0].layer_index}: 1 AUROC value") as info:
        Glasses(glasses.sites, auroc, glasses.alpha, glasses.meta)
    _one_line(info)
    alpha = [a.clone() for a in glasses.alpha]
    alpha[0][2] = -8.0
    with pytest.raises(MMToxError, match="alpha values that are NaN or outside"):
        Glasses(glasses.sites, glasses.auroc, alpha, glasses.meta)
