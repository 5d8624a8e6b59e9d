"""Reliability (#12): files get the umask's permissions, and other faults that must not go unnoticed."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from mmtoxicqa.atomic import atomic_dir, atomic_path, write_json_atomic


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
    from mmtoxicqa.atomic import current_umask, umask_mode

    with umask(0o027):
        assert current_umask() == 0o027 and current_umask() == 0o027
        assert umask_mode() == 0o640 and umask_mode(directory=True) == 0o750


def test_glasses_and_built_data_get_the_umask_permissions(tmp_path):
    from mmtoxicqa.data.builder import build
    from mmtoxicqa.data.fixtures import write_fixture_sources
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
