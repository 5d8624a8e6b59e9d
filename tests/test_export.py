"""`mmtoxicqa export`: SGM folded into a plain Hugging Face checkpoint, checked on tiny real models.

For every supported architecture (saved in several shards), the export loaded by plain
``from_pretrained`` must give the logits and greedy generations of the original model wearing
the glasses in hooks mode, hold exactly the fused-mode weights in the changed tensors, and be
byte-identical to the source everywhere else (vision towers, biases, headers, index). The same
holds on the embedded SmolLM2-LLaVA (slow: 540 MB), where hooks and fused agree to float rounding.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import transformers as T
from tiny_models import ARCHS, build_arch, text_kwargs

from mmtoxicqa.cli import main
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_file
from mmtoxicqa.methods import export
from mmtoxicqa.sgm import Glasses, discover_sites, find_decoder_layers, fit_glasses, wear
from mmtoxicqa.sgm.toy import plant_neurons, tiny_llama, trigger_batches

pytestmark = pytest.mark.usefixtures("one_thread")

SHARD = "12KB"  # tiny models are ~50-150 KB: this forces several shards


def make_glasses(model, *, seed: int = 0, strength: float = 0.9, select=None, model_id: str = "tiny") -> Glasses:
    """Hand-made AUROCs uniform in [0, 1]: about half the neurons of every layer get an alpha < 1, all different."""
    sites = discover_sites(model)
    auroc = torch.rand(sum(s.width for s in sites), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    meta = {
        "model_id": model_id,
        "model_type": model.config.model_type,
        "decoder_layers": len(find_decoder_layers(model)[1]),
        "pooling": "max",
        "layers": None,
        "data_hash": f"hand-made-{seed}",
    }
    return Glasses.from_auroc(sites, auroc, strength=strength, select=select, meta=meta)


def headers(folder: Path) -> dict[str, tuple[str, int, int]]:
    """key -> (file, absolute begin, end) from each safetensors header, parsed here independently of export.py."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        length = int.from_bytes(raw[:8], "little")
        for key, info in json.loads(raw[8 : 8 + length]).items():
            if key != "__metadata__":
                out[key] = (path.name, 8 + length + info["data_offsets"][0], 8 + length + info["data_offsets"][1])
    return out


def assert_only_changed_differ(src: Path, out: Path, changed: set[str]) -> None:
    """Same files and headers; outside the changed tensors' byte ranges every weight file is byte-identical."""
    src_files = sorted(p.name for p in src.glob("*.safetensors"))
    assert src_files == sorted(p.name for p in out.glob("*.safetensors"))
    spans = headers(src)
    assert spans == headers(out)
    for name in src_files:
        a, b = bytearray((src / name).read_bytes()), bytearray((out / name).read_bytes())
        assert len(a) == len(b)
        for key in sorted(changed, key=lambda k: -spans[k][1]):  # from the end, so earlier offsets stay valid
            file, begin, end = spans[key]
            if file == name:
                assert a[begin:end] != b[begin:end], key
                del a[begin:end], b[begin:end]
        assert a == b, f"{name} differs outside the folded tensors"


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            state.update({k: handle.get_tensor(k) for k in handle.keys()})
    return state


def llava_with_llama_vision():
    """A LLaVA whose vision tower is itself a LLaMA stack: its checkpoint has ``vision_tower.layers.0.mlp.down_proj.weight``
    next to ``language_model.model.layers.0.mlp.down_proj.weight``, the same suffix, so only the component name tells them apart."""
    vision = T.LlamaConfig(**text_kwargs(hidden_size=16, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2))
    config = T.LlavaConfig(vision_config=vision, text_config=T.LlamaConfig(**text_kwargs()), image_token_index=100)
    return T.LlavaForConditionalGeneration(config)


CASES = [*ARCHS, "llava_llama_vision"]


