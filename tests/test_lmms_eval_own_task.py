"""One of lmms-eval's own utility tasks (POPE: its prompt, its scorer) through our wrapper.

The POPE data lives on the hub, so the test writes four docs in POPE's schema to a local
parquet file and points a task YAML at it that ``include``s lmms-eval's installed
``pope.yaml``: prompt, generation settings and metrics all come from lmms-eval itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = [  # question_id, question, answer
    ("q0", "Is there a red square in the image?", "yes"),
    ("q1", "Is there a dog in the image?", "no"),
    ("q2", "Is there text in the image?", "yes"),
    ("q3", "Is there a square in the image?", "yes"),
]


@pytest.fixture
def pope_task_dir(tmp_path) -> Path:
    import datasets
    import lmms_eval
    from PIL import Image

    images = [Image.new("RGB", (32, 32), color) for color in ("red", "white", "black", "blue")]
    data = datasets.Dataset.from_dict(
        {
            "question_id": [d[0] for d in DOCS],
            "question": [d[1] for d in DOCS],
            "answer": [d[2] for d in DOCS],
            "category": ["random"] * len(DOCS),
            "image": images,
        },
        features=datasets.Features(
            {
                "question_id": datasets.Value("string"),
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "category": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),
    )
    data.to_parquet(str(tmp_path / "pope_local.parquet"))
    upstream = Path(lmms_eval.__file__).parent / "tasks" / "pope" / "pope.yaml"
    assert upstream.is_file(), f"lmms-eval {lmms_eval.__file__} ships no tasks/pope/pope.yaml"
    (tmp_path / "pope_local.yaml").write_text(
        f"include: {upstream}\ntask: pope_local\ndataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'pope_local.parquet'}\n"
    )
    return tmp_path


def test_pope_prompt_and_scorer_run_through_our_wrapper(pope_task_dir, tiny_llava_dir):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mmtoxicqa.model_wrappers.mmtox import MMTox

    wrapper = MMTox(pretrained=str(tiny_llava_dir), device="cpu", batch_size=2, max_new_tokens=4)
    result = simple_evaluate(
        model=wrapper,
        tasks=["pope_local"],
        log_samples=True,
        verbosity="WARNING",
        bootstrap_iters=0,
        task_manager=TaskManager("WARNING", include_path=str(pope_task_dir)),
    )
    metrics = {k.split(",")[0]: v for k, v in result["results"]["pope_local"].items()}
    samples = result["samples"]["pope_local"]
    assert len(samples) == len(DOCS)
    # POPE's own prompt reached the model: the question plus lmms-eval's post_prompt
    prompts = [s["arguments"][0] for s in samples]
    assert all(p.endswith("\nAnswer the question using a single word or phrase.") for p in prompts), prompts
    # POPE's scorer: yes_ratio is the share of "yes" ground truths (3 of 4); accuracy is exact match of the
    # lower-cased, stripped answer, recomputed here from the logged responses.
    assert metrics["pope_yes_ratio"] == pytest.approx(0.75)
    answers = {DOCS[s["doc_id"]][0]: str(s["filtered_resps"][0]).lower().strip() for s in samples}
    expected_accuracy = sum(answers[qid] == gold for qid, _, gold in DOCS) / len(DOCS)
    assert metrics["pope_accuracy"] == pytest.approx(expected_accuracy)
    assert all(answers[qid] for qid, _, _ in DOCS)  # every doc got a (non-empty) answer
