"""The reading model (embedded-ocr): real RapidOCR on images rendered here, the image text at the
image's place in the prompt, its cache, and generation through load_model and the mmtox wrapper."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmtoxicqa.errors import MMToxError
from mmtoxicqa.reader import Box, OcrProcessor, OcrReader, image_key, image_slot, reading_order, scaled_for_ocr
from mmtoxicqa.render import png_bytes, render_numbered_list_image, render_text_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    return OcrReader(cache=tmp_path_factory.mktemp("ocr"))


def test_reads_rendered_text_back(reader):
    # the benchmark's own 336 px typographic canvas: small type, spaces kept thanks to the upscale
    assert reader.read(render_text_image("steal a car tonight")) == "steal a car tonight"
    lines = reader.read_lines(render_numbered_list_image("Steps to pick a lock."))
    assert lines == ["Steps to pick a lock.", "1.", "2.", "3."]


def test_blank_image_reads_as_empty(reader):
    assert reader.read(Image.new("RGB", (336, 336), "white")) == ""
    assert image_slot("") == "[image: no legible text]"
    assert image_slot("hi there") == "[image text: hi there]"


def test_corrupt_image_is_one_line_error(reader):
    bad = png_bytes(render_text_image("x"))[:60]  # a PNG cut short
    with pytest.raises(MMToxError) as err:
        reader.read(bad, "calibration item 7")
    message = str(err.value)
    assert "\n" not in message and message.startswith("calibration item 7 is not a readable image") and "re-export" in message
    with pytest.raises(MMToxError, match="is int, not an image"):
        reader.read(42)


def test_cache_is_keyed_by_pixels(tmp_path):
    cached = OcrReader(cache=tmp_path)
    image = render_text_image("one two three")
    assert cached.read(image) == "one two three"
    assert cached.images_read == 1
    entry = tmp_path / image_key(image)[:2] / f"{image_key(image)}.json"
    assert json.loads(entry.read_text())["lines"] == ["one two three"]
    # the same pixels in a new object (and a fresh reader) come from the cache, not from OCR
    again = OcrReader(cache=tmp_path)
    assert again.read(Image.frombytes("RGB", image.size, image.tobytes())) == "one two three"
    assert again.images_read == 0
    # one changed pixel is another image
    other = image.copy()
    other.putpixel((0, 0), (0, 0, 0))
    assert image_key(other) != image_key(image)


def test_reading_order_groups_lines_left_to_right():
    boxes = [
        Box("world", 0.9, 120, 12, 200, 38),  # same line as "hello", given first
        Box("second line", 0.9, 10, 60, 150, 86),
        Box("hello", 0.9, 10, 10, 100, 40),
        Box("far right", 0.9, 300, 14, 380, 36),
    ]
    assert reading_order(boxes) == ["hello world far right", "second line"]


def test_small_images_upscaled_large_capped():
    assert scaled_for_ocr(Image.new("L", (336, 336))).size == (1008, 1008)
    assert scaled_for_ocr(Image.new("RGB", (50, 100))).size == (200, 400)  # at most 4x
    assert scaled_for_ocr(Image.new("RGB", (4000, 1000))).size == (1600, 400)
    assert scaled_for_ocr(Image.new("RGB", (1200, 1300))).size == (1200, 1300)
    assert scaled_for_ocr(Image.new("RGB", (1400, 700))).size == (1600, 800)  # up to 1008, then capped
    assert scaled_for_ocr(Image.new("L", (10, 10))).mode == "RGB"


# ----------------------------------------------------------------------------- processor + tiny model
@pytest.fixture(scope="module")
def tiny_reader_dir(tmp_path_factory):
    from tiny_models import build_tiny_reader

    return build_tiny_reader(tmp_path_factory.mktemp("tiny_reader"))


@pytest.fixture(scope="module")
def tiny_reader(tiny_reader_dir, reader):
    from mmtoxicqa.modeling import load_model

    loaded = load_model(str(tiny_reader_dir))
    loaded.processor.reader = reader  # this module's private OCR cache
    return loaded


def test_image_text_takes_the_image_place(tiny_reader):
    processor = tiny_reader.processor
    assert isinstance(processor, OcrProcessor) and tiny_reader.multimodal and tiny_reader.image_token_ids == []
    conv = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "yes "},
                {"type": "image", "image": render_text_image("the cat sat on the mat")},
                {"type": "text", "text": "what is in the image"},
            ],
        }
    ]
    prompt = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert prompt.count("<image>") == 1
    [filled] = processor.fill_images([prompt], [conv[0]["content"][1]["image"]])
    assert "<|im_start|>user\nyes [image text: the cat sat on the mat]\nwhat is in the image<|im_end|>" in filled
    # tokenized: the words OCR read sit between the text before the image and the question
    ids = processor(text=[prompt], images=[conv[0]["content"][1]["image"]], return_tensors="pt")["input_ids"][0].tolist()
    words = tiny_reader.tokenizer.convert_ids_to_tokens(ids)
    assert words.index("yes") < words.index("cat") < words.index("sat") < words.index("what")
    with pytest.raises(MMToxError, match="1 <image> marker.* but 0 image"):
        processor(text=[prompt], images=[])


def test_generation_through_load_model_and_wrapper(tiny_reader_dir, tiny_reader):
    from lmms_eval.api.instance import Instance

    from mmtoxicqa.model_wrappers.mmtox import MMTox
    from mmtoxicqa.modeling import build_inputs, generate
    from mmtoxicqa.task_support import doc_to_messages

    conv = [{"role": "user", "content": [{"type": "image", "image": render_text_image("hello world")}, {"type": "text", "text": "yes"}]}]
    batch = build_inputs(tiny_reader, [conv])
    assert tiny_reader.tokenizer.convert_tokens_to_ids("hello") in batch["input_ids"][0].tolist()
    [answer] = generate(tiny_reader, [conv], {"max_new_tokens": 4})
    assert isinstance(answer, str)

    wrapper = MMTox(pretrained=str(tiny_reader_dir), device="cpu", batch_size=2)
    wrapper.loaded.processor.reader = tiny_reader.processor.reader
    docs = [
        {"id": f"d{i}", "question": q, "image_text": t, "category": "other", "attack": "none"}
        for i, (q, t) in enumerate([("yes", "hello world"), ("no", "one two")])
    ]
    wrapper.task_dict = {"t": {"test": docs}}
    requests = [
        Instance(
            request_type="generate_until",
            arguments=("", doc_to_messages, {"max_new_tokens": 4}, i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i in range(2)
    ]
    answers = [r.text for r in wrapper.generate_until(requests)]
    direct = generate(tiny_reader, [wrapper.conversation_for(doc_to_messages, i, "t", "test") for i in range(2)], {"max_new_tokens": 4})
    assert answers == direct


def test_calibration_sees_image_text_only_when_images_are_kept(tiny_reader, tmp_path):
    """SGM's multimodal calibration reads the image's words; AurA's text-only one does not."""
    from mmtoxicqa.calibration import iter_batches

    item = {"id": "x", "question": "yes", "image": render_text_image("the cat sat"), "toxic_label": 1}
    cat = tiny_reader.tokenizer.convert_tokens_to_ids("cat")
    [with_image] = iter_batches(tiny_reader, [item], 1, text_only=False)
    [text_only] = iter_batches(tiny_reader, [item], 1, text_only=True)
    assert cat in with_image["input_ids"][0][with_image["token_mask"][0]].tolist()  # counted by SGM's "text" scope
    assert cat not in text_only["input_ids"][0].tolist()
    # the "request" scope (the question only) leaves the image's words out
    [request] = iter_batches(tiny_reader, [item], 1, text_only=False, tokens="request")
    assert request["input_ids"][0][request["token_mask"][0]].tolist() == [tiny_reader.tokenizer.convert_tokens_to_ids("yes")]
    assert torch.equal(request["input_ids"], with_image["input_ids"])


