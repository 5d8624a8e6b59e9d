"""The reading model ``embedded-ocr``: the embedded SmolLM2 given the text that OCR reads in each image.

A LATE-FUSION (OCR) model, not a trained vision encoder. The embedded model (mmtoxicqa.modeling.embedded)
does not read its images: its vision tower is seeded random, so typographic attacks (FigStep,
MM-SafetyBench TYPO: the request is written in the image) never reach its decoder. Here RapidOCR
(PP-OCRv4 detection + recognition, ONNX weights shipped inside the rapidocr-onnxruntime wheel)
reads each image, and the words it reads take the image's place in the chat as
``[image text: ...]``, next to the question. The decoder is SmolLM2-135M-Instruct as a plain causal
LM (same weights as the embedded model's language model). Only legible text crosses over: colours,
objects, faces and layout beyond reading order are lost.

Interface: ``load_model("embedded-ocr")`` (or a directory holding ``mmtoxicqa_reader.json``) gives a
LoadedModel whose ``processor`` works like an HF multimodal processor: ``apply_chat_template`` puts
an ``<image>`` marker where each image is, and ``processor(text=..., images=...)`` replaces the
markers in order with what OCR read and tokenizes. OCR results are cached on disk under
``$MMTOXICQA_CACHE/ocr``, keyed by the sha256 of the image's pixels and the reader settings.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmtoxicqa.core import settings
from mmtoxicqa.core.atomic import write_json_atomic
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_bytes, sha256_file
from mmtoxicqa.core.image_io import strict_decoding
from mmtoxicqa.core.paths import cache_dir
from mmtoxicqa.modeling.embedded import CHAT_TEMPLATE as EMBEDDED_CHAT_TEMPLATE
from mmtoxicqa.modeling.model_cache import built_once, models_dir

log = logging.getLogger(__name__)

READER_ALIAS = "embedded-ocr"
READER_NAME = "smollm2-135m-instruct-ocr"
READER_MARKER = "mmtoxicqa_reader.json"  # a model directory with this file is loaded as a reading model
IMAGE_MARKER = "<image>"
RAPIDOCR_VERSION = "1.4.4"
# Reader settings: part of the OCR cache key, so changing any of them re-reads every image.
# Smaller images are upscaled: the recogniser drops word spaces in small type (336 px canvases at 1x). Measured on the
# 150 typographic items: 720 px and 1008 px read MM-SafetyBench TYPO equally well (mean word recall 0.958 / 0.960),
# and 1008 px read FigStep's 760 px images worse (0.992 / 0.973) and took longer; results/reader/README.md.
MIN_SIDE = 720
MAX_UPSCALE = 4.0
MAX_SIDE = 1600  # larger images are downscaled: detection cost grows with the pixel count
MIN_SCORE = 0.5  # recognition confidence below which a detected line is dropped
READER_SETTINGS = {"version": 1, "min_side": MIN_SIDE, "max_upscale": MAX_UPSCALE, "max_side": MAX_SIDE, "min_score": MIN_SCORE}

# The embedded model's ChatML template with an ``<image>`` marker per image part; the processor fills each slot.
CHAT_TEMPLATE = EMBEDDED_CHAT_TEMPLATE


def image_slot(text: str) -> str:
    """What the decoder sees in place of one image."""
    return f"[image text: {text}]" if text else "[image: no legible text]"


# ----------------------------------------------------------------------------- OCR
@dataclass
class Box:
    """One detected text line: its recognised text and its axis-aligned extent in the image."""

    text: str
    score: float
    left: float
    top: float
    right: float
    bottom: float

    @property
    def height(self) -> float:
        return max(self.bottom - self.top, 1.0)

    @property
    def middle(self) -> float:
        return (self.top + self.bottom) / 2


def reading_order(boxes: list[Box]) -> list[str]:
    """Group boxes into lines (a box joins a line when its vertical middle lies within the line's
    span) and read lines top to bottom, boxes in a line left to right."""
    lines: list[list[Box]] = []
    for box in sorted(boxes, key=lambda b: (b.middle, b.left)):
        for line in lines:
            top = min(b.top for b in line)
            bottom = max(b.bottom for b in line)
            if top <= box.middle <= bottom:
                line.append(box)
                break
        else:
            lines.append([box])
    lines.sort(key=lambda line: min(b.top for b in line))
    return [" ".join(b.text for b in sorted(line, key=lambda b: b.left)) for line in lines]


def scaled_for_ocr(image: Image.Image) -> Image.Image:
    """RGB copy sized for the detector/recogniser: small images upscaled, large ones capped."""
    image = image.convert("RGB")
    width, height = image.size
    factor = 1.0
    if min(width, height) < MIN_SIDE:
        factor = min(MIN_SIDE / min(width, height), MAX_UPSCALE)
    if max(width, height) * factor > MAX_SIDE:
        factor = MAX_SIDE / max(width, height)
    if factor != 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def as_image(image, name: str = "image") -> Image.Image:
    """A decoded PIL image from a PIL image, bytes, or a path; a corrupt one is a one-line error."""
    if isinstance(image, Image.Image):
        return image
    try:
        if isinstance(image, (bytes, bytearray)):
            opened = Image.open(io.BytesIO(image))
        elif isinstance(image, (str, os.PathLike)):
            opened = Image.open(image)
        else:
            raise MMToxError(f"{name} is {type(image).__name__}, not an image; pass a PIL image, image bytes or a file path")
        with strict_decoding():
            opened.load()
        return opened
    except MMToxError:
        raise
    except Exception as exc:
        raise MMToxError(f"{name} is not a readable image ({type(exc).__name__}); re-export it as PNG/JPEG or drop the item") from None


def image_key(image: Image.Image) -> str:
    """Cache key of an image: sha256 of its mode, size and pixel bytes, plus the reader settings."""
    header = json.dumps({"mode": image.mode, "size": image.size, "settings": READER_SETTINGS}, sort_keys=True).encode()
    return sha256_bytes(header + b"\0" + image.tobytes())


def _threads() -> int:
    value = settings.text("MMTOXICQA_OCR_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        threads = -1
    if threads < 1:
        raise MMToxError(f"MMTOXICQA_OCR_THREADS={value!r} must be an integer >= 1 (ONNX Runtime threads per OCR model)")
    return threads


class OcrReader:
    """RapidOCR with reading-order grouping, image scaling and an on-disk cache of what it read."""

    def __init__(self, cache: Path | None = None, use_cache: bool = True):
        self.cache = Path(cache) if cache is not None else cache_dir() / "ocr"
        self.use_cache = use_cache
        self._engine = None
        self._lock = threading.Lock()
        self.seconds = 0.0  # time spent in OCR itself (cache hits excluded)
        self.images_read = 0

    def engine(self):
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR  # optional: only the reading model needs it
            except ImportError as exc:
                raise MMToxError(
                    f"embedded-ocr needs rapidocr-onnxruntime ({exc.name or exc} is missing); run `make setup` or "
                    f"`pip install pyclipper shapely onnxruntime opencv-python-headless && pip install --no-deps rapidocr-onnxruntime=={RAPIDOCR_VERSION}`"
                ) from None
            threads = _threads()
            kwargs = {f"{stage}_{knob}": threads for stage in ("det", "cls", "rec") for knob in ("intra_op_num_threads",)}
            kwargs.update({f"{stage}_inter_op_num_threads": 1 for stage in ("det", "cls", "rec")})
            self._engine = RapidOCR(**kwargs)
        return self._engine

    def _cache_file(self, key: str) -> Path:
        return self.cache / key[:2] / f"{key}.json"

    def read_lines(self, image, name: str = "image") -> list[str]:
        """The text lines OCR finds in ``image``, in reading order (empty list: no legible text)."""
        image = as_image(image, name)
        key = image_key(image)
        path = self._cache_file(key)
        if self.use_cache and path.is_file():
            try:
                return list(json.loads(path.read_text())["lines"])
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("ignoring unreadable OCR cache entry %s", path)

        scaled = scaled_for_ocr(image)
        start = time.perf_counter()
        with self._lock:  # ONNX sessions are shared; one image at a time
            result, _ = self.engine()(np.asarray(scaled))
        self.seconds += time.perf_counter() - start
        self.images_read += 1
        boxes = []
        for points, text, score in result or []:
            text = " ".join(str(text).split())
            if not text or float(score) < MIN_SCORE:
                continue
            xs = [float(p[0]) for p in points]
            ys = [float(p[1]) for p in points]
            boxes.append(Box(text, float(score), min(xs), min(ys), max(xs), max(ys)))
        lines = reading_order(boxes)
        if self.use_cache:
            write_json_atomic(path, {"lines": lines, "settings": READER_SETTINGS, "size": list(image.size)})
        return lines

    def read(self, image, name: str = "image") -> str:
        """All the text OCR finds in ``image`` as one string (lines joined by spaces); "" when none."""
        return " ".join(self.read_lines(image, name))


_SHARED: OcrReader | None = None


def shared_reader() -> OcrReader:
    """One reader per process (the ONNX sessions take a second to load)."""
    global _SHARED
    if _SHARED is None or _SHARED.cache != cache_dir() / "ocr":
        _SHARED = OcrReader()
    return _SHARED


# ----------------------------------------------------------------------------- processor
class OcrProcessor:
    """The HF-processor face of the reading model: chat template with image markers, then the markers
    filled with what OCR read and the text tokenized (left padded), as LLaVA's processor expands them."""

    def __init__(self, tokenizer, reader: OcrReader | None = None, chat_template: str = CHAT_TEMPLATE):
        self.tokenizer = tokenizer
        self.reader = reader or shared_reader()
        self.chat_template = chat_template

    def apply_chat_template(self, conversation, tokenize: bool = False, add_generation_prompt: bool = True, **kwargs):
        text = self.tokenizer.apply_chat_template(
            conversation, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
        if tokenize:
            return self(text=text, images=_images_of(conversation) or None, return_tensors=kwargs.get("return_tensors"))
        return text

    def fill_images(self, texts: list[str], images) -> list[str]:
        """``texts`` with their ``<image>`` markers replaced, in order, by each image's slot."""
        images = list(images or [])
        pieces = [t.split(IMAGE_MARKER) for t in texts]
        markers = sum(len(p) - 1 for p in pieces)
        if markers != len(images):
            raise MMToxError(
                f"the prompt has {markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s) were given; "
                "give one image per image part of the conversation"
            )
        slots = iter(image_slot(self.reader.read(image, f"image {i}")) for i, image in enumerate(images))
        out = []
        for parts in pieces:
            filled = parts[0]
            for rest in parts[1:]:
                filled += next(slots) + rest
            out.append(filled)
        return out

    def __call__(self, text=None, images=None, padding=True, return_tensors="pt", **kwargs):
        if text is None:
            raise MMToxError("the reading model's processor needs text (the chat-templated prompt)")
        texts = [text] if isinstance(text, str) else list(text)
        filled = self.fill_images(texts, images)
        kwargs.setdefault("add_special_tokens", False)
        return self.tokenizer(filled, padding=padding, return_tensors=return_tensors, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _images_of(conversation) -> list:
    messages = conversation if isinstance(conversation, list) else [conversation]
    return [
        p["image"] for m in messages if not isinstance(m.get("content"), str) for p in m.get("content") or [] if p.get("type") == "image"
    ]


# ----------------------------------------------------------------------------- model
def is_reader_dir(path) -> bool:
    return Path(str(path)).expanduser().joinpath(READER_MARKER).is_file()


def reader_model_dir(source: Path, rebuild: bool = False) -> Path:
    """The reading model's decoder converted from the GGUF at ``source`` (the embedded SmolLM2, as a
    causal LM), once, atomically, cached under ``$MMTOXICQA_CACHE/models`` keyed by the GGUF's sha256."""
    digest = sha256_file(source)

    def build(folder: Path) -> dict:
        _convert(source, folder)
        return {"gguf_file": source.name, "gguf_sha256": digest, "ocr": f"rapidocr-onnxruntime=={RAPIDOCR_VERSION}", "fusion": "late (OCR)"}

    target = models_dir() / f"{READER_NAME}-{digest[:16]}"
    return built_once(target, READER_MARKER, build, what="the reading model, embedded-ocr (about half a minute)", rebuild=rebuild)


def _convert(source: Path, out: Path) -> None:
    import torch  # heavy: torch loads only where a model runs
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers loads only where a model runs

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    dequantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A fresh model with the dequantized weights: transformers refuses to save a GGUF-loaded one.
    model = type(dequantized)(config)
    model.load_state_dict(dequantized.state_dict())
    model.tie_weights()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = end_of_turn
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def open_reader(source: Path, device: str = "cpu", torch_dtype=None):
    """(model, processor, tokenizer) of the reading-model directory ``source`` (modeling.load_model wraps them)."""
    import torch  # heavy: torch loads only where a model runs
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers loads only where a model runs

    source = Path(source)
    if not is_reader_dir(source):
        raise MMToxError(f"{source} is not a reading-model directory (no {READER_MARKER}); build one with `mmtoxicqa build-model --ocr`")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype or torch.float32, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except OSError as exc:
        raise MMToxError(
            f"{source}: could not load the reading model ({str(exc).splitlines()[0]}); rebuild with `mmtoxicqa build-model --ocr --rebuild`"
        ) from exc
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), OcrProcessor(tokenizer), tokenizer


# ----------------------------------------------------------------------------- CLI
