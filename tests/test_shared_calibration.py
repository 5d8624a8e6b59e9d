"""Collect once, derive all: SGM's calibration pass also yields the steering vector, equal to the one
a separate pass computes, and ``steer`` then runs no forward pass of its own."""

from __future__ import annotations

import torch
from test_sgm_integration import write_calibration

from mmtoxicqa.methods.steering import steering_vector
from mmtoxicqa.sgm.calibration import calibrate, calibration_items, items_hash, steering_cache_path
from mmtoxicqa.sgm.steering_vectors import default_steer_layer


def count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


def test_one_pass_gives_glasses_and_the_same_steering_vector(tmp_path, monkeypatch, tiny_llava, capsys):
    calib = write_calibration(tmp_path / "calibration.parquet", n_per_class=5)
    from mmtoxicqa.sgm import find_decoder_layers

    n_layers = len(find_decoder_layers(tiny_llava.model)[1])
    assert default_steer_layer(tiny_llava) == n_layers // 2
    layer = 0  # the tiny model's middle layer is its last, whose output comes after SGM's pass stops
    items = calibration_items(calib)
    cache = steering_cache_path(tiny_llava.model_id, items_hash(items, False), {"steer_layer": layer})

    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "separate"))
    separate = steering_vector(tiny_llava, layer, calib, batch_size=4)  # no glasses cached: it calibrates, one pass for both
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "alone"))
    from mmtoxicqa.sgm.calibration import glasses_cache_path, sgm_options

    glasses_cache_path(tiny_llava.model_id, items_hash(items, False), sgm_options()).parent.mkdir(parents=True)
    glasses_cache_path(tiny_llava.model_id, items_hash(items, False), sgm_options()).write_bytes(b"")  # pretend: forces its own pass
    alone = steering_vector(tiny_llava, layer, calib, batch_size=4)
    assert torch.allclose(separate, alone, atol=1e-5)  # pooling and class means agree with the standalone pass

    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "shared"))
    calls, handle = count_forwards(tiny_llava.model)
    try:
        calibrate(tiny_llava, calib, batch_size=4, steer_layer=layer)
        passes = len(calls)
        assert passes == 3  # 10 items in batches of 4
        shared = steering_vector(tiny_llava, layer, calib, batch_size=4)
        assert len(calls) == passes  # steer read the cached vector: no forward pass of its own
    finally:
        handle.remove()
    assert torch.allclose(shared, alone, atol=1e-5)
    err = capsys.readouterr().err
    assert "calibrating on 10 items (5 toxic, 5 non-toxic; image + text, text tokens)" in err
    assert f"steering vector (layer {layer}) from the same pass, cached at {tmp_path / 'shared'}" in err
    assert "glasses cached at" in err and str(cache.name) in err


def test_calibration_limit_is_recorded_in_the_glasses(tmp_path, monkeypatch, tiny_llava):
    calib = write_calibration(tmp_path / "calibration.parquet", n_per_class=5)
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    glasses = calibrate(tiny_llava, calib, batch_size=4, limit=6)
    assert glasses.meta["calibration_limit"] == 6 and glasses.meta["calibration_items"] == 6
    assert glasses.summary()["class_sizes"] == {"non_toxic": 3, "toxic": 3}  # class-balanced subset
    assert "calibration subset: calibration_limit=6 (class-balanced)" in glasses.summary_text()
