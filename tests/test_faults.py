"""Issue #28's faults, each tried as a user would meet it: cells of different models sharing a file,
a cut or damaged samples/results file in ``rescore``, a 1 MB question, unscored answers after
``rescore``, an export killed with SIGKILL, an export to a folder that cannot be written, and the
``--extra`` warning's example item and too-large image. Real tiny models, real subprocesses."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from mmtoxicqa.cli import main
from mmtoxicqa.core.errors import MMToxError

REPO = Path(__file__).resolve().parent.parent
QUIET = {"MMTOXICQA_DATA": "seed", "MMTOXICQA_FLUENCY_MODEL": "none", "OMP_NUM_THREADS": "1", "LMMS_EVAL_PLUGINS": ""}


def one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmtoxicqa: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- 1. sweep cells
def test_cells_whose_names_read_alike_get_their_own_files(tmp_path):
    from mmtoxicqa.study.sweep import cell_path

    assert cell_path(tmp_path, "org/name", "sgm", "t") != cell_path(tmp_path, "org_name", "sgm", "t")
    assert cell_path(tmp_path, "/a/x/m", "sgm", "t") != cell_path(tmp_path, "/b/x_m", "sgm", "t")
    assert cell_path(tmp_path, "m", "sgm", "t", "pooling=mean") != cell_path(tmp_path, "m", "sgm", "t", "pooling mean")
    assert cell_path(tmp_path, "m", "sgm", "t").name.startswith("m__sgm__t__")  # still readable


def test_a_sweep_never_reuses_another_models_cell(tmp_path, tiny_llava_dir, monkeypatch, capsys):
    """Two model folders whose paths read alike (``x/m``, ``x_m``) each get their cell; a cell left
    under the pre-#28 name is recognised by its content and reused, not recomputed."""
    from mmtoxicqa.study.sweep import cell_path, legacy_cell_path, run_sweep

    monkeypatch.setenv("MMTOXICQA_DATA", "seed")
    monkeypatch.setenv("MMTOXICQA_FLUENCY_MODEL", "none")
    first, second = tmp_path / "x" / "m", tmp_path / "x_m"
    shutil.copytree(tiny_llava_dir, first)
    shutil.copytree(tiny_llava_dir, second)
    out = tmp_path / "sweep"
    task = "mm_toxic_qa_seed"
    run = dict(limit=1, batch_size=1, device="cpu", max_new_tokens=2)
    [path] = run_sweep([str(first)], ["vanilla"], [task], out, **run)
    legacy = legacy_cell_path(out, str(first), "vanilla", task)
    assert legacy == legacy_cell_path(out, str(second), "vanilla", task)  # the old names collide
    os.replace(path, legacy)  # as an older mmtoxicqa left it
    computed = json.loads(legacy.read_text())
    capsys.readouterr()
    paths = run_sweep([str(first), str(second)], ["vanilla"], [task], out, **run)
    printed = capsys.readouterr().out
    assert "1/2 cells already finished" in printed
    cells = [json.loads(p.read_text()) for p in paths]
    assert [c["model"] for c in cells] == [str(first), str(second)]
    assert cells[0] == computed and not legacy.exists()  # adopted under its unique name, not recomputed
    assert paths == [cell_path(out, str(m), "vanilla", task) for m in (first, second)]


def test_reuse_compares_the_cells_model_method_task_and_tag(tmp_path):
    from mmtoxicqa.study.sweep import identity, stale_fields

    provenance = {"limit": 1, "model_args": "", "judge": "profanity", "threshold": 0.5, "data": {"path": "seed", "sha256": "a"}}
    cell = {"format": "mmtoxicqa-cell/1", **identity("org/name", "sgm", "t", "a=b"), **provenance}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cell))
    assert stale_fields(path, {**provenance, **identity("org/name", "sgm", "t", "a=b")}) is None
    assert stale_fields(path, {**provenance, **identity("org_name", "sgm", "t", "a=b")}) == ["model"]
    assert stale_fields(path, {**provenance, **identity("org/name", "sgm", "t", "a b")}) == ["tag"]


