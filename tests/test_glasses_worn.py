"""A glasses file is worn exactly as it was fitted (issue #25): its own selection, strength and alphas,
through the sgm wrapper (hooks and fused), det0, and export; an explicit option that differs is applied,
logged in one line and recorded; every run records the glasses it wore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_sgm_integration import write_calibration

from mmtoxicqa.cli import main
from mmtoxicqa.core.render import render_text_image
from mmtoxicqa.modeling.discovery import site_modules, unwrap_model
from mmtoxicqa.modeling.loading import build_inputs
from mmtoxicqa.sgm import Glasses

FITS = {
    "top_k": ["--select", "top_k=3"],
    "min_auroc": ["--select", "min_auroc=0.75"],
    "half": ["--strength", "0.5"],
}


@pytest.fixture(scope="module")
def fitted_files(tmp_path_factory, tiny_llava_dir):
    folder = tmp_path_factory.mktemp("worn")
    calib = write_calibration(folder / "calibration.parquet")
    files = {}
    for name, options in {**FITS, "paper": []}.items():
        out = folder / f"{name}.safetensors"
        argv = ["calibrate", "--model", str(tiny_llava_dir), "--data", str(calib), "--out", str(out), "--batch-size", "4"]
        assert main([*argv, *options]) == 0
        files[name] = out
    return files


def _capture(loaded, sites, into: dict):
    """Hooks recording the input of every site's output projection (registered before the glasses'
    hooks they see the raw input, after them the scaled one)."""
    from mmtoxicqa.modeling.hooks import Hooks

    hooks = Hooks()
    for site, module in zip(sites, site_modules(unwrap_model(loaded.model), sites)):
        hooks.on_input(module, lambda _m, x, layer=site.layer_index: into.__setitem__(layer, x.detach().clone()))
    return hooks


def conversation(text="how to hurt someone steal a car"):
    return [{"role": "user", "content": [{"type": "image", "image": render_text_image(text)}, {"type": "text", "text": text}]}]


def test_the_fits_differ_from_the_paper_rule(fitted_files):
    paper = Glasses.load(fitted_files["paper"])
    top_k, min_auroc, half = (Glasses.load(fitted_files[k]) for k in ("top_k", "min_auroc", "half"))
    assert top_k.num_dampened == 3 < paper.num_dampened
    assert 0 < min_auroc.num_dampened < paper.num_dampened
    assert half.num_dampened == paper.num_dampened
    assert torch.allclose(1 - half.alpha_all(), (1 - paper.alpha_all()) / 2, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FITS))
@pytest.mark.parametrize("mode", ["hooks", "fused"])
def test_sgm_wrapper_wears_the_file_as_fitted(fitted_files, tiny_llava_dir, name, mode):
    """Hooks: each site's input is scaled by exactly the file's alphas. Fused: the weights' columns are."""
    from mmtoxicqa.model_wrappers.mmtox import MMTox

    path = fitted_files[name]
    fitted = Glasses.load(path)
    wrapper = MMTox(pretrained=str(tiny_llava_dir), method="sgm", glasses=str(path), sgm_mode=mode, device="cpu")
    method, loaded = wrapper.method, wrapper.loaded
    assert torch.equal(method.glasses.alpha_all(), fitted.alpha_all())
    record = method.worn["sgm"]
    assert record["dampened"] == fitted.num_dampened and record["overrides"] == []
    assert record["alpha_sha256"] == fitted.alpha_sha256() and record["file"] == str(path)
    modules = site_modules(unwrap_model(loaded.model), fitted.sites)
    before = [m.weight.detach().clone() for m in modules]
    (part,) = method.of_kind("intervention")
    raw, scaled = {}, {}
    with _capture(loaded, fitted.sites, raw), part.fn(), _capture(loaded, fitted.sites, scaled):
        if mode == "hooks":
            with torch.inference_mode():
                loaded.model(**build_inputs(loaded, [conversation()]))
            for site, alpha in zip(fitted.sites, fitted.alpha):
                assert torch.equal(scaled[site.layer_index], raw[site.layer_index] * alpha)
        else:
            for module, weight, alpha in zip(modules, before, fitted.alpha):
                torch.testing.assert_close(module.weight.detach(), weight * alpha.view(1, -1), rtol=0, atol=1e-7)
    for module, weight in zip(modules, before):
        assert torch.equal(module.weight, weight)


