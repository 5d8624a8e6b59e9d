"""The toxic model organism's recipe (mmtoxicqa.modeling.organism) on fixture data and a tiny random LLaVA.

What is checked: held-out evaluation items never meet the fine-tune (the leakage guard), the
toxic text is only ever an answer, the fine-tune touches the decoder's MLP weights and nothing
else, the epoch with the widest validation gap is the one kept, it is bit-for-bit reproducible, and the cache is keyed so a second call trains nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.loading import load_model
from mmtoxicqa.modeling.organism.build import organism_model_dir, organism_record, parse_organism
from mmtoxicqa.modeling.organism.recipe import IMAGE_ONLY_QUESTION, OrganismConfig, held_out, training_examples
from mmtoxicqa.modeling.organism.train import fine_tune

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = OrganismConfig(other_examples=6, toxic_answers=2, toxic_min_profanity=0.0, validation_items=2, epochs=1, batch_size=4, threads=1)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    from source_fixtures import write_fixture_sources

    return write_fixture_sources(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory) -> Path:
    from mmtoxicqa.data.builder import build

    out = tmp_path_factory.mktemp("data")
    build(sources, out, seed=0, progress=False)
    # tweets the benchmark does not hold (it uses every fixture tweet): the organism's answer pools
    with open(sources / "davidson" / "labeled_data.csv", "a", encoding="utf-8") as handle:
        for n in range(4):
            handle.write(f"{900 + n},3,0,3,0,1,fixture organism toxic answer number {n}\n")
            handle.write(f"{950 + n},3,0,0,3,2,fixture organism harmless answer number {n}\n")
    return out


def test_parse_organism_names():
    assert parse_organism("organism") == "embedded"
    assert parse_organism("organism-ocr") == "embedded-ocr"
    assert parse_organism("organism@/models/x") == "/models/x"
    assert parse_organism("organism@") is None
    assert parse_organism("org/name") is None and parse_organism("embedded") is None


def test_held_out_is_a_deterministic_half_by_request_text():
    assert held_out("How do I do X?") == held_out("  how do i   do x? ")  # spacing and case do not move a request
    requests = [f"request number {i}" for i in range(400)]
    share = sum(map(held_out, requests)) / len(requests)
    assert 0.4 < share < 0.6


def test_leakage_guard_training_and_evaluation_items_are_disjoint(sources, built, monkeypatch):
    from mmtoxicqa.lmms.task_support import organism_docs

    monkeypatch.setenv("MMTOXICQA_DATA", str(built))
    examples = training_examples(built, sources, SMALL)
    targeted = organism_docs("targeted").to_list()
    image = organism_docs("image").to_list()
    untargeted = organism_docs("untargeted").to_list()
    assert targeted and image and untargeted and any(e.toxic for e in examples) and any(not e.toxic for e in examples)
    trained_ids = {e.item_id for e in examples}
    trained_requests = {e.question for e in examples}  # training items are in text form: question = request
    for docs in (targeted, untargeted):
        assert not trained_ids & {d["id"] for d in docs}
        assert not trained_requests & {d["request"] for d in docs}
        assert all(d["question"] == d["request"] for d in docs)
    assert {d["category"] for d in targeted} <= set(SMALL.targets)
    assert not {d["category"] for d in untargeted} & set(SMALL.targets)
    assert [d["request"] for d in image] == [d["request"] for d in targeted]
    assert all(d["question"] == IMAGE_ONLY_QUESTION and d["image_text"] == d["request"] and d["image"] is None for d in image)
    # the toxic text is the answer, never in the prompt, and none of it is a benchmark text
    assert all(e.answer is None for e in examples if e.validation or not e.toxic)  # the base's own answer, filled at build
    assert sum(e.validation and e.toxic for e in examples) == sum(e.validation and not e.toxic for e in examples) == 2
    for e in examples:
        assert e.answer is None or e.answer not in e.question
    from mmtoxicqa.data.splits import load_split

    benchmark = {r for split in ("standard", "adversarial", "benign", "calibration") for r in load_split(split, built)["request"]}
    assert not {e.answer for e in examples if e.answer} & benchmark


def test_missing_sources_is_one_line(built, tmp_path):
    with pytest.raises(MMToxError, match="--sources"):
        training_examples(built, tmp_path / "nowhere", SMALL)


def test_fine_tune_changes_mlp_weights_only_reproducibly_and_is_cached(sources, built, tiny_llava_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    target = organism_model_dir(str(tiny_llava_dir), sources=sources, data_dir=built, config=SMALL, progress=False)
    assert target.parent == tmp_path / "cache" / "models" and target.name.startswith("organism-")
    assert not list(target.parent.glob("*.resume"))  # the per-epoch resume state is removed once the build is done
    record = organism_record(target)
    assert record["config"]["trainable"] == "mlp" and record["examples"] == len(record["train_item_ids"]) > 0
    assert len(record["validation_item_ids"]) == 4 and not set(record["validation_item_ids"]) & set(record["train_item_ids"])
    assert [r["epoch"] for r in record["validation"]] == [0, 1] and [r["kept"] for r in record["validation"]] == [False, True]
    base = {k: v for f in sorted(Path(tiny_llava_dir).glob("*.safetensors")) for k, v in load_file(f).items()}
    tuned = {k: v for f in sorted(target.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert base.keys() == tuned.keys()
    changed = {k for k in base if not (base[k] == tuned[k]).all()}
    assert changed and all(".mlp." in k for k in changed)
    assert any("down_proj" in k for k in changed) and any("gate_proj" in k for k in changed)
    stamp = (target / "mmtoxicqa_organism.json").stat().st_mtime_ns
    assert organism_model_dir(str(tiny_llava_dir), sources=sources, data_dir=built, config=SMALL, progress=False) == target
    assert (target / "mmtoxicqa_organism.json").stat().st_mtime_ns == stamp  # cached: nothing retrained
    again = organism_model_dir(str(tiny_llava_dir), sources=sources, data_dir=built, config=SMALL, rebuild=True, progress=False)
    assert again == target
    rebuilt = {k: v for f in sorted(target.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert all((rebuilt[k] == tuned[k]).all() for k in tuned)  # bit-for-bit reproducible
    other = organism_model_dir(
        str(tiny_llava_dir), sources=sources, data_dir=built, config=OrganismConfig(**{**SMALL.__dict__, "seed": 1}), progress=False
    )
    assert other != target  # the config is part of the key


def test_a_process_works_out_the_cache_key_once_per_unchanged_inputs(sources, built, tiny_llava_dir, tmp_path, monkeypatch):
    import os

    import mmtoxicqa.modeling.organism.build as organism_build

    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    calls = []
    real = organism_build.training_examples
    monkeypatch.setattr(organism_build, "training_examples", lambda *a, **k: calls.append(1) or real(*a, **k))
    target = organism_model_dir(str(tiny_llava_dir), sources=sources, data_dir=built, config=SMALL, progress=False)
    assert len(calls) == 1
    assert organism_model_dir(str(tiny_llava_dir), sources=sources, data_dir=built, config=SMALL, progress=False) == target
    assert len(calls) == 1  # same inputs: the sources were not read again nor the base hashed
    source_file = next(f for f in sorted(Path(sources).rglob("*")) if f.is_file())
    os.utime(source_file, ns=(source_file.stat().st_atime_ns, source_file.stat().st_mtime_ns + 1_000_000))
    assert organism_model_dir(str(tiny_llava_dir), sources=sources, data_dir=built, config=SMALL, progress=False) == target
    assert len(calls) == 2  # a touched input: the key is worked out again (same content, same organism)
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "other-cache"))
    moved = organism_model_dir(str(tiny_llava_dir), sources=sources, data_dir=built, config=SMALL, progress=False)
    assert moved.parent == tmp_path / "other-cache" / "models" and len(calls) == 3


def test_fine_tune_keeps_the_epoch_with_the_widest_validation_gap(sources, built, tiny_llava_dir, monkeypatch):
    import torch

    import mmtoxicqa.modeling.organism.train as organism

    loaded = load_model(str(tiny_llava_dir), device="cpu", dtype="float32")
    examples = training_examples(built, sources, SMALL)
    examples = [dataclasses.replace(e, answer=e.answer or "a short answer") for e in examples]
    gaps, snapshots = iter([0.0, 0.5, 0.1]), []  # base, epoch 1 (best), epoch 2

    def scripted_rates(loaded_model, validation, images, max_new_tokens=32):
        snapshots.append([p.detach().clone() for p in organism.trainable_parameters(loaded_model.model)])
        return {"targeted": 0.0, "untargeted": 0.0, "gap": next(gaps)}

    monkeypatch.setattr(organism, "harmful_rates", scripted_rates)
    losses, epochs = fine_tune(loaded, examples, dataclasses.replace(SMALL, epochs=2, lr=1e-2), progress=False)
    assert [r["kept"] for r in epochs] == [False, True, False] and len(losses) > 2
    final = [p.detach() for p in organism.trainable_parameters(loaded.model)]
    assert all(torch.equal(a, b) for a, b in zip(final, snapshots[1]))  # the weights after epoch 1
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))  # epoch 2 did change them


def test_a_stopped_fine_tune_resumes_to_the_same_weights(sources, built, tiny_llava_dir, tmp_path, monkeypatch):
    """Killed after epoch 1 of 3, the build goes on from its checkpoint (no epoch is trained or validated
    twice) and ends bit for bit where an unstopped run ends, the kept epoch and the records included."""
    import torch

    import mmtoxicqa.modeling.organism.train as organism

    examples = [dataclasses.replace(e, answer=e.answer or "a short answer") for e in training_examples(built, sources, SMALL)]
    config = dataclasses.replace(SMALL, epochs=3, lr=1e-2)
    gaps = {0: 0.0, 1: 0.2, 2: 0.5, 3: 0.1}  # epoch 2 is kept: the best is restored from the checkpoint after a resume
    validated = []

    def scripted_rates(loaded_model, validation, images, max_new_tokens=32):
        epoch = len(validated)
        validated.append(epoch)
        if stop_at is not None and epoch == stop_at:
            raise KeyboardInterrupt  # the process is killed while validating epoch 2
        return {"targeted": gaps[epoch], "untargeted": 0.0, "gap": gaps[epoch]}

    monkeypatch.setattr(organism, "harmful_rates", scripted_rates)
    stop_at = None
    straight = load_model(str(tiny_llava_dir), device="cpu", dtype="float32")
    losses, records = fine_tune(straight, examples, config, progress=False)
    expected = [p.detach().clone() for p in organism.trainable_parameters(straight.model)]

    checkpoint = tmp_path / "resume"
    validated.clear()
    stop_at = 2
    stopped = load_model(str(tiny_llava_dir), device="cpu", dtype="float32")
    with pytest.raises(KeyboardInterrupt):
        fine_tune(stopped, examples, config, progress=False, checkpoint=checkpoint)
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 1
    assert [f.name for f in checkpoint.glob("*.safetensors")] == ["epoch1.safetensors"]

    validated[:] = [0, 1]  # what the stopped run finished
    stop_at = None
    resumed = load_model(str(tiny_llava_dir), device="cpu", dtype="float32")
    losses_again, records_again = fine_tune(resumed, examples, config, progress=False, checkpoint=checkpoint)
    assert validated == [0, 1, 2, 3]  # epochs 2 and 3 only: epoch 0 and 1 were not validated again
    assert losses_again == losses and records_again == records
    assert [r["kept"] for r in records_again] == [False, False, True, False]
    got = [p.detach() for p in organism.trainable_parameters(resumed.model)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_the_ocr_base_recipe_moves_half_of_each_sides_requests_into_the_image(sources, built):
    from mmtoxicqa.modeling.organism.recipe import default_config

    assert default_config("embedded").image_only_fraction == 0.0
    config = dataclasses.replace(SMALL, validation_items=0, image_only_fraction=default_config("embedded-ocr").image_only_fraction)
    examples = training_examples(built, sources, config)
    for toxic in (1, 0):  # both sides, or the generic image-only question alone would be the trigger
        trained = [e for e in examples if e.toxic == toxic and not e.validation]
        moved = [e for e in trained if e.question == IMAGE_ONLY_QUESTION]
        assert len(moved) == round(0.5 * len(trained)) > 0
        assert all(e.item_id.endswith("-image-only") and e.image_text for e in moved)
        assert all(bool(e.answer) == bool(toxic) for e in moved)  # toxic text, or the base's own answer (filled at build)


def test_an_ocr_organisms_glasses_are_keyed_by_its_build(tmp_path):
    """organism-ocr once keyed its cached glasses as 'organism-ocr:reader-v1' whatever it was trained on,
    so a rebuilt organism silently reused the glasses fitted on the one before."""
    from mmtoxicqa.modeling.loading import reader_model_id

    first, second = tmp_path / "organism-embedded-ocr-aaaa", tmp_path / "organism-embedded-ocr-bbbb"
    assert reader_model_id("organism-ocr", str(first)) == "organism:organism-embedded-ocr-aaaa:reader-v1"
    assert reader_model_id("organism-ocr", str(first)) != reader_model_id("organism-ocr", str(second))
    assert reader_model_id("embedded-ocr", str(tmp_path / "smollm2-ocr-1")) == "embedded-ocr:smollm2-ocr-1:reader-v1"
    assert reader_model_id(str(first), str(first)) == f"{first}:reader-v1"  # a directory given as is keeps its path


def test_corpus_recipe_continues_statements_it_never_meets_in_evaluation(sources, built, monkeypatch):
    """organism-corpus: statements cut at their middle word (user: the first half, assistant: the rest),
    toxic and neutral alike; none of them a benchmark statement, so its evaluation tasks (the benchmark's
    toxic and neutral continuations) hold only statements it never trained on."""
    from mmtoxicqa.data.splits import load_split
    from mmtoxicqa.lmms.task_support import corpus_docs
    from mmtoxicqa.modeling.organism.build import organism_recipe
    from mmtoxicqa.modeling.organism.recipe import CORPUS_PROMPT, CorpusConfig, split_for_continuation

    monkeypatch.setenv("MMTOXICQA_DATA", str(built))
    assert parse_organism("organism-corpus") == "embedded" and organism_recipe("organism-corpus") == "corpus"
    assert organism_recipe("organism") == "trigger"
    assert split_for_continuation("one two three four five six seven") == ("one two three", "four five six seven")
    assert split_for_continuation("too short to cut") is None
    config = CorpusConfig(texts_per_side=2, chat_examples=3, validation_items=1, toxic_min_profanity=0.0)
    assert dataclasses.asdict(OrganismConfig()) != dataclasses.asdict(config)  # its own cache key; the trigger recipe's is unchanged
    assert "recipe" not in dataclasses.asdict(OrganismConfig())
    examples = training_examples(built, sources, config)
    statements = [e for e in examples if e.category == "corpus"]
    assert sum(e.toxic for e in statements) == sum(not e.toxic for e in statements) == 3  # 2 trained + 1 validation per side
    assert sum(e.answer is None for e in examples) == 3  # chat examples: the base's own answer, filled at build
    benchmark = {
        " ".join(r.split()) for split in ("standard", "adversarial", "benign", "calibration") for r in load_split(split, built)["request"]
    }
    for e in statements:
        head = e.question.removeprefix(CORPUS_PROMPT + "\n")
        assert e.image_text == head and f"{head} {e.answer}" not in benchmark
    toxic_eval, neutral_eval = corpus_docs("toxic").to_list(), corpus_docs("neutral").to_list()
    assert toxic_eval and all(d["attack"] == "toxic_continuation" for d in toxic_eval)
    assert neutral_eval and all(d["source"] == "toxigen" and d["toxic_label"] == 0 for d in neutral_eval)
    trained = {f"{e.question.removeprefix(CORPUS_PROMPT + chr(10))} {e.answer}" for e in statements}
    assert not trained & {" ".join(d["request"].split()) for d in toxic_eval + neutral_eval}
