"""The site option (issue #22 item 3): ``gate_up_output`` rates and dampens the outputs of each MLP's
gate and up projections (AurA's released placement), each with its own alphas; its hooks equal its
fused weights, the file round-trips, and export folds the same alphas (rows, and a bias where there is one)."""

from __future__ import annotations

import pytest
import torch

from mmtoxicqa.cli import main
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.discovery import discover_sites
from mmtoxicqa.sgm import Glasses, fit_glasses, wear
from mmtoxicqa.sgm.toy import plant_neurons, tiny_llama, trigger_batches

pytestmark = pytest.mark.usefixtures("one_thread")
PLANTED = [(0, 5), (1, 17)]


@pytest.fixture(scope="module")
def planted():
    model = plant_neurons(tiny_llama(vocab_size=64, num_hidden_layers=2, intermediate_size=48), 7, PLANTED)
    data = trigger_batches(16, 7, 64, seq_len=10, batch_size=8, seed=0)
    return model, data


@pytest.fixture(scope="module")
def glasses(planted):
    model, (batches, labels, _, _) = planted
    return fit_glasses(model, batches, labels, progress=False, model_id="toy", site="gate_up_output")


def test_gate_up_sites_are_two_per_layer_reading_outputs(planted, tiny_llava):
    model, _ = planted
    sites = discover_sites(model, site="gate_up_output")
    assert [(s.layer_index, s.module_name.rsplit(".", 1)[-1], s.width, s.reads) for s in sites] == [
        (0, "gate_proj", 48, "output"),
        (0, "up_proj", 48, "output"),
        (1, "gate_proj", 48, "output"),
        (1, "up_proj", 48, "output"),
    ]
    llava = discover_sites(tiny_llava.model, site="gate_up_output")
    assert llava and all(s.reads == "output" and "language_model" in s.module_name for s in llava)
    with pytest.raises(MMToxError, match="down_input, gate_up_output"):
        discover_sites(model, site="somewhere")


def test_planted_neurons_are_found_in_both_gate_and_up(glasses):
    """A planted neuron's gate and up rows read only the trigger dimension: both outputs separate perfectly."""
    assert glasses.meta["site"] == "gate_up_output"
    perfect = {(layer, neuron) for layer, neuron, auroc, _ in glasses.top_neurons(8) if auroc == 1.0}
    names = {(s.layer_index, s.module_name.rsplit(".", 1)[-1]) for s in glasses.sites}
    assert len(names) == 4
    # top_neurons reports (layer, neuron index within its site): each planted (layer, j) appears for gate and up
    counts = {p: sum(1 for layer, neuron, auroc, _ in glasses.top_neurons(8) if (layer, neuron) == p and auroc == 1.0) for p in PLANTED}
    assert set(PLANTED) <= perfect and counts == {p: 2 for p in PLANTED}


def test_hooks_equal_fused_weights_and_the_file_round_trips(planted, glasses, tmp_path):
    model, (_, _, ids, mask) = planted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with wear(model, glasses, mode="hooks"):
            hooked = model(input_ids=ids, attention_mask=mask).logits
        with wear(model, glasses, mode="fused") as handle:
            fused = model(input_ids=ids, attention_mask=mask).logits
            gate = model.model.layers[0].mlp.gate_proj.weight
            alpha = glasses.alpha[0]
            torch.testing.assert_close(gate, before["model.layers.0.mlp.gate_proj.weight"] * alpha.view(-1, 1), rtol=0, atol=1e-7)
            assert handle.layers_touched == 4
    torch.testing.assert_close(fused, hooked, rtol=1e-5, atol=1e-5)
    assert (hooked - plain).abs().max() > 1e-3  # the planted neurons moved the logits
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restored bit for bit
    path = glasses.save(tmp_path / "g.safetensors")
    again = Glasses.load(path, model)
    assert [s.to_dict() for s in again.sites] == [s.to_dict() for s in glasses.sites]
    assert all(torch.equal(a, b) for a, b in zip(again.alpha, glasses.alpha))
    assert again.placebo().num_dampened == glasses.num_dampened


def test_export_folds_rows_like_the_hooks(planted, glasses, tmp_path):
    import transformers as T

    model, (_, _, ids, mask) = planted
    glasses.save(tmp_path / "g.safetensors")
    model.save_pretrained(tmp_path / "src")
    argv = ["export", "--model", str(tmp_path / "src"), "--glasses", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    exported = T.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.inference_mode(), wear(model, glasses):
        hooked = model(input_ids=ids, attention_mask=mask).logits
    with torch.inference_mode():
        folded = exported(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)


def test_gpt2_c_fc_output_site_scales_weight_and_bias(tmp_path):
    """GPT-2's c_fc is a Conv1D with a bias: its output j is x W[:, j] + b[j]; fused and export scale both."""
    from tiny_models import build_arch

    model, _, _ = build_arch("gpt2")
    model.eval()
    sites = discover_sites(model, site="gate_up_output")
    assert [s.module_name.rsplit(".", 1)[-1] for s in sites] == ["c_fc"] * len(sites)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (16, 8), generator=generator)
    labels = [1] * 8 + [0] * 8
    batches = [{"input_ids": ids[:8], "attention_mask": torch.ones(8, 8, dtype=torch.long)}]
    batches.append({"input_ids": ids[8:], "attention_mask": torch.ones(8, 8, dtype=torch.long)})
    glasses = fit_glasses(model, batches, labels, progress=False, model_id="gpt2", site="gate_up_output", select="top_k=10")
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        with wear(model, glasses):
            hooked = model(input_ids=ids, attention_mask=mask).logits
        with wear(model, glasses, mode="fused"):
            fused = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(fused, hooked, rtol=1e-5, atol=1e-5)
    glasses.save(tmp_path / "g.safetensors")
    model.save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["export", "--model", str(tmp_path / "src"), "--glasses", str(tmp_path / "g.safetensors"), "--out", str(out)]) == 0
    from mmtoxicqa.methods.export import read_record

    keys = [c["key"] for c in read_record(out)["changed_tensors"]]
    assert any(k.endswith("c_fc.bias") for k in keys) and any(k.endswith("c_fc.weight") for k in keys)
    exported = type(model).from_pretrained(out).eval()
    with torch.inference_mode():
        torch.testing.assert_close(exported(input_ids=ids, attention_mask=mask).logits, hooked, rtol=1e-5, atol=1e-5)


def test_sgm_site_option_through_the_method(tiny_llava, tmp_path, monkeypatch):
    from test_sgm_integration import write_calibration

    from mmtoxicqa.methods import build_method

    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))  # the glasses sgm caches stay out of the user's cache

    calib = write_calibration(tmp_path / "calibration.parquet")
    method = build_method("sgm", tiny_llava, calibration_data=str(calib), sgm_site="gate_up_output")
    assert method.worn["sgm"]["site"] == "gate_up_output"
    assert {s.module_name.rsplit(".", 1)[-1] for s in method.glasses.sites} == {"gate_proj", "up_proj"}
    method.glasses.save(tmp_path / "g.safetensors")
    with pytest.raises(MMToxError, match="fitted at site gate_up_output"):
        build_method("sgm", tiny_llava, glasses=str(tmp_path / "g.safetensors"), sgm_site="down_input")
    with pytest.raises(MMToxError, match="sgm_site='middle'"):
        build_method("sgm", tiny_llava, calibration_data=str(calib), sgm_site="middle")