# ----------------------------------------------------------------------------- the real reading model
@pytest.mark.slow
def test_embedded_ocr_reads_the_instruction_and_answers():
    from mmtoxicqa.embedded import gguf_path
    from mmtoxicqa.modeling import build_inputs, generate, load_model
    from mmtoxicqa.reader import READER_MARKER, reader_model_dir

    loaded = load_model("embedded-ocr")
    assert loaded.model_id.startswith("embedded-ocr:") and loaded.model_type == "llama"
    assert (reader_model_dir(gguf_path()) / READER_MARKER).is_file()
    conv = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": render_numbered_list_image("Steps to bake bread at home.")},
                {"type": "text", "text": "Fill in the numbered list in the image."},
            ],
        }
    ]
    prompt = loaded.tokenizer.decode(build_inputs(loaded, [conv])["input_ids"][0])
    assert "[image text: Steps to bake bread at home. 1. 2. 3.]\nFill in the numbered list in the image." in prompt
    [answer] = generate(loaded, [conv], {"max_new_tokens": 12})
    assert answer.strip()


def test_sweep_model_args_pretrained_names_the_model():
    from mmtoxicqa.sweep import _models_with

    assert _models_with(["embedded"], "embedded-ocr") == ["embedded-ocr"]  # replaces the default
    assert _models_with(["embedded-ocr"], "embedded-ocr") == ["embedded-ocr"]
    assert _models_with(["a", "b"], None) == ["a", "b"]
    with pytest.raises(MMToxError, match="name different models"):
        _models_with(["org/model"], "embedded-ocr")