@pytest.mark.parametrize("name", CASES)
def test_export_matches_hooks_and_changes_only_the_decoder_mlp(name, tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = llava_with_llama_vision() if name == "llava_llama_vision" else build_arch(name)[0]
    model.eval()
    src, out, glasses_file = tmp_path / "src", tmp_path / "out", tmp_path / "g.safetensors"
    model.save_pretrained(src, max_shard_size=SHARD)
    glasses = make_glasses(model)
    glasses.save(glasses_file)

    record = export.export_checkpoint(str(src), glasses_file, out)

    # One changed tensor per decoder layer: that layer's MLP output projection weight, in the language model only.
    changed = {c["key"]: c for c in record["changed_tensors"]}
    assert [c["module"] for c in record["changed_tensors"]] == [s.module_name for s in glasses.sites]
    assert all(k.endswith(".weight") and not any(p in k for p in ("vision", "visual", "projector")) for k in changed)
    assert {c["neuron_dim"] for c in changed.values()} == {0 if name == "gpt2" else 1}  # Conv1D is (in, out)
    assert [c["dampened"] for c in changed.values()] == [int((a < 1).sum()) for a in glasses.alpha]
    assert len(record["weight_files"]) > 1 and record["index_file"] == export.SAFE_INDEX
    assert_only_changed_differ(src, out, set(changed))
    index = json.loads((out / export.SAFE_INDEX).read_text())
    assert index == json.loads((src / export.SAFE_INDEX).read_text())
    assert {k: v[0] for k, v in headers(out).items()} == index["weight_map"]

    # Plain transformers loads it: no missing or unexpected keys, no custom code.
    exported, info = type(model).from_pretrained(out, output_loading_info=True)
    exported.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    # The changed tensors hold exactly what fused wearing puts in memory.
    state = load_state(out)
    with wear(model, glasses, mode="fused"):
        for key, c in changed.items():
            assert torch.equal(state[key], model.get_submodule(c["module"]).weight), key

    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with wear(model, glasses):
            hooked = model(input_ids=ids, attention_mask=mask).logits
            hooked_gen = model.generate(input_ids=ids, attention_mask=mask, **settings)
        folded = exported(input_ids=ids, attention_mask=mask).logits
        folded_gen = exported.generate(input_ids=ids, attention_mask=mask, **settings)
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)
    assert (folded - plain).abs().max() > 1e-3  # the glasses do something, so the agreement above is not vacuous
    assert folded_gen.shape == (2, 13) and torch.equal(folded_gen, hooked_gen)


def test_vision_mlp_of_the_same_layer_index_is_untouched(tmp_path):
    torch.manual_seed(0)
    model = llava_with_llama_vision().eval()
    model.save_pretrained(tmp_path / "src")
    make_glasses(model).save(tmp_path / "g.safetensors")
    record = export.export_checkpoint(str(tmp_path / "src"), tmp_path / "g.safetensors", tmp_path / "out")
    src, out = load_state(tmp_path / "src"), load_state(tmp_path / "out")
    vision_key, language_key = "vision_tower.layers.0.mlp.down_proj.weight", "language_model.model.layers.0.mlp.down_proj.weight"
    assert vision_key in src and language_key in src  # the same suffix `layers.0.mlp.down_proj.weight`
    assert [c["key"] for c in record["changed_tensors"]] == [language_key, "language_model.model.layers.1.mlp.down_proj.weight"]
    assert torch.equal(out[vision_key], src[vision_key]) and not torch.equal(out[language_key], src[language_key])