# ----------------------------------------------------------------------------- rescore: 2, 8, 10
@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_llava_dir) -> Path:
    """A real lmms_eval run of the tiny LLaVA on four seed items, answers logged, profanity judge."""
    out = tmp_path_factory.mktemp("run") / "out"
    cmd = [sys.executable, "-c", "import sys; from mmtoxicqa.lmms.evaluate import main; sys.exit(main())"]
    cmd += ["--model", "mmtox", "--model_args", f"pretrained={tiny_llava_dir},device=cpu", "--tasks", "mm_toxic_qa_seed"]
    cmd += ["--limit", "4", "--batch_size", "4", "--gen_kwargs", "max_new_tokens=3", "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=out.parent, env={**os.environ, **QUIET}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _copy_run(run: Path, to: Path) -> tuple[Path, Path]:
    shutil.copytree(run, to)
    [results] = list(to.rglob("*_results.json"))
    [samples] = list(to.rglob("*_samples_*.jsonl"))
    return results, samples


def test_rescore_refuses_a_samples_file_cut_at_a_line_boundary(logged_run, tmp_path, capsys):
    _, samples = _copy_run(logged_run, tmp_path / "run")
    lines = samples.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    samples.write_text("".join(lines[:2]))  # cut between two samples: every line is valid JSON
    err = one_line_error(["rescore", str(tmp_path / "run"), "--judge", "profanity", "--out", str(tmp_path / "o")], capsys)
    assert str(samples) in err and "holds 2 samples but the run's results JSON records 4" in err
    assert not (tmp_path / "o").exists()


def test_rescore_names_a_damaged_samples_or_results_file(logged_run, tmp_path, capsys):
    results, samples = _copy_run(logged_run, tmp_path / "a")
    samples.write_text(samples.read_text()[:-40])  # cut inside the last sample
    err = one_line_error(["rescore", str(tmp_path / "a"), "--judge", "profanity", "--out", str(tmp_path / "o")], capsys)
    assert f"{samples} line 4 is not valid JSON" in err
    results, _ = _copy_run(logged_run, tmp_path / "b")
    results.write_text(results.read_text()[:200])
    err = one_line_error(["rescore", str(tmp_path / "b"), "--judge", "profanity", "--out", str(tmp_path / "o")], capsys)
    assert f"{results} is not valid JSON" in err and "rerun lmms_eval" in err


def test_rescore_exits_3_like_lmms_eval_when_answers_stay_unscored(logged_run, tmp_path, monkeypatch, capsys):
    from local_http import serving
    from test_evaluate_cli import MuddledJudge

    from mmtoxicqa.lmms.evaluate import EXIT_UNSCORED
    from mmtoxicqa.scoring import clear_judges

    with serving(MuddledJudge, watchdog_s=300) as url:
        monkeypatch.setenv("MMTOXICQA_LLM_JUDGE_URL", f"{url}/v1")
        monkeypatch.setenv("MMTOXICQA_LLM_JUDGE_MODEL", "muddled")
        monkeypatch.setenv("MMTOXICQA_LLM_JUDGE_CACHE", "0")
        clear_judges()
        try:
            code = main(["rescore", str(logged_run), "--judge", "profanity,llm", "--out", str(tmp_path / "o")])
        finally:
            clear_judges()
    assert code == EXIT_UNSCORED == 3
    err = capsys.readouterr().err
    assert "4 answer(s) left unscored (4 in mm_toxic_qa_seed by llm)" in err
    [results] = list((tmp_path / "o").rglob("*_results.json"))  # the scores it has are written
    assert json.loads(results.read_text())["results"]["mm_toxic_qa_seed"]["judges,none"]["llm"]["unscored"] == 4


# ----------------------------------------------------------------------------- 3. a 1 MB question
def test_a_1mb_question_is_refused_at_build_time_naming_the_item(tmp_path):
    from source_fixtures import tiny_png, write_fixture_sources

    from mmtoxicqa.data.builder import MAX_QUESTION_CHARS, build

    (tmp_path / "ok.png").write_bytes(tiny_png())
    items = [{"image": "ok.png", "question": "What is this?", "category": "other"}]
    items.append({"image": "ok.png", "question": "Why " * (1 << 18), "category": "other"})
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    with pytest.raises(MMToxError, match=rf"--extra file {path} line 2: the question is 1,048,575 characters, over the 4,000"):
        build(write_fixture_sources(tmp_path / "src"), tmp_path / "out", extra=path, progress=False, warn=lambda _m: None)
    assert MAX_QUESTION_CHARS == 4000 and not (tmp_path / "out" / "standard.parquet").exists()


def test_a_1mb_question_is_cut_to_the_context_with_one_warning(tiny_llava_dir):
    from lmms_eval.api.instance import Instance

    from mmtoxicqa.lmms.task_support import doc_to_messages
    from mmtoxicqa.model_wrappers.mmtox import MMTox
    from mmtoxicqa.modeling.loading import build_inputs, context_length, fit_to_context

    huge = "Tell me why. " * 80_000  # 1 MB
    docs = [
        {"id": f"d{i}", "question": q, "image_text": "a sign", "category": "other", "attack": "none"}
        for i, q in enumerate([huge, "hello there", huge])
    ]
    lm = MMTox(pretrained=str(tiny_llava_dir), device="cpu", batch_size=3)
    lm.task_dict = {"t": {"test": docs}}
    requests = [
        Instance(
            "generate_until", ("", doc_to_messages, {"max_new_tokens": 4}, i, "t", "test"), 0, {"task": "t", "doc_id": i, "repeats": 1}
        )
        for i in range(3)
    ]
    from loguru import logger  # lmms-eval's eval_logger

    said: list[str] = []
    sink = logger.add(lambda message: said.append(message.record["message"]), level="WARNING")
    start = time.perf_counter()
    try:
        answers = lm.generate_until(requests)
    finally:
        logger.remove(sink)
    assert len(answers) == 3 and time.perf_counter() - start < 120
    said = [m for m in said if "cut to fit" in m]
    assert len(said) == 1 and said[0].startswith("2 of 3 prompts were longer than")
    limit = context_length(lm.loaded)
    conversation = lm.conversation_for(doc_to_messages, 0, "t", "test")
    fitted, cut = fit_to_context(lm.loaded, conversation, 4)
    assert cut and limit - 4 - 8 <= build_inputs(lm.loaded, [fitted])["input_ids"].shape[1] <= limit - 4
    assert fit_to_context(lm.loaded, lm.conversation_for(doc_to_messages, 1, "t", "test"), 4)[1] is False


# ----------------------------------------------------------------------------- 9, 10. export
@pytest.fixture
def exportable(tmp_path):
    from test_export import make_glasses

    from mmtoxicqa.sgm.toy import tiny_llama

    torch.manual_seed(0)
    llama = tiny_llama(vocab_size=64, num_hidden_layers=2).eval()
    llama.save_pretrained(tmp_path / "llama")
    make_glasses(llama).save(tmp_path / "llama.g")
    return lambda out, *extra: [
        "export",
        "--model",
        str(tmp_path / "llama"),
        "--glasses",
        str(tmp_path / "llama.g"),
        "--out",
        str(out),
        *extra,
    ]


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from mmtoxicqa.core.atomic import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (Path(tmp) / "config.json").write_text("{}")
    os.kill(os.getpid(), signal.SIGKILL)
"""

KILLED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from mmtoxicqa.core.atomic import atomic_dir
target, real = Path(sys.argv[1]), os.replace
def replace(src, dst):
    if Path(dst) == target:  # the new folder is about to be renamed in: die here
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
with atomic_dir(target) as tmp:
    (Path(tmp) / "config.json").write_text("{}")
"""


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_an_export_killed_with_sigkill_leaves_no_temporary_behind(tmp_path, exportable, capsys):
    out = tmp_path / "exp"
    proc = _python(KILLED_MID_WRITE, str(out))
    assert proc.returncode == -9 and len(hidden(tmp_path)) == 1  # the kill left its temporary
    assert main(exportable(out)) == 0
    assert hidden(tmp_path) == [] and (out / "sgm_export.json").is_file()


def test_overwrite_killed_between_renames_keeps_the_old_export(tmp_path, exportable):
    from mmtoxicqa.core.atomic import clean_stale
    from mmtoxicqa.methods.export import read_record

    out = tmp_path / "exp"
    assert main(exportable(out)) == 0
    before = read_record(out)
    proc = _python(KILLED_BETWEEN_RENAMES, str(out))
    assert proc.returncode == -9
    clean_stale(out)  # what the next export (or any atomic write of that folder) does first
    assert read_record(out) == before and hidden(tmp_path) == []


@pytest.mark.skipif(sys.platform != "linux", reason="paths that cannot be written on Linux, even by root")
def test_export_to_a_folder_that_cannot_be_written_is_one_line(tmp_path, exportable, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    err = one_line_error(exportable(tmp_path / "afile" / "exp"), capsys)
    assert "cannot write" in err and "is a file, not a folder" in err
    err = one_line_error(exportable("/proc/mmtoxicqa-no-such-folder/exp"), capsys)
    assert "/proc/mmtoxicqa-no-such-folder" in err and "create the missing folder" in err
    if os.geteuid() == 0:
        readonly = Path("/sys/mmtoxicqa-export")  # root may write anywhere but in sysfs
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        readonly = tmp_path / "ro" / "exp"
    err = one_line_error(exportable(readonly), capsys)
    assert "cannot write" in err and ("may not write there" in err or "read-only" in err)


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, exportable, capsys, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "sendfile", full)  # the kernel copy shutil.copyfile uses: the disk is full
    monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", True, raising=False)
    err = one_line_error(exportable(tmp_path / "exp"), capsys)
    assert "No space left on device" in err and "free disk space" in err and str(tmp_path / "exp") in err
    assert hidden(tmp_path) == [] and not (tmp_path / "exp").exists()


# ----------------------------------------------------------------------------- minor: --extra warning
def _png_header(width: int, height: int) -> bytes:
    """A PNG of width x height as far as its header says (no pixel data needed to be refused)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def test_extra_warning_names_an_example_item_and_a_too_large_image(tmp_path):
    from source_fixtures import tiny_png

    from mmtoxicqa.data.loaders import extra_report, load_extra

    (tmp_path / "ok.png").write_bytes(tiny_png())
    (tmp_path / "huge.png").write_bytes(_png_header(20000, 20000))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    items = [
        {"image": "ok.png", "question": "What is this?", "category": "other"},
        {"image": "huge.png", "question": "And this?", "category": "other"},
        {"image": "bad.png", "question": "This?", "category": "other"},
        {"image": "ok.png", "question": "Bad?", "category": "harmful"},
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    _, result, _ = load_extra(path)
    report = extra_report(result)
    assert "1 image_too_large [first at line 2; e.g. '20000×20000'; the image is too large" in report
    assert "1 corrupt_image [first at line 3; the image does not decode]" in report
    assert "1 unknown_category [first at line 4; e.g. 'harmful'" in report
