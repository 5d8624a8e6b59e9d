"""Load any Hugging Face image-text-to-text model and run batched chat generation on it.

Everything model-specific the rest of the project needs lives here: resolving
``pretrained`` (hub id, local path, or the embedded model), turning chat messages
with images into left-padded model inputs, and decoding generations with lmms-eval's
gen_kwargs semantics (max_new_tokens, temperature, do_sample, top_p, num_beams, until).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmtoxicqa.core import registry, settings
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.placement import check_pixel_limits, check_placement, input_device
from mmtoxicqa.modeling.positions import placeholder_token_ids
from mmtoxicqa.modeling.reader import READER_ALIAS, READER_SETTINGS, is_reader_dir, open_reader

log = logging.getLogger(__name__)

# Processors that want images grouped per sample (list of lists) instead of one flat list.
_NESTED_IMAGE_MODEL_TYPES = {"idefics2", "idefics3", "smolvlm", "mllama"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class LoadedModel:
    """A model with the processor/tokenizer that go with it and what we learned about it."""

    model: Any
    processor: Any
    tokenizer: Any
    model_id: str
    device: torch.device
    multimodal: bool
    image_token_ids: list[int] = field(default_factory=list)
    cut_prompts: int = 0  # prompts cut to fit the context so far (see fit_to_context); callers warn once

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", "unknown")


def resolve_pretrained(pretrained: str | None) -> str:
    """Map ``pretrained`` to something ``from_pretrained`` accepts: a registered model source's name
    (``embedded`` or nothing, ``embedded-ocr``, ``organism``...: see mmtoxicqa.modeling.sources) becomes
    its cached folder, built once; a local folder or a hub id is kept."""
    name = "" if pretrained is None else str(pretrained).strip()
    for source in registry.entries("model_source").values():
        folder = source.obj(name)
        if folder is not None:
            return str(folder)
    pretrained = os.path.expanduser(str(pretrained))
    if os.path.isdir(pretrained):
        return pretrained
    looks_like_path = (
        pretrained.startswith((".", "/", "~")) or os.sep in pretrained.strip("/").replace("/", os.sep, 1) and not _HUB_ID.match(pretrained)
    )
    if looks_like_path or not _HUB_ID.match(pretrained):
        raise MMToxError(
            f"pretrained={pretrained!r} is neither a local model directory nor a hub id like 'org/name'; "
            "pass an existing directory, a hub id, or a model source ("
            + "; ".join(e.info.get("usage", e.name) for e in registry.entries("model_source").values())
            + "); omit pretrained= for the embedded model"
        )
    return pretrained


def _hub_error(pretrained: str, exc: Exception) -> MMToxError:
    offline = settings.hub_offline()
    why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face hub could not be reached or has no such model"
    return MMToxError(
        f"pretrained={pretrained!r}: {why}; download it on a connected machine (`hf download {pretrained}`) "
        f"and pass its local path, or omit pretrained= to use the embedded model ({type(exc).__name__})"
    )


DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def check_dtype(dtype) -> str | torch.dtype:
    """``dtype`` as "auto" or a floating torch dtype; anything else (int8, a typo) is a one-line error."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        name = DTYPE_ALIASES.get(name, name)
        if name in DTYPES:
            return "auto" if name == "auto" else DTYPES[name]
    raise MMToxError(f"dtype={dtype!r} is not supported; use one of {', '.join(DTYPES)} (quantised weights such as int8 are not supported)")


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a torch.device that exists on this machine, else a one-line error that calls the
    argument ``name`` (``device`` for the model, ``auroc_device`` for the AUROC step, ...)."""
    said = f"{name}={device!r}"
    try:
        parsed = torch.device(str(device).strip())
    except (RuntimeError, ValueError):
        raise MMToxError(f"{said} is not a device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise MMToxError(f"{said} but CUDA is not available on this machine (torch {torch.__version__}); use {name}=cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise MMToxError(f"{said} but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif parsed.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MMToxError(f"{said} but MPS is not available on this machine; use {name}=cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise MMToxError(f"{said} is not supported; use cpu, cuda, cuda:N or mps")
    return parsed


def load_model(
    pretrained: str | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    *,
    device_map=None,
    max_memory=None,
    attn_implementation: str | None = None,
    offload_folder: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> LoadedModel:
    """Load model + processor for ``pretrained`` (hub id, local dir, None for the embedded model,
    "embedded-ocr" or a directory with ``mmtoxicqa_reader.json`` for the OCR reading model).

    ``device_map`` (auto / balanced / sequential / a module -> device map) splits the model across
    devices through accelerate, ``device`` is then unused; ``max_memory`` caps each device. Every
    option is checked before a weight is read (mmtoxicqa.modeling.placement)."""
    from transformers import (  # heavy: transformers loads only where a model runs
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    dtype = check_dtype(dtype)
    placement = check_placement(
        device,
        dtype,
        device_map=device_map,
        max_memory=max_memory,
        attn_implementation=attn_implementation,
        offload_folder=offload_folder,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    if placement.device_map is None:
        check_device(device)
    source = resolve_pretrained(pretrained)
    if is_reader_dir(source):
        if placement != type(placement)():
            raise MMToxError(
                f"pretrained={pretrained!r} is the OCR reading model; it loads on one device: drop device_map/attn/pixel options"
            )
        return _load_reader(pretrained, source, device, dtype)
    kwargs = {"trust_remote_code": bool(trust_remote_code)}
    if revision:
        kwargs["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except OSError as exc:
        if os.path.isdir(source):
            raise MMToxError(f"pretrained={source!r} has no usable config.json; point it at a Hugging Face model directory") from exc
        raise _hub_error(source, exc) from exc
    except ValueError as exc:
        raise MMToxError(
            f"pretrained={source!r}: {str(exc).splitlines()[0]} (pass trust_remote_code=True only if you trust this model's code)"
        ) from exc

    if dtype == "auto":
        on_gpu = not str(device).startswith("cpu") if placement.device_map is None else torch.cuda.is_available()
        torch_dtype = torch.bfloat16 if on_gpu else torch.float32
    else:
        torch_dtype = dtype

    multimodal = type(config) in AutoModelForImageTextToText._model_mapping
    model_cls = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    try:  # processor and tokenizer first: a bad pixel limit is refused before the weights are read
        try:
            processor = AutoProcessor.from_pretrained(source, **kwargs, **placement.processor_kwargs()) if multimodal else None
        except (OSError, ValueError, TypeError):
            processor = None
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if multimodal and processor is None:
            raise MMToxError(
                f"pretrained={source!r} is multimodal but has no processor files (preprocessor_config.json); save its processor next to the weights"
            )
        if placement.processor_kwargs() and not multimodal:
            raise MMToxError(f"min_pixels/max_pixels set but pretrained={source!r} is text-only; drop them")
        check_pixel_limits(processor, placement, source)
        model = model_cls.from_pretrained(source, dtype=torch_dtype, **kwargs, **placement.model_kwargs())
    except OSError as exc:
        if os.path.isdir(source):
            raise MMToxError(f"pretrained={source!r}: could not load weights/tokenizer ({str(exc).splitlines()[0]})") from exc
        raise _hub_error(source, exc) from exc
    except ValueError as exc:  # transformers' own refusals: an attention kernel or device map this model cannot take
        if not placement.model_kwargs():
            raise
        raise MMToxError(f"pretrained={source!r}: {str(exc).splitlines()[0]}") from exc

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if processor is not None and getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"
        if processor.tokenizer.pad_token is None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
    model = (model if placement.device_map is not None else model.to(device)).eval()
    image_ids = placeholder_token_ids(model)
    model_id = pretrained if pretrained not in (None, "", "embedded") else "embedded:" + Path(source).name
    if pretrained and source != pretrained and Path(source).name.startswith("organism-"):
        model_id = "organism:" + Path(source).name  # the cache key names the training data: glasses never go stale
    return LoadedModel(
        model=model,
        processor=processor,
        tokenizer=tokenizer,
        model_id=str(model_id),
        device=input_device(model) if placement.device_map is not None else torch.device(device),
        multimodal=multimodal,
        image_token_ids=image_ids,
    )


def reader_model_id(pretrained: str | None, source: str) -> str:
    """The id that keys an OCR reading model's cached glasses. An alias (embedded-ocr, organism-ocr)
    is replaced by the folder it resolved to, whose name holds the weights' key (for an organism: its
    training data), so glasses of one build are never reused for another; the OCR settings are part
    of what the decoder sees, so their version is in the id too."""

    folder = Path(source).name
    if pretrained == READER_ALIAS:
        name = f"{READER_ALIAS}:{folder}"
    elif pretrained and source != pretrained and folder.startswith("organism-"):
        name = f"organism:{folder}"
    else:
        name = pretrained
    return f"{name}:reader-v{READER_SETTINGS['version']}"


def _load_reader(pretrained: str | None, source: str, device: str, dtype) -> LoadedModel:
    """The OCR reading model (mmtoxicqa.modeling.reader): a causal LM whose processor turns images into the text they show."""

    model, processor, tokenizer = open_reader(Path(source), device=device, torch_dtype=None if dtype == "auto" else dtype)
    return LoadedModel(
        model=model,
        processor=processor,
        tokenizer=tokenizer,
        model_id=reader_model_id(pretrained, source),
        device=torch.device(device),
        multimodal=True,  # it takes images; they reach the decoder as the text OCR reads in them
        image_token_ids=[],  # no placeholder tokens: image text is ordinary text (SGM's "text" scope counts it)
    )


Conversation = list[dict]  # [{"role": "user", "content": [{"type": "image", "image": PIL}, {"type": "text", "text": "..."}]}]


def conversation_images(conversation: Conversation) -> list[Image.Image]:
    return [part["image"] for message in conversation for part in _parts(message) if part.get("type") == "image"]


def _parts(message: dict) -> list[dict]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _text_only(conversation: Conversation) -> Conversation:
    """Drop image parts and flatten content to strings (for text-only causal LMs)."""
    return [{"role": m["role"], "content": "".join(p.get("text", "") for p in _parts(m) if p.get("type") == "text")} for m in conversation]


@contextmanager
def _padding_side(loaded: LoadedModel, side: str):
    """Pad on ``side`` for the duration (the tokenizer and the processor's own tokenizer)."""
    if side not in ("left", "right"):
        raise MMToxError(f"padding_side={side!r}: use 'left' or 'right'")
    tokenizers = [t for t in (loaded.tokenizer, getattr(loaded.processor, "tokenizer", None)) if t is not None]
    before = [t.padding_side for t in tokenizers]
    for t in tokenizers:
        t.padding_side = side
    try:
        yield
    finally:
        for t, was in zip(tokenizers, before):
            t.padding_side = was


def build_inputs(
    loaded: LoadedModel, conversations: Sequence[Conversation], replies: Sequence[str] | None = None, padding_side: str = "left"
):
    """Chat-template and tokenize a batch of conversations, images included. With ``replies``, each is
    teacher-forced as the start of the assistant's answer (after the generation prompt, no end-of-turn
    token): what the model would have written.

    ``padding_side``: "left" for generation (new tokens follow every row's last token); "right" for a
    forward pass that only reads activations (calibration). Right padding keeps each row's tokens at the
    positions they have alone and the causal mask keeps the pads out of them, so a batch computes what
    one item computes up to rounding that does not depend on the row. Left padding shifts them; the
    rounding that follows depends on each row's length, and a length that differs by class leaked into
    pooled responses: AUROCs up to 0.31 from their batch-1 values, for neurons constant alone too
    (text scope, 64 items, embedded model)."""
    if replies is not None and len(replies) != len(conversations):
        raise MMToxError(f"build_inputs: {len(replies)} replies for {len(conversations)} conversations")
    with _padding_side(loaded, padding_side):
        return _build_inputs(loaded, conversations, replies)


def _build_inputs(loaded: LoadedModel, conversations: Sequence[Conversation], replies: Sequence[str] | None):
    if loaded.multimodal:
        processor = loaded.processor
        texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        texts = texts if replies is None else [t + r for t, r in zip(texts, replies)]
        images = [conversation_images(c) for c in conversations]
        if any(images):
            if loaded.model_type in _NESTED_IMAGE_MODEL_TYPES:
                image_arg = [imgs for imgs in images]
            else:
                image_arg = [img for imgs in images for img in imgs]
            batch = processor(text=texts, images=image_arg, padding=True, return_tensors="pt")
        else:
            batch = processor(text=texts, padding=True, return_tensors="pt")
    else:
        tokenizer = loaded.tokenizer
        texts = [tokenizer.apply_chat_template(_text_only(c), tokenize=False, add_generation_prompt=True) for c in conversations]
        texts = texts if replies is None else [t + r for t, r in zip(texts, replies)]
        batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    return batch.to(loaded.device)


def context_length(loaded: LoadedModel) -> int | None:
    """The most tokens the model's language model takes (its ``max_position_embeddings`` or the
    tokenizer's ``model_max_length``, the smaller); None when neither is known."""
    config = loaded.model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits = (getattr(text_config, "max_position_embeddings", None), getattr(loaded.tokenizer, "model_max_length", None))
    usable = [int(x) for x in limits if isinstance(x, int) and not isinstance(x, bool) and 0 < x < 10**8]
    return min(usable) if usable else None


def _prompt_tokens(loaded: LoadedModel, conversation: Conversation) -> int:
    return int(build_inputs(loaded, [conversation])["input_ids"].shape[1])


def _with_text(conversation: Conversation, place: tuple[int, int], text: str) -> Conversation:
    """A copy of ``conversation`` whose text part ``place`` (message, part) is ``text``."""
    copy = [dict(m) for m in conversation]
    message, part = place
    if isinstance(copy[message].get("content"), str):
        copy[message]["content"] = text
    else:
        parts = [dict(p) for p in copy[message]["content"]]
        parts[part]["text"] = text
        copy[message]["content"] = parts
    return copy


def fit_to_context(loaded: LoadedModel, conversation: Conversation, max_new_tokens: int) -> tuple[Conversation, bool]:
    """``conversation`` cut to fit the model's context with room for ``max_new_tokens``: a longer
    prompt loses the end of its longest user text (images and the chat template stay whole). Returns
    (conversation, whether it was cut). A 1 MB question would otherwise take the memory of a
    250k-token attention; one that cannot fit even with its text emptied is a one-line MMToxError."""
    limit = context_length(loaded)
    if limit is None:
        return conversation, False
    budget = limit - min(max_new_tokens, limit // 2)
    texts = {
        (i, j): part["text"]
        for i, message in enumerate(conversation)
        if message.get("role") == "user"
        for j, part in enumerate(_parts(message))
        if part.get("type") == "text"
    }
    tokenizer = loaded.tokenizer
    lengths = {place: len(tokenizer(text, add_special_tokens=False)["input_ids"]) for place, text in texts.items()}
    if sum(lengths.values()) <= budget // 2:  # the usual case: no need to run the processor twice
        return conversation, False
    place = max(lengths, key=lengths.get)
    for _ in range(4):  # cutting at a token boundary can re-tokenise a little longer: retry with the rest
        overflow = _prompt_tokens(loaded, conversation) - budget
        if overflow <= 0:
            return conversation, _text_at(conversation, place) != texts[place]
        text = _text_at(conversation, place)
        fast = getattr(tokenizer, "is_fast", False)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
        keep = len(encoded["input_ids"]) - overflow - 4
        if keep <= 0:
            raise MMToxError(
                f"a prompt does not fit {loaded.model_id}'s context of {limit} tokens even without its question "
                f"(max_new_tokens={max_new_tokens}); use fewer or smaller images, or a model with a longer context"
            )
        head = text[: encoded["offset_mapping"][keep][0]] if fast else tokenizer.decode(encoded["input_ids"][:keep])
        conversation = _with_text(conversation, place, head)
    raise MMToxError(f"could not cut a prompt to {loaded.model_id}'s context of {limit} tokens; shorten the question")


def _text_at(conversation: Conversation, place: tuple[int, int]) -> str:
    return _parts(conversation[place[0]])[place[1]]["text"]


def gen_int(name: str, value, low: int = 1) -> int:
    """A generation setting that must be an integer >= ``low`` (``64``, ``"64"``, ``64.0``), else a one-line error."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number) or number < low:
        raise MMToxError(f"{name}={value!r} is not usable; it must be an integer >= {low} (gen_kwargs / model_args)")
    return int(number)


def gen_float(name: str, value, low: float = 0.0, high: float | None = None) -> float:
    """A generation setting that must be a finite number in [low, high], else a one-line error."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < low or (high is not None and number > high):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise MMToxError(f"{name}={value!r} is not usable; it must be a number {bound} (gen_kwargs)")
    return number


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y", "on"}
    return bool(value)


def generation_settings(gen_kwargs: dict | None, default_max_new_tokens: int = 64) -> tuple[dict, list[str]]:
    """Translate lmms-eval gen_kwargs into ``generate`` kwargs plus the list of stop strings.

    A value that is not usable (``max_new_tokens=abc``, ``temperature=-1``) is a one-line MMToxError."""
    gen_kwargs = dict(gen_kwargs or {})
    until = gen_kwargs.pop("until", None) or []
    if isinstance(until, str):
        until = [until]
    temperature = gen_float("temperature", gen_kwargs.pop("temperature", 0.0) or 0.0)
    do_sample = _flag(gen_kwargs.pop("do_sample", False)) or temperature > 0
    settings = {
        "max_new_tokens": gen_int("max_new_tokens", gen_kwargs.pop("max_new_tokens", default_max_new_tokens)),
        "do_sample": do_sample,
        "num_beams": gen_int("num_beams", gen_kwargs.pop("num_beams", 1) or 1),
    }
    if do_sample:
        settings["temperature"] = temperature if temperature > 0 else 1.0
        top_p = gen_kwargs.pop("top_p", None)
        if top_p is not None:
            settings["top_p"] = gen_float("top_p", top_p, 0.0, 1.0)
    else:
        gen_kwargs.pop("top_p", None)
    for key in ("top_k", "repetition_penalty", "num_return_sequences"):
        if key in gen_kwargs:
            settings[key] = gen_kwargs.pop(key)
    return settings, [u for u in until if u]


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


# End-of-turn markers of common chat templates; generation stops at the ones the tokenizer has,
# besides the generation config's and tokenizer's eos (a task names no model-specific stop string).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<end_of_utterance>", "<|endoftext|>")


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """Token ids that end the model's turn: generation config eos, tokenizer eos, and the tokenizer's
    own end-of-turn marker among :data:`END_OF_TURN_TOKENS` (only markers it has as one special token)."""
    config = getattr(model, "generation_config", None)
    found = [getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)]
    ids = {e for group in found for e in (group if isinstance(group, list) else [group]) if isinstance(e, int)}
    special = set(getattr(tokenizer, "all_special_tokens", []) or []) | set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    for marker in END_OF_TURN_TOKENS:
        if marker in special:
            token_id = tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None):
                ids.add(token_id)
    return sorted(ids)


@torch.inference_mode()
def generate(
    loaded: LoadedModel, conversations: Sequence[Conversation], gen_kwargs: dict | None = None, logits_processor=None
) -> list[str]:
    """Generate one answer per conversation (batched, left padded); stop strings trimmed."""
    settings, stops = generation_settings(gen_kwargs)
    fitted = [fit_to_context(loaded, c, settings["max_new_tokens"]) for c in conversations]
    loaded.cut_prompts += sum(cut for _, cut in fitted)
    batch = build_inputs(loaded, [c for c, _ in fitted])
    tokenizer = loaded.tokenizer
    eos = end_of_turn_ids(loaded.model, tokenizer)
    out = loaded.model.generate(
        **batch,
        **settings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        logits_processor=logits_processor,
    )
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [truncate_at_stops(t, stops).strip() for t in texts]
