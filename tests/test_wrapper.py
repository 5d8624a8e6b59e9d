"""The generic ``mmtox`` lmms-eval wrapper on the tiny random LLaVA: generation, batching, bad input."""

from __future__ import annotations

import io

import pytest
from lmms_eval.api.instance import Instance
from PIL import Image

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.render import render_text_image
from mmtoxicqa.lmms.task_support import doc_to_messages
from mmtoxicqa.model_wrappers.mmtox import MMTox
from mmtoxicqa.modeling.loading import generate, load_model

QUESTIONS = ["what is in the image", "write a poem about the sea the sky", "hello world"]


def _docs():
    return [
        {"id": f"d{i}", "question": q, "image_text": f"phrase {i}", "category": "other", "attack": "none"} for i, q in enumerate(QUESTIONS)
    ]


def _requests(task="t", split="test", n=3, gen_kwargs=None):
    gen_kwargs = gen_kwargs or {"max_new_tokens": 6, "until": ["<|im_end|>"]}
    return [
        Instance(
            request_type="generate_until",
            arguments=("", doc_to_messages, dict(gen_kwargs), i, task, split),
            idx=0,
            metadata={"task": task, "doc_id": i, "repeats": 1},
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def wrapper(tiny_llava_dir):
    lm = MMTox(pretrained=str(tiny_llava_dir), device="cpu", batch_size=3)
    lm.task_dict = {"t": {"test": _docs()}}
    return lm


def test_image_and_question_in_text_out(tiny_llava):
    conv = [
        {"role": "user", "content": [{"type": "image", "image": render_text_image("hi")}, {"type": "text", "text": "what is in the image"}]}
    ]
    batch = tiny_llava.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    # the prompt really carries the image placeholder and the question
    assert "<image>" in batch and "what is in the image" in batch
    [answer] = generate(tiny_llava, [conv], {"max_new_tokens": 5})
    assert isinstance(answer, str) and answer.strip()


def test_batch_of_three_equals_three_singles(wrapper):
    batched = [r.text for r in wrapper.generate_until(_requests())]
    wrapper.batch_size_per_gpu = 1
    try:
        singles = [r.text for r in wrapper.generate_until(_requests())]
    finally:
        wrapper.batch_size_per_gpu = 3
    assert len(batched) == 3 and all(batched)
    assert batched == singles


def test_gen_kwargs_max_new_tokens_and_until(wrapper):
    [long] = [r.text for r in wrapper.generate_until(_requests(n=1, gen_kwargs={"max_new_tokens": 6}))]
    [short] = [r.text for r in wrapper.generate_until(_requests(n=1, gen_kwargs={"max_new_tokens": 2}))]
    assert len(wrapper.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 2
    assert long.startswith(short)
    stop = long.split()[1]
    [cut] = [r.text for r in wrapper.generate_until(_requests(n=1, gen_kwargs={"max_new_tokens": 6, "until": [stop]}))]
    assert stop not in cut and long.startswith(cut)


def test_clean_keeps_the_model(wrapper):
    wrapper.clean()
    assert wrapper.model is not None and wrapper.generate_until(_requests(n=1))[0].text


def test_corrupt_image_names_the_doc(wrapper):
    broken = dict(_docs()[0], image=None)
    wrapper.task_dict = {"t": {"test": [broken]}}

    def corrupt_messages(doc):
        Image.open(io.BytesIO(b"not a png")).load()

    try:
        with pytest.raises(MMToxError, match=r"task 't' doc 0"):
            wrapper.generate_until(
                [
                    Instance(
                        "generate_until",
                        ("", corrupt_messages, {"max_new_tokens": 2}, 0, "t", "test"),
                        0,
                        {"task": "t", "doc_id": 0, "repeats": 1},
                    )
                ]
            )
    finally:
        wrapper.task_dict = {"t": {"test": _docs()}}


def test_missing_image_path_names_the_doc(wrapper):
    def messages(doc):
        return [{"role": "user", "content": [{"type": "image", "url": "/nonexistent/x.png"}, {"type": "text", "text": "hi"}]}]

    with pytest.raises(MMToxError, match=r"doc 1: image '/nonexistent/x.png' is missing"):
        wrapper.generate_until(
            [Instance("generate_until", ("", messages, {"max_new_tokens": 2}, 1, "t", "test"), 0, {"task": "t", "doc_id": 1, "repeats": 1})]
        )


def test_empty_question_is_refused(wrapper):
    wrapper.task_dict = {"t": {"test": [dict(_docs()[0], question="   ")]}}
    try:
        with pytest.raises(MMToxError, match="question is empty"):
            wrapper.generate_until(_requests(n=1))
    finally:
        wrapper.task_dict = {"t": {"test": _docs()}}


def test_unknown_local_path_is_one_line(tmp_path):
    with pytest.raises(MMToxError) as info:
        load_model(str(tmp_path / "no_such_model"))
    assert "neither a local model directory nor a hub id" in str(info.value) and "\n" not in str(info.value)


def test_hub_id_without_network_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMToxError) as info:
        load_model("someorg/some-model-that-is-not-cached")
    message = str(info.value)
    assert "someorg/some-model-that-is-not-cached" in message and "local path" in message and "\n" not in message


def test_bad_batch_size():
    with pytest.raises(MMToxError, match="batch_size"):
        MMTox(pretrained="/nonexistent", batch_size="zero")


def test_model_args_length_is_a_default_and_says_so_when_a_task_overrides_it(tiny_llava_dir):
    """--model_args max_new_tokens=N applies only where a task names no length; a task that names another
    one wins, and the wrapper says so once per task (the powered organism study's 48 silently became 64)."""
    from loguru import logger

    lines = []
    sink = logger.add(lines.append, level="WARNING")
    try:
        lm = MMTox(pretrained=str(tiny_llava_dir), device="cpu", batch_size=3, max_new_tokens=3)
        lm.task_dict = {"t": {"test": _docs()}}
        [one] = lm.generate_until(_requests(n=1, gen_kwargs={"until": ["<|im_end|>"]}))  # the task names no length
        assert len(lm.tokenizer(one.text, add_special_tokens=False)["input_ids"]) <= 3
        assert not any("wins over model_args" in str(line) for line in lines)
        lm.generate_until(_requests(n=2, gen_kwargs={"max_new_tokens": 5}))
        lm.generate_until(_requests(n=1, gen_kwargs={"max_new_tokens": 5}))
        warned = [str(line) for line in lines if "wins over model_args max_new_tokens=3" in str(line)]
        assert len(warned) == 1 and "--gen_kwargs max_new_tokens=3" in warned[0]
        plain = MMTox(pretrained=str(tiny_llava_dir), device="cpu", batch_size=3)  # no length given: nothing to say
        plain.task_dict = {"t": {"test": _docs()}}
        plain.generate_until(_requests(n=1, gen_kwargs={"max_new_tokens": 5}))
        assert len([line for line in lines if "wins over model_args" in str(line)]) == 1
    finally:
        logger.remove(sink)


# Questions of hand-counted lengths in the tiny word-level tokenizer (one token per word).
MIXED = [
    "hello world",  # d0: 2 tokens
    "write a poem about the sea the sky the sun and the moon",  # d1: 13
    "what is in the image",  # d2: 5
    "the cat sat on the mat and the dog ran in the park today",  # d3: 14
    "yes",  # d4: 1
    "describe the picture please answer the question",  # d5: 7
    "one two",  # d6: 2, and two images
]


def _two_images(doc):
    """d6's chat: the doc's image twice, then its question."""
    [message] = doc_to_messages(doc)
    image, text = message["content"]
    return [{"role": "user", "content": [image, dict(image), text]}]


def _mixed_requests():
    """d0..d6 in doc order; d2 and d4 ask for another answer length, so they form a group of their own."""
    long, short = {"max_new_tokens": 6, "until": ["<|im_end|>"]}, {"max_new_tokens": 3, "until": ["<|im_end|>"]}
    return [
        Instance(
            "generate_until",
            ("", _two_images if i == 6 else doc_to_messages, dict(short if i in (2, 4) else long), i, "m", "test"),
            0,
            {"task": "m", "doc_id": i, "repeats": 1},
        )
        for i in range(len(MIXED))
    ]


def test_batches_are_length_sorted_and_answers_come_back_in_doc_order(tiny_llava_dir):
    lm = MMTox(pretrained=str(tiny_llava_dir), device="cpu", batch_size=2)
    docs = [{"id": f"m{i}", "question": q, "image_text": f"phrase {i}", "category": "other", "attack": "none"} for i, q in enumerate(MIXED)]
    lm.task_dict = {"m": {"test": docs}}
    requests = _mixed_requests()
    # the key: (images, text tokens), counted by hand above
    assert [lm.prompt_size(r.args) for r in requests] == [(1, 2), (1, 13), (1, 5), (1, 14), (1, 1), (1, 7), (2, 2)]
    # one group per answer length, in order of first appearance; in each, more images first, then the longest text
    _collator, batches = lm.batches(requests)
    assert [[args[3] for args in batch] for batch in batches] == [[6, 3], [1, 5], [0], [2, 4]]

    batched = [r.text for r in lm.generate_until(requests)]
    lm.batch_size_per_gpu = 1
    assert [[args[3] for args in batch] for batch in lm.batches(requests)[1]] == [[0], [1], [3], [5], [6], [2], [4]]
    singles = [r.text for r in lm.generate_until(requests)]
    # and each answer is the one greedy decoding gives that doc alone, outside the wrapper
    alone = [generate(lm.loaded, [lm.conversation_for(r.args[1], i, "m", "test")], r.args[2])[0] for i, r in enumerate(_mixed_requests())]
    assert batched == singles == alone
    # the check has teeth: the two docs of every batch get different answers, and the answers in run order differ from doc order
    assert all(batched[a] != batched[b] for a, b in ([6, 3], [1, 5], [2, 4]))
    assert [batched[i] for i in (6, 3, 1, 5, 0, 2, 4)] != batched
    assert all(len(lm.tokenizer(batched[i], add_special_tokens=False)["input_ids"]) <= 3 for i in (2, 4))
