"""The reading model (embedded-ocr): real RapidOCR on images rendered here, the image text at the
image's place in the prompt, its cache, and generation through load_model and the mmtox wrapper."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.render import png_bytes, render_numbered_list_image, render_text_image
from mmtoxicqa.modeling.reader import Box, OcrProcessor, OcrReader, image_key, image_slot, reading_order, scaled_for_ocr

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


@pytest.mark.parametrize("lenient_pil", [False, True], ids=["pil-default", "lmms-eval-truncated-images-on"])
def test_corrupt_image_is_one_line_error(reader, lenient_pil, monkeypatch):
    from PIL import ImageFile

    # lmms-eval turns LOAD_TRUNCATED_IMAGES on for the whole process; the reader must still refuse a cut-short file
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_pil)
    bad = png_bytes(render_text_image("x"))[:60]  # a PNG cut short
    with pytest.raises(MMToxError) as err:
        reader.read(bad, "calibration item 7")
    message = str(err.value)
    assert "\n" not in message and message.startswith("calibration item 7 is not a readable image") and "re-export" in message
    with pytest.raises(MMToxError, match="is int, not an image"):
        reader.read(42)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is lenient_pil  # put back as it was


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
    assert scaled_for_ocr(Image.new("L", (336, 336))).size == (720, 720)
    assert scaled_for_ocr(Image.new("RGB", (50, 100))).size == (200, 400)  # at most 4x
    assert scaled_for_ocr(Image.new("RGB", (4000, 1000))).size == (1600, 400)
    assert scaled_for_ocr(Image.new("RGB", (1200, 1300))).size == (1200, 1300)
    assert scaled_for_ocr(Image.new("RGB", (2000, 500))).size == (1600, 400)  # up to 720, then capped
    assert scaled_for_ocr(Image.new("L", (10, 10))).mode == "RGB"


# ----------------------------------------------------------------------------- processor + tiny model
@pytest.fixture(scope="module")
def tiny_reader_dir(tmp_path_factory):
    from tiny_models import build_tiny_reader

    return build_tiny_reader(tmp_path_factory.mktemp("tiny_reader"))


@pytest.fixture(scope="module")
def tiny_reader(tiny_reader_dir, reader):
    from mmtoxicqa.modeling.loading import load_model

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

    from mmtoxicqa.lmms.task_support import doc_to_messages
    from mmtoxicqa.model_wrappers.mmtox import MMTox
    from mmtoxicqa.modeling.loading import build_inputs, generate

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
    from mmtoxicqa.sgm.calibration import iter_batches

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
    """The real reading model through the mmtox wrapper: the rendered instruction is in the decoder's
    prompt at the image's place, and the wrapper's answers equal load_model + generate."""
    from lmms_eval.api.instance import Instance

    from mmtoxicqa.lmms.task_support import doc_to_messages
    from mmtoxicqa.model_wrappers.mmtox import MMTox
    from mmtoxicqa.modeling.embedded import gguf_path
    from mmtoxicqa.modeling.loading import build_inputs, generate
    from mmtoxicqa.modeling.reader import READER_MARKER, reader_model_dir

    wrapper = MMTox(pretrained="embedded-ocr", device="cpu", batch_size=2)
    loaded = wrapper.loaded
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

    docs = [
        {
            "id": "d0",
            "question": "What does the image say?",
            "image_text": "plant tomatoes in spring",
            "category": "other",
            "attack": "none",
        }
    ]
    wrapper.task_dict = {"t": {"test": docs}}
    request = Instance(
        request_type="generate_until",
        arguments=("", doc_to_messages, {"max_new_tokens": 12}, 0, "t", "test"),
        idx=0,
        metadata={"task": "t", "doc_id": 0, "repeats": 1},
    )
    [answer] = [r.text for r in wrapper.generate_until([request])]
    assert answer.strip()
    assert [answer] == generate(loaded, [wrapper.conversation_for(doc_to_messages, 0, "t", "test")], {"max_new_tokens": 12})


def test_sweep_model_args_pretrained_names_the_model():
    from mmtoxicqa.study.sweep import _models_with

    assert _models_with(["embedded"], "embedded-ocr") == ["embedded-ocr"]  # replaces the default
    assert _models_with(["embedded-ocr"], "embedded-ocr") == ["embedded-ocr"]
    assert _models_with(["a", "b"], None) == ["a", "b"]
    with pytest.raises(MMToxError, match="name different models"):
        _models_with(["org/model"], "embedded-ocr")


def test_export_of_a_reader_is_a_reader_that_generates_as_with_hooks(tiny_reader_dir, tiny_reader, tmp_path):
    """Glasses folded into a reading model's weights: the export keeps mmtoxicqa_reader.json, so it loads
    with the OCR processor, and its logits equal the source wearing the glasses."""
    from mmtoxicqa.cli import main
    from mmtoxicqa.modeling.loading import build_inputs, load_model
    from mmtoxicqa.sgm import Glasses, discover_sites, wear

    sites = discover_sites(tiny_reader.model)
    auroc = torch.rand(sum(s.width for s in sites), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    meta = {"model_id": tiny_reader.model_id, "model_type": "llama", "decoder_layers": 2, "pooling": "max", "layers": None}
    glasses = Glasses.from_auroc(sites, auroc, strength=0.9, meta=meta)
    glasses.save(tmp_path / "g.safetensors")
    out = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_reader_dir), "--glasses", str(tmp_path / "g.safetensors"), "--out", str(out)]) == 0
    exported = load_model(str(out))
    assert isinstance(exported.processor, OcrProcessor)
    exported.processor.reader = tiny_reader.processor.reader
    conv = [{"role": "user", "content": [{"type": "image", "image": render_text_image("steal a car")}, {"type": "text", "text": "yes"}]}]
    inputs = build_inputs(exported, [conv])
    with torch.inference_mode():
        with wear(tiny_reader.model, glasses):
            hooked = tiny_reader.model(**inputs).logits
        plain = tiny_reader.model(**inputs).logits
        folded = exported.model(**inputs).logits
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, hooked)  # the glasses really change the output
