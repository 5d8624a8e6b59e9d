"""Model-parallel loading (#26 item 1): a tiny LLaVA split by an accelerate device map (layers offloaded
to disk, as a 70B is across GPUs and CPU) calibrates and wears SGM exactly like the one-device model,
and every loading option is checked before a weight is read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from test_sgm_integration import write_calibration

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.loading import build_inputs, generate, load_model
from mmtoxicqa.sgm import fit_glasses
from mmtoxicqa.sgm.wear import wear

pytestmark = pytest.mark.usefixtures("one_thread")

# The vision tower and the first decoder layer live on disk (meta placeholders between passes);
# the rest on the CPU: accelerate's dispatch hooks move weights and activations as on several GPUs.
SPLIT = {
    "model.vision_tower": "disk",
    "model.multi_modal_projector": "cpu",
    "model.language_model.embed_tokens": "cpu",
    "model.language_model.layers.0": "disk",
    "model.language_model.layers.1": "cpu",
    "model.language_model.norm": "cpu",
    "model.language_model.rotary_emb": "cpu",
    "lm_head": "cpu",
}
TEXTS = ["how to steal a car", "describe the picture", "pick a lock now", "hello there friend", "i hate you idiot", "nice day today"]


def _conversations():
    return [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": Image.new("RGB", (32, 32), (40 * i, 10, 10))}, {"type": "text", "text": t}],
            }
        ]
        for i, t in enumerate(TEXTS)
    ]


@pytest.fixture(scope="module")
def split_llava(tiny_llava_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("offload")
    return load_model(str(tiny_llava_dir), device_map=json.dumps(SPLIT), offload_folder=str(folder))


def test_split_model_calibrates_and_wears_like_one_device(tiny_llava, split_llava):
    assert split_llava.model.model.language_model.layers[0].mlp.down_proj.weight.device.type == "meta"  # really offloaded
    conversations, labels = _conversations(), [1, 0, 1, 0, 1, 0]

    def batches(loaded):
        return [dict(build_inputs(loaded, conversations[i : i + 2])) for i in range(0, 6, 2)]

    one = fit_glasses(tiny_llava, batches(tiny_llava), labels, progress=False)
    split = fit_glasses(split_llava, batches(split_llava), labels, progress=False)
    assert torch.equal(one.auroc_all(), split.auroc_all()) and torch.equal(one.alpha_all(), split.alpha_all())
    assert int((one.alpha_all() < 1).sum()) > 0
    gen = {"max_new_tokens": 6}
    with wear(tiny_llava.model, one):
        expected = generate(tiny_llava, conversations[:2], gen)
    with wear(split_llava.model, split):
        assert generate(split_llava, conversations[:2], gen) == expected
    assert generate(split_llava, conversations[:2], gen) != expected  # the glasses came off
    with pytest.raises(MMToxError, match=r"layer 0 .*offloaded by the device_map.*mode='hooks'"):
        wear(split_llava.model, split, mode="fused").__enter__()
    assert not hasattr(split_llava.model, "_mmtoxicqa_sgm_worn")


def test_fused_mode_folds_into_the_resident_layers_of_a_split_model(tiny_llava, split_llava):
    """Glasses on layer 1 only (resident on its device while layer 0 is offloaded): fused wearing
    folds into that part's own weights, agrees with hooks and restores the weights."""
    conversations = _conversations()
    batches = [dict(build_inputs(tiny_llava, conversations[i : i + 3])) for i in (0, 3)]
    glasses = fit_glasses(tiny_llava, batches, [1, 0, 1, 0, 1, 0], layers="1", progress=False)
    gen = {"max_new_tokens": 6}
    with wear(tiny_llava.model, glasses):
        hooked = generate(tiny_llava, conversations[:3], gen)
    weight = split_llava.model.model.language_model.layers[1].mlp.down_proj.weight
    before = weight.clone()
    with wear(split_llava.model, glasses, mode="fused"):
        assert not torch.equal(weight, before)
        assert generate(split_llava, conversations[:3], gen) == hooked
    assert torch.equal(weight, before)


def test_calibrate_cli_with_a_device_map_writes_the_same_glasses(tiny_llava_dir, tmp_path, monkeypatch):
    from mmtoxicqa.cli import main
    from mmtoxicqa.sgm.glasses import Glasses

    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    calib = write_calibration(tmp_path / "calibration.parquet", n_per_class=4)
    (tmp_path / "split.json").write_text(json.dumps(SPLIT))
    common = [
        "calibrate",
        "--model",
        str(tiny_llava_dir),
        "--data",
        str(calib),
        "--batch-size",
        "3",
        "--dtype",
        "float32",
        "--attn-implementation",
        "eager",
    ]
    assert main([*common, "--out", str(tmp_path / "one.safetensors")]) == 0
    assert main([*common, "--out", str(tmp_path / "split.safetensors"), "--device-map", str(tmp_path / "split.json"),
                 "--offload-folder", str(tmp_path / "off")]) == 0  # fmt: skip
    one, split = Glasses.load(tmp_path / "one.safetensors"), Glasses.load(tmp_path / "split.safetensors")
    assert torch.equal(one.auroc_all(), split.auroc_all())