def test_multimodal_llava_fitted_on_images_generates_as_with_hooks(tmp_path, tiny_llava_dir, tiny_llava):
    """The tiny LLaVA (CLIP tower + LLaMA, processor): glasses fitted with fit_glasses on image+text inputs;
    the export, loaded the way lmms-eval's llava_hf does (plain from_pretrained + AutoProcessor), generates the same."""
    from mmtoxicqa.core.render import render_text_image
    from mmtoxicqa.modeling.loading import build_inputs, load_model

    toxic = ["how to pick a lock", "steal a car", "hurt someone", "steal a car hurt someone"]
    clean = ["the cat sat on the mat", "write a poem about the sea", "one two three", "hello world"]

    def conv(text):
        return [{"role": "user", "content": [{"type": "image", "image": render_text_image(text)}, {"type": "text", "text": text}]}]

    batches = [build_inputs(tiny_llava, [conv(t) for t in toxic + clean][i : i + 4]) for i in (0, 4)]
    glasses = fit_glasses(tiny_llava, batches, [1] * 4 + [0] * 4, min_per_class=4, progress=False, model_id="tiny-llava")
    glasses.save(tmp_path / "g.safetensors")
    assert glasses.num_dampened > 0

    out = tmp_path / "out"
    assert main(["export", "--model", str(tiny_llava_dir), "--glasses", str(tmp_path / "g.safetensors"), "--out", str(out)]) == 0
    # Unsharded source: one model.safetensors, no index; processor, tokenizer, generation config copied byte for byte.
    assert not (out / export.SAFE_INDEX).exists()
    for name in ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (tiny_llava_dir / name).read_bytes(), name
    record = export.read_record(out)
    vision = [k for k in headers(out) if k.startswith("vision_tower.") and ".layers.0.mlp." in k]
    assert vision and not set(vision) & {c["key"] for c in record["changed_tensors"]}
    assert_only_changed_differ(tiny_llava_dir, out, {c["key"] for c in record["changed_tensors"]})

    exported = load_model(str(out))
    assert type(exported.model) is type(tiny_llava.model) and exported.processor is not None
    inputs = build_inputs(exported, [conv("steal a car"), conv("the cat sat on the mat")])
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=exported.tokenizer.pad_token_id)
    with torch.inference_mode():
        with wear(tiny_llava.model, glasses):
            hooked_logits = tiny_llava.model(**inputs).logits
            hooked = tiny_llava.model.generate(**inputs, **settings)
        folded_logits = exported.model(**inputs).logits
        folded = exported.model.generate(**inputs, **settings)
    torch.testing.assert_close(folded_logits, hooked_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(folded, hooked)


def test_card_and_record_name_the_glasses_and_options(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=64, num_hidden_layers=2).eval()
    model.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# Tiny\n\nthe source card\n")
    glasses = make_glasses(model, strength=0.7, select="top_k=20", model_id="org/tiny-llama")
    glasses.save(tmp_path / "g.safetensors")
    digest = sha256_file(tmp_path / "g.safetensors")

    returned = export.export_checkpoint(str(tmp_path / "src"), tmp_path / "g.safetensors", tmp_path / "out")
    record = export.read_record(tmp_path / "out")
    assert record == json.loads(json.dumps(returned, default=str))
    g = record["glasses"]
    assert g["sha256"] == digest and g["file"] == "g.safetensors"
    assert (g["strength"], g["select"], g["model_id"], g["model_type"]) == (0.7, {"top_k": 20}, "org/tiny-llama", "llama")
    assert (g["pooling"], g["layers"], g["data_hash"], g["dampened"], g["neurons"]) == ("max", None, "hand-made-0", 20, 128)
    assert g["options_overridden"] is False and record["format"] == export.RECORD_FORMAT
    assert sum(c["dampened"] for c in record["changed_tensors"]) == 20

    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n---\n\n# ")  # the source's front matter stays first
    assert digest in card and "| strength / select | 0.7 / top_k=20 |" in card and "org/tiny-llama" in card
    assert card.rstrip().endswith("the source card")
    with pytest.raises(MMToxError, match="not a checkpoint written by"):
        export.read_record(tmp_path / "src")


def test_cli_strength_and_select_are_honoured_as_in_hooks_mode(tmp_path, capsys):
    """Planted trigger neurons, glasses fitted on toy batches; --strength/--select re-derive alpha like with_options."""
    vocab, trigger = 64, 7
    model = plant_neurons(tiny_llama(vocab_size=vocab, num_hidden_layers=2), trigger, [(0, 5), (1, 9), (1, 30)])
    batches, labels, ids, mask = trigger_batches(8, trigger, vocab, seq_len=10, batch_size=8, seed=0)
    glasses = fit_glasses(model, batches, labels, progress=False, model_id="toy-planted")
    glasses.save(tmp_path / "g.safetensors")
    model.save_pretrained(tmp_path / "src", max_shard_size=SHARD)

    argv = ["export", "--model", str(tmp_path / "src"), "--glasses", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--strength", "0.5", "--select", "top_k=3"]) == 0
    narrowed = glasses.with_options(strength=0.5, select="top_k=3")
    assert narrowed.num_dampened == 3 and "wrote " in capsys.readouterr().out
    record = export.read_record(tmp_path / "out")
    assert (record["glasses"]["strength"], record["glasses"]["select"], record["glasses"]["options_overridden"]) == (
        0.5,
        {"top_k": 3},
        True,
    )
    exported = T.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.inference_mode():
        with wear(model, narrowed):
            hooked = model(input_ids=ids, attention_mask=mask).logits
        with wear(model, glasses):
            full = model(input_ids=ids, attention_mask=mask).logits
        folded = exported(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)
    assert (folded - full).abs().max() > 1e-4  # not the glasses' own options

    # Refitting the same options from the file with the defaults is the glasses' own alpha.
    assert main([*argv[:-1], str(tmp_path / "out2")]) == 0
    state = load_state(tmp_path / "out2")
    with wear(model, glasses, mode="fused"):
        for site in glasses.sites:
            key = site.module_name + ".weight"
            assert torch.equal(state[key], model.get_submodule(site.module_name).weight)


def test_bf16_blockwise_fold_equals_fused(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=64, num_hidden_layers=2, dtype=torch.bfloat16).eval()
    model.save_pretrained(tmp_path / "src")
    glasses = make_glasses(model)
    glasses.save(tmp_path / "g.safetensors")
    monkeypatch.setattr(export, "CHUNK_BYTES", 200)  # 64-neuron rows of 2 bytes: 1 row per block
    export.export_checkpoint(str(tmp_path / "src"), tmp_path / "g.safetensors", tmp_path / "blocks")
    monkeypatch.setattr(export, "CHUNK_BYTES", 1 << 20)
    export.export_checkpoint(str(tmp_path / "src"), tmp_path / "g.safetensors", tmp_path / "whole")
    assert (tmp_path / "blocks/model.safetensors").read_bytes() == (tmp_path / "whole/model.safetensors").read_bytes()
    state = load_state(tmp_path / "blocks")
    with wear(model, glasses, mode="fused"):
        for site in glasses.sites:
            weight = state[site.module_name + ".weight"]
            assert weight.dtype == torch.bfloat16 and torch.equal(weight, model.get_submodule(site.module_name).weight)


def _one_line_error(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmtoxicqa: error: ")
    return err


def test_refusals_are_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    llama = tiny_llama(vocab_size=64, num_hidden_layers=2).eval()
    llama.save_pretrained(tmp_path / "llama", max_shard_size=SHARD)
    make_glasses(llama).save(tmp_path / "llama.g")
    gpt2 = T.GPT2LMHeadModel(
        T.GPT2Config(vocab_size=64, n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2)
    ).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    wide = tiny_llama(vocab_size=64, num_hidden_layers=2, intermediate_size=40).eval()
    deep = tiny_llama(vocab_size=64, num_hidden_layers=3).eval()
    make_glasses(wide).save(tmp_path / "wide.g")
    make_glasses(deep).save(tmp_path / "deep.g")

    def run(model, glasses, out="out", *extra):
        return ["export", "--model", str(model), "--glasses", str(tmp_path / glasses), "--out", str(tmp_path / out), *extra]

    assert "fitted on a 'llama' model" in _one_line_error(run(tmp_path / "gpt2", "llama.g"), capsys)
    assert "has 64 input features but the site records 40" in _one_line_error(run(tmp_path / "llama", "wide.g"), capsys)
    assert "3 decoder layers" in _one_line_error(run(tmp_path / "llama", "deep.g"), capsys)
    assert "neither a local model directory nor a hub id" in _one_line_error(run(tmp_path / "missing/model", "llama.g"), capsys)
    (tmp_path / "bad.g").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert "not a usable SGM glasses file" in _one_line_error(run(tmp_path / "llama", "bad.g"), capsys)
    assert "does not exist" in _one_line_error(run(tmp_path / "llama", "nope.g"), capsys)
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only/config.json").write_bytes((tmp_path / "llama/config.json").read_bytes())
    (tmp_path / "config_only/pytorch_model.bin").write_bytes(b"pickle")
    err = _one_line_error(run(tmp_path / "config_only", "llama.g"), capsys)
    assert "no model.safetensors" in err and "pytorch_model.bin" in err
    assert not (tmp_path / "out").exists()  # nothing written by any refusal

    # An output folder in use: refused unless --overwrite, which replaces it.
    (tmp_path / "used").mkdir()
    (tmp_path / "used/old.txt").write_text("x")
    assert "is not empty; pass --overwrite" in _one_line_error(run(tmp_path / "llama", "llama.g", "used"), capsys)
    assert main(run(tmp_path / "llama", "llama.g", "used", "--overwrite")) == 0
    assert not (tmp_path / "used/old.txt").exists() and (tmp_path / "used" / export.RECORD_FILE).is_file()
    assert "already holds a checkpoint" in _one_line_error(run(tmp_path / "llama", "llama.g", "used"), capsys)
    # An export is not a source: folding twice would dampen twice.
    assert "already an SGM export" in _one_line_error(run(tmp_path / "used", "llama.g", "again"), capsys)
    assert "overlaps the source" in _one_line_error(run(tmp_path / "llama", "llama.g", "llama/sub"), capsys)


def test_broken_checkpoints_are_refused_and_leave_nothing_behind(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = tiny_llama(vocab_size=64, num_hidden_layers=2).eval()
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size=SHARD)
    make_glasses(model).save(tmp_path / "g.safetensors")
    index_text = (src / export.SAFE_INDEX).read_text()
    key = "model.layers.1.mlp.down_proj.weight"
    shard = src / json.loads(index_text)["weight_map"][key]
    good = shard.read_bytes()

    def refused(match: str):
        with pytest.raises(MMToxError, match=match) as info:
            export.export_checkpoint(str(src), tmp_path / "g.safetensors", tmp_path / "out")
        assert "\n" not in str(info.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors", "src"]  # no output, no temporary folder

    # The weight under another name than transformers' layout: in the shard only (index disagrees), then in both.
    tensors = load_file(shard)
    tensors["model.layers.1.feed_forward.w2.weight"] = tensors.pop(key)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    refused(f"places {key} in {shard.name} but that file does not hold it")
    (src / export.SAFE_INDEX).write_text(index_text.replace(key, "model.layers.1.feed_forward.w2.weight"))
    refused("names it differently")
    (src / export.SAFE_INDEX).write_text(index_text)
    shard.unlink()
    refused(f"lacks {shard.name} named by {export.SAFE_INDEX}")
    shard.write_bytes(good[:-8])
    refused("is truncated")
    shard.write_bytes(good)

    # A failure while writing (here: the second folded tensor) removes the temporary output folder.
    calls = []

    def fail_second(source, target, fold, chunk_bytes=None):
        calls.append(fold.key)
        if len(calls) == 2:
            raise MMToxError("disk full")
        return fold_tensor(source, target, fold, chunk_bytes)

    fold_tensor = export.fold_tensor
    monkeypatch.setattr(export, "fold_tensor", fail_second)
    refused("disk full")
    assert calls == ["model.layers.0.mlp.down_proj.weight", key]
    monkeypatch.undo()
    export.export_checkpoint(str(src), tmp_path / "g.safetensors", tmp_path / "out")
    assert (tmp_path / "out" / export.RECORD_FILE).is_file()


def test_other_weight_files_are_not_copied(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=64, num_hidden_layers=2).eval()
    model.save_pretrained(tmp_path / "src")
    make_glasses(model).save(tmp_path / "g.safetensors")
    (tmp_path / "src/pytorch_model.bin").write_bytes(b"would bypass SGM")
    (tmp_path / "src/pytorch_model.bin.index.json").write_text("{}")
    (tmp_path / "src/original").mkdir()
    (tmp_path / "src/original/consolidated.safetensors").write_bytes(b"un-dampened")
    (tmp_path / "src/original/params.json").write_text("{}")
    record = export.export_checkpoint(str(tmp_path / "src"), tmp_path / "g.safetensors", tmp_path / "out")
    skipped = ["original/consolidated.safetensors", "pytorch_model.bin", "pytorch_model.bin.index.json"]
    assert record["not_copied"] == skipped
    assert not any((tmp_path / "out" / f).exists() for f in skipped) and (tmp_path / "out/original/params.json").is_file()
    assert record["weight_files"] == ["model.safetensors"] and record["index_file"] is None


@pytest.mark.slow
def test_embedded_model_export_generates_as_with_hooks(tmp_path):
    """The embedded SmolLM2-LLaVA (540 MB, 30 decoder layers), glasses on every layer: the same answers to image questions."""
    from mmtoxicqa.core.render import render_text_image
    from mmtoxicqa.modeling.loading import build_inputs, generate, load_model

    source = load_model(None)
    glasses = make_glasses(source.model, strength=1.0, model_id=source.model_id)
    glasses.save(tmp_path / "g.safetensors")
    record = export.export_checkpoint(None, tmp_path / "g.safetensors", tmp_path / "out")
    assert len(record["changed_tensors"]) == 30 and record["model"]["id"].startswith("embedded:")
    exported = load_model(str(tmp_path / "out"))
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": render_text_image(text)}, {"type": "text", "text": text}]}]
        for text in ("What does the sign say?", "Write a short poem about the sea.")
    ]
    inputs = build_inputs(exported, conversations)
    with torch.inference_mode():
        with wear(source.model, glasses):
            hooked_logits = source.model(**inputs).logits
            hooked = generate(source, conversations, {"max_new_tokens": 12})
        with wear(source.model, glasses, mode="fused"):
            fused_logits = source.model(**inputs).logits
        folded_logits = exported.model(**inputs).logits
        plain = source.model(**inputs).logits
    assert torch.equal(folded_logits, fused_logits)  # the same weights as fused wearing, so the same logits bit for bit
    # Hooks mode forms the product in another order: 30 layers of float32 rounding, logits up to ~30 (measured: 3e-4).
    torch.testing.assert_close(folded_logits, hooked_logits, rtol=1e-4, atol=1e-3)
    assert (folded_logits - plain).abs().max() > 0.1
    assert generate(exported, conversations, {"max_new_tokens": 12}) == hooked


def test_method_specs_that_work_at_decoding_time_are_refused_with_what_to_serve(tmp_path, capsys):
    """sgm_star = sgm+coca: CoCA recomputes the logits at every step, so only its SGM half can be a
    checkpoint; the refusal says so, names the fix, and comes before any file is read or written."""
    out = tmp_path / "out"
    code = main(["export", "--model", str(tmp_path / "nowhere"), "--glasses", "g.safetensors", "--out", str(out), "--method", "sgm_star"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert (
        "sgm_star (= sgm+coca) cannot be folded" in err and "coca: CoCA recomputes the logits" in err and "export sgm (--method sgm)" in err
    )
    assert export.check_exportable("sgm") == "sgm" and export.check_exportable("aura") == "aura"
    with pytest.raises(MMToxError, match=r"safety_prompt: a prompt; add its system prompt"):
        export.check_exportable("safety_prompt")
    from mmtoxicqa.methods import known_methods

    assert set(known_methods()) - {"sgm_star"} <= set(export.SERVING)  # every method has an answer in the README's table