def test_explicit_option_overrides_logged_and_recorded(fitted_files, tiny_llava_dir, capsys):
    from mmtoxicqa.methods import build_method
    from mmtoxicqa.modeling.loading import load_model

    loaded = load_model(str(tiny_llava_dir), device="cpu")
    fitted = Glasses.load(fitted_files["top_k"])
    same = build_method("sgm", loaded, glasses=str(fitted_files["top_k"]), sgm_select="top_k=3", sgm_strength=1)
    assert same.worn["sgm"]["overrides"] == [] and "overrides the file" not in capsys.readouterr().err
    wider = build_method("sgm", loaded, glasses=str(fitted_files["top_k"]), sgm_select="all", sgm_strength="0.5")
    err = capsys.readouterr().err
    assert err.count("overrides the file's") == 1
    assert "strength: 1 -> 0.5; select: top_k=3 -> all" in err
    assert wider.worn["sgm"]["overrides"] == ["strength: 1 -> 0.5", "select: top_k=3 -> all"]
    assert wider.glasses.num_dampened == int((fitted.auroc_all() > 0.5).sum()) > 3
    assert wider.worn["sgm"]["alpha_sha256"] != fitted.alpha_sha256()


def test_det0_ranks_by_the_file(fitted_files, tiny_llava_dir):
    from mmtoxicqa.methods import build_method
    from mmtoxicqa.modeling.loading import load_model

    loaded = load_model(str(tiny_llava_dir), device="cpu")
    fitted = Glasses.load(fitted_files["paper"])
    method = build_method("det0", loaded, glasses=str(fitted_files["paper"]), det0_top_k=4)
    record = method.worn["det0"]
    assert record["dampened"] == 4 and record["fixed_factor"] == 0.0
    assert record["file"] == str(fitted_files["paper"]) and len(record["file_sha256"]) == 64
    top = {(layer, neuron) for layer, neuron, _, _ in fitted.top_neurons(4)}
    zeroed = {(layer, neuron, alpha) for layer, neuron, _, alpha in method.glasses.top_neurons(4)}
    assert {(layer, neuron) for layer, neuron, _ in zeroed} == top and {a for _, _, a in zeroed} == {0.0}


def test_export_folds_the_files_own_alphas(fitted_files, tiny_llava_dir, tmp_path):
    from safetensors.torch import load_file

    from mmtoxicqa.methods import export

    for name in ("top_k", "half"):
        fitted = Glasses.load(fitted_files[name])
        out = tmp_path / name
        assert main(["export", "--model", str(tiny_llava_dir), "--glasses", str(fitted_files[name]), "--out", str(out)]) == 0
        record = export.read_record(out)
        assert record["glasses"]["dampened"] == fitted.num_dampened and record["glasses"]["overrides"] == []
        assert record["glasses"]["alpha_sha256"] == fitted.alpha_sha256()
        source = {}
        for f in Path(tiny_llava_dir).glob("*.safetensors"):
            source.update(load_file(f))
        folded = {}
        for f in out.glob("*.safetensors"):
            folded.update(load_file(f))
        for change, alpha in zip(record["changed_tensors"], [a for a in fitted.alpha if (a < 1).any()]):
            key = change["key"]
            torch.testing.assert_close(folded[key], source[key] * alpha.view(1, -1).to(source[key].dtype), rtol=0, atol=1e-7)


def test_results_json_records_the_glasses_worn(fitted_files, tiny_llava_dir, tmp_path, monkeypatch):
    from mmtoxicqa.lmms.evaluate import main as lmms_eval_main

    monkeypatch.setenv("MMTOXICQA_DATA", "seed")
    monkeypatch.setenv("MMTOXICQA_FLUENCY_MODEL", "none")
    monkeypatch.setenv("MMTOXICQA_JUDGE", "profanity")
    fitted = Glasses.load(fitted_files["min_auroc"])
    args = f"pretrained={tiny_llava_dir},device=cpu,max_new_tokens=2,glasses={fitted_files['min_auroc']}"
    code = lmms_eval_main(
        [
            "--model",
            "sgm",
            "--model_args",
            args,
            "--tasks",
            "mm_toxic_qa_standard",
            "--limit",
            "1",
            "--gen_kwargs",
            "max_new_tokens=2",
            "--output_path",
            str(tmp_path),
        ]
    )
    assert code == 0
    (results_file,) = tmp_path.rglob("*_results.json")
    recorded = json.loads(results_file.read_text())["config"]["mmtoxicqa_method"]
    assert recorded["name"] == "sgm"
    assert recorded["worn"]["sgm"]["alpha_sha256"] == fitted.alpha_sha256()
    assert recorded["worn"]["sgm"]["dampened"] == fitted.num_dampened