def test_options_are_refused_before_the_weights_are_read(tiny_llava_dir, tmp_path, monkeypatch):
    """A folder with config and processor but no weights: every refusal below must come first."""
    from mmtoxicqa.model_wrappers import mmtox

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_llava_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    cases = [
        ({"device_map": "everywhere"}, r"device_map='everywhere' is not usable"),
        ({"device_map": '{"lm_head": "gpu7"}'}, r"'gpu7' is not a device"),
        ({"device_map": '{"lm_head": "disk"}'}, r"offload_folder"),
        ({"max_memory": "0:20GiB"}, r"max_memory only applies with device_map"),
        ({"device_map": "auto", "max_memory": "cpu=20GiB"}, r"device:amount"),
        ({"attn_implementation": "flash"}, r"use one of eager, sdpa, flash_attention_2"),
        ({"attn_implementation": "flash_attention_2"}, r"flash_attention_2 needs a CUDA device"),
        ({"min_pixels": 0}, r"min_pixels=0 must be a positive number"),
        ({"min_pixels": 4000, "max_pixels": 1000}, r"above max_pixels"),
        ({"max_pixels": 50176}, r"max_pixels set but .* no pixel budget"),  # LLaVA's processor resizes to a fixed size
    ]
    for options, message in cases:
        with pytest.raises(MMToxError, match=message):
            load_model(str(no_weights), **options)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(mmtox, "load_model", no_loading)
    with pytest.raises(MMToxError, match=r"unknown option\(s\) device_mapp for method=sgm"):
        mmtox.MMTox(pretrained=str(tiny_llava_dir), method="sgm", device_mapp="auto")
    with pytest.raises(MMToxError, match=r"attn_implementation='flash'"):
        mmtox.MMTox(pretrained=str(tiny_llava_dir), attn_implementation="flash")


def test_wrapper_and_sweep_take_the_loading_options(tiny_llava_dir, tmp_path):
    from mmtoxicqa.model_wrappers.mmtox import MMTox
    from mmtoxicqa.study.sweep import _options_for

    (tmp_path / "map.json").write_text(json.dumps(SPLIT))
    extra = {"device_map": str(tmp_path / "map.json"), "attn_implementation": "sdpa", "sgm_strength": "0.5"}
    assert _options_for("vanilla", extra) == {"device_map": str(tmp_path / "map.json"), "attn_implementation": "sdpa"}
    lm = MMTox.create_from_arg_string(
        f"pretrained={tiny_llava_dir},device_map={tmp_path / 'map.json'},offload_folder={tmp_path / 'off'},attn_implementation=sdpa"
    )
    assert set(lm.model.hf_device_map) == set(SPLIT) and lm.model.config._attn_implementation == "sdpa"
    assert lm.device == torch.device("cpu")
    inline = json.dumps({k: "cpu" for k in SPLIT})  # lmms-eval keeps a braced JSON value whole
    assert MMTox.create_from_arg_string(f"pretrained={tiny_llava_dir},device_map={inline}").loaded.device == torch.device("cpu")


def test_qwen2_vl_pixel_budget_is_taken_by_its_image_processor(tmp_path):
    """Qwen2-VL's full processor needs torchvision (absent on CPU wheels here), so its image processor
    is loaded alone, with the same keyword arguments load_model passes to AutoProcessor."""
    from types import SimpleNamespace

    from transformers import AutoImageProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmtoxicqa.modeling.placement import check_pixel_limits, check_placement

    Qwen2VLImageProcessorPil().save_pretrained(tmp_path)
    placement = check_placement("cpu", min_pixels=16 * 28 * 28, max_pixels=64 * 28 * 28)
    image_processor = AutoImageProcessor.from_pretrained(tmp_path, **placement.processor_kwargs())
    check_pixel_limits(SimpleNamespace(image_processor=image_processor), placement, "qwen2-vl")  # taken: no error
    big = Image.new("RGB", (896, 896))
    grid = image_processor(images=[big], return_tensors="pt")["image_grid_thw"][0]
    assert int(grid[1] * grid[2]) * 14 * 14 <= 64 * 28 * 28 < 896 * 896  # the image was shrunk to the budget
    default = AutoImageProcessor.from_pretrained(tmp_path)(images=[big], return_tensors="pt")["image_grid_thw"][0]
    assert int(default.prod()) > int(grid.prod())
    with pytest.raises(MMToxError, match=r"max_pixels=1000 was not taken"):
        check_pixel_limits(SimpleNamespace(image_processor=image_processor), check_placement("cpu", max_pixels=1000), "qwen2-vl")
