"""Reliability (#12): files get the umask's permissions, and other faults that must not go unnoticed."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from mmtoxicqa.core.atomic import atomic_dir, atomic_path, write_json_atomic


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------- file modes
@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_atomic_writes_get_the_umask_permissions(tmp_path, mask, file_mode, dir_mode):
    with umask(mask):
        write_json_atomic(tmp_path / "a" / "cell.json", {"x": 1})
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"data")
        with atomic_dir(tmp_path / "cache" / "model") as tmp:
            (tmp / "weights.bin").write_bytes(b"w")
            (tmp / "sub").mkdir()
    assert _mode(tmp_path / "a" / "cell.json") == file_mode
    assert _mode(tmp_path / "b.bin") == file_mode
    assert _mode(tmp_path / "cache" / "model") == dir_mode
    assert _mode(tmp_path / "cache" / "model" / "weights.bin") == file_mode
    assert _mode(tmp_path / "cache" / "model" / "sub") == dir_mode
    assert not [p for p in tmp_path.rglob("*.tmp")]  # nothing temporary left behind


def test_current_umask_reads_without_changing():
    from mmtoxicqa.core.atomic import current_umask, umask_mode

    with umask(0o027):
        assert current_umask() == 0o027 and current_umask() == 0o027
        assert umask_mode() == 0o640 and umask_mode(directory=True) == 0o750


def test_glasses_and_built_data_get_the_umask_permissions(tmp_path):
    from source_fixtures import write_fixture_sources

    from mmtoxicqa.data.builder import build
    from mmtoxicqa.sgm import fit_glasses
    from mmtoxicqa.sgm.toy import tiny_llama, trigger_batches

    model = tiny_llama(vocab_size=48, num_hidden_layers=2, intermediate_size=40, seed=1)
    batches, labels, _, _ = trigger_batches(6, 5, 48, seq_len=8, batch_size=6, seed=2)
    glasses = fit_glasses(model, batches, labels, progress=False)
    root = write_fixture_sources(tmp_path / "src")
    with umask(0o027):
        path = glasses.save(tmp_path / "glasses.safetensors")
        build(root, tmp_path / "out", progress=False, warn=lambda _m: None)
    assert _mode(path) == 0o640
    for name in ("standard.parquet", "calibration.parquet", "datasheet.json", "DATASHEET.md"):
        assert _mode(tmp_path / "out" / name) == 0o640, name


# --------------------------------------------------------------------------- crashes -> one-line errors
def _one_line(info: pytest.ExceptionInfo) -> str:
    text = str(info.value)
    assert text and "\n" not in text
    return text


@pytest.mark.parametrize(
    ("gen_kwargs", "message"),
    [
        ({"max_new_tokens": "abc"}, "max_new_tokens='abc' is not usable; it must be an integer >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens=0 is not usable"),
        ({"max_new_tokens": 2.5}, "max_new_tokens=2.5 is not usable"),
        ({"num_beams": "x"}, "num_beams='x' is not usable"),
        ({"temperature": "hot"}, "temperature='hot' is not usable; it must be a number >= 0"),
        ({"temperature": 0.7, "top_p": 2}, "top_p=2 is not usable; it must be a number in [0, 1]"),
    ],
)
def test_bad_generation_settings_are_one_line(gen_kwargs, message):
    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.modeling.loading import generation_settings

    with pytest.raises(MMToxError) as info:
        generation_settings(gen_kwargs)
    assert message in _one_line(info)


def test_generation_settings_still_accept_lmms_eval_strings():
    from mmtoxicqa.modeling.loading import generation_settings

    settings, stops = generation_settings({"max_new_tokens": "24", "temperature": "0", "do_sample": "false", "until": "\n\n"})
    assert settings == {"max_new_tokens": 24, "do_sample": False, "num_beams": 1} and stops == ["\n\n"]


def test_wrapper_max_new_tokens_abc_is_one_line_before_loading():
    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.model_wrappers.mmtox import MMTox

    with pytest.raises(MMToxError) as info:
        MMTox(pretrained="/nonexistent/model", max_new_tokens="abc")
    assert "max_new_tokens='abc' is not usable" in _one_line(info)


def test_wrapper_gen_kwargs_max_new_tokens_abc_is_one_line(tiny_llava_dir):
    from lmms_eval.api.instance import Instance

    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.lmms.task_support import doc_to_messages
    from mmtoxicqa.model_wrappers.mmtox import MMTox

    lm = MMTox(pretrained=str(tiny_llava_dir), device="cpu", batch_size=1)
    lm.task_dict = {"t": {"test": [{"id": "d0", "question": "hi", "image_text": "x", "category": "other", "attack": "none"}]}}
    request = Instance(
        "generate_until", ("", doc_to_messages, {"max_new_tokens": "abc"}, 0, "t", "test"), 0, {"task": "t", "doc_id": 0, "repeats": 1}
    )
    with pytest.raises(MMToxError) as info:
        lm.generate_until([request])
    assert "max_new_tokens='abc' is not usable" in _one_line(info)


@pytest.mark.parametrize(
    ("dtype", "message"),
    [
        ("int8", "dtype='int8' is not supported; use one of auto, float32, float16, bfloat16"),
        ("float64x", "dtype='float64x' is not supported"),
    ],
)
def test_bad_dtype_is_one_line_naming_the_accepted_ones(tiny_llava_dir, dtype, message):
    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.modeling.loading import check_dtype, load_model

    with pytest.raises(MMToxError) as info:
        load_model(str(tiny_llava_dir), dtype=dtype)
    assert message in _one_line(info)
    import torch

    assert check_dtype("bf16") is torch.bfloat16 and check_dtype("torch.float16") is torch.float16 and check_dtype("auto") == "auto"


def test_cuda_without_cuda_is_one_line(tiny_llava_dir):
    import torch

    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.modeling.loading import load_model

    with pytest.raises(MMToxError) as info:
        load_model(str(tiny_llava_dir), device="gpu0")
    assert "device='gpu0' is not a device; use cpu, cuda, cuda:N or mps" in _one_line(info)
    if torch.cuda.is_available():
        with pytest.raises(MMToxError, match="CUDA device"):
            load_model(str(tiny_llava_dir), device=f"cuda:{torch.cuda.device_count()}")
        return
    with pytest.raises(MMToxError) as info:
        load_model(str(tiny_llava_dir), device="cuda")
    assert "device='cuda' but CUDA is not available on this machine" in _one_line(info) and "use device=cpu" in str(info.value)


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """Point the benchmark at an empty folder: any calibration attempt fails with 'data not found'."""
    monkeypatch.setenv("MMTOXICQA_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("sgm", {"calibration_limit": "abc"}, "calibration_limit='abc' is not usable; it must be an integer >= 1 (or omit it)"),
        ("aura", {"calibration_limit": "0"}, "calibration_limit='0' is not usable"),
        ("steer", {"calibration_limit": "abc"}, "calibration_limit='abc' is not usable"),
        ("steer", {"steer_layer": "mid"}, "steer_layer='mid' is not usable"),
        ("det0", {"det0_top_k": "many"}, "det0_top_k='many' is not usable; it must be an integer >= 0"),
        ("damp", {"damp_factor": "nan"}, "damp_factor='nan' is out of range"),
        ("sgm", {"sgm_mode": "glue"}, "sgm_mode='glue' must be 'hooks' or 'fused'"),
    ],
)
def test_bad_method_options_are_refused_before_calibrating(tiny_llava, no_data, spec, options, message):
    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.methods import build_method

    with pytest.raises(MMToxError) as info:
        build_method(spec, tiny_llava, **options)
    assert message in _one_line(info)


def test_conflicting_composition_is_refused_before_any_calibration(tiny_llava, no_data):
    """sgm+aura both dampen neurons: refused from the declared slots, before SGM calibrates (with no
    data here, a calibration attempt would fail with 'data not found' instead)."""
    import time

    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.methods import build_method

    for spec, first, second in (
        ("sgm+aura", "sgm", "aura"),
        ("det0+damp", "det0", "damp"),
        ("steer+safety_prompt+adashield_s", "safety_prompt", "adashield_s"),
    ):
        start = time.perf_counter()
        with pytest.raises(MMToxError) as info:
            build_method(spec, tiny_llava)
        assert f"cannot compose {first!r} with {second!r}: both set the " in _one_line(info)
        assert time.perf_counter() - start < 1.0


def test_declared_slots_are_the_slots_the_parts_take(tiny_llava, tmp_path):
    from mmtoxicqa.methods import build_method, declared_slots, known_methods
    from mmtoxicqa.methods.neurons import NEURON_SLOT

    names = [n for n in known_methods() if n != "sgm_star"]
    declared = declared_slots(names)
    assert all(declared[n] is not None for n in names), declared
    assert all(declared[n] == (NEURON_SLOT,) for n in ("sgm", "aura", "det0", "damp"))
    words = tmp_path / "words.txt"
    words.write_text("darn\n")
    options = {"bad_words": {"bad_words_path": str(words)}}
    for name in ("vanilla", "safety_prompt", "adashield_s", "coca", "self_debias", "bad_words", "ecso"):
        method = build_method(name, tiny_llava, **options.get(name, {}))
        assert sorted({p.slot for p in method.parts}) == sorted(declared[name]), name


def test_corrupt_image_in_built_data_names_the_item(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from source_fixtures import write_fixture_sources

    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.data.builder import build
    from mmtoxicqa.lmms.task_support import split_docs

    out = tmp_path / "out"
    build(write_fixture_sources(tmp_path / "src"), out, progress=False, warn=lambda _m: None)
    path = out / "adversarial.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    victim = rows[5]["id"]
    rows[5]["image"] = {"bytes": rows[5]["image"]["bytes"][:60], "path": None}  # truncated PNG
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    monkeypatch.setenv("MMTOXICQA_DATA", str(out))
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as lmms-eval sets it on import
    with pytest.raises(MMToxError) as info:
        split_docs("adversarial")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    message = _one_line(info)
    assert f"{path}: item {victim}: image is corrupt and cannot be decoded" in message and f"--out {out}" in message
    assert len(split_docs("standard")) == 46  # the other splits are fine


def test_corrupt_image_in_a_calibration_file_names_the_item(tmp_path):
    import datasets
    from source_fixtures import tiny_png

    from mmtoxicqa.core.errors import MMToxError
    from mmtoxicqa.data.schema import FEATURES
    from mmtoxicqa.sgm.calibration import calibration_items

    rows = [
        {
            "id": f"cal-{i}",
            "split": "calibration",
            "category": "other",
            "attack": "none",
            "source": "extra",
            "question": f"q {i}",
            "image": {"bytes": tiny_png() if i != 2 else b"\x89PNG\r\n\x1a\n broken", "path": None},
            "image_text": "",
            "request": f"q {i}",
            "toxic_label": i % 2,
        }
        for i in range(4)
    ]
    path = tmp_path / "calibration.parquet"
    datasets.Dataset.from_list(rows, features=datasets.Features({**FEATURES, "image": datasets.Image(decode=False)})).to_parquet(str(path))
    with pytest.raises(MMToxError) as info:
        calibration_items(path)
    assert f"{path}: item cal-2: image is corrupt" in _one_line(info)
