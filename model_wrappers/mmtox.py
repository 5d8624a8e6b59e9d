"""``mmtox``: one lmms-eval chat model for any Hugging Face image-text-to-text model.

lmms-eval 0.7.3 prefers chat models: each request carries ``doc_to_messages`` and the
doc id, and the model builds the conversation itself. This wrapper validates every
conversation (a corrupt image or empty question is a one-line error naming the doc),
batches requests with identical gen_kwargs, longest prompts first (answers come back in
request order), and delegates generation to a *method* (vanilla, SGM, baselines,
compositions) from :mod:`mmtoxicqa.methods`.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from loguru import logger as eval_logger
from PIL import Image
from tqdm import tqdm

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.methods import build_method, check_method
from mmtoxicqa.modeling.loading import gen_int, load_model
from mmtoxicqa.modeling.placement import check_placement, parse_device_map


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y", "on"}
    return bool(value)


class MMTox(lmms):
    """Generic wrapper: ``--model mmtox --model_args pretrained=...,method=...,batch_size=...``."""

    is_simple = False
    default_method = "vanilla"

    def __init__(
        self,
        pretrained: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        dtype: str = "auto",
        trust_remote_code: bool | str = False,
        method: str | None = None,
        max_new_tokens: int | str | None = None,
        revision: str | None = None,
        device_map: str | dict | None = None,
        max_memory: str | dict | None = None,
        attn_implementation: str | None = None,
        offload_folder: str | None = None,
        min_pixels: int | str | None = None,
        max_pixels: int | str | None = None,
        **method_kwargs: Any,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator  # heavy: only where a model is placed

        # Everything a typo can break is refused here, before the weights are read.
        check_method(method or self.default_method, method_kwargs)
        placement = dict(
            device_map=device_map,
            max_memory=max_memory,
            attn_implementation=attn_implementation,
            offload_folder=offload_folder,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        check_placement(device, dtype, **placement)
        # On a machine without CUDA, accelerate sees a launcher's processes only when told it runs on the CPU;
        # without cpu=True every process would answer every request (no sharding, duplicated work).
        on_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=on_cpu)
        if device is None:
            device = f"cuda:{self.accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        if self._world_size > 1 and isinstance(parse_device_map(device_map), str):
            raise MMToxError(
                f"device_map={device_map} spreads one copy of the model over every GPU, but {self._world_size} processes were "
                "launched; run one process (plain lmms_eval) for model parallel, or drop device_map for data parallel"
            )
        try:
            self.batch_size_per_gpu = int(batch_size)
        except ValueError as exc:
            raise MMToxError(f"batch_size={batch_size!r} must be a positive integer") from exc
        if self.batch_size_per_gpu < 1:
            raise MMToxError(f"batch_size={batch_size!r} must be a positive integer")
        # the answer length when a task names none; a task's own generation_kwargs win (one warning if they differ)
        self.explicit_max_new_tokens = max_new_tokens is not None
        self.default_max_new_tokens = gen_int("max_new_tokens", 64 if max_new_tokens is None else max_new_tokens)
        self._length_warned: set = set()
        self.generation_seconds = 0.0  # time spent inside the method's generate (sweeps report it per item)
        self.generated_items = 0
        started = time.perf_counter()
        self.loaded = load_model(
            pretrained,
            device=device,
            dtype=dtype,
            trust_remote_code=_as_bool(trust_remote_code),
            revision=revision,
            **placement,
        )

        self.method = build_method(method or self.default_method, self.loaded, **method_kwargs)
        self.one_time_seconds = time.perf_counter() - started  # model load + method setup (calibration): not per item
        eval_logger.info(
            f"mmtox: model={self.loaded.model_id} method={self.method.name} device={device_map or device} batch_size={self.batch_size_per_gpu}"
        )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """Like lmms-eval's, but ``--model_args batch_size=..`` may repeat a CLI flag (model_args win)."""
        args = lmms_utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    # lmms-eval reads these properties.
    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self.loaded.device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def clean(self) -> None:
        """Free caches but keep the model: sweeps reuse one wrapper across tasks."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loglikelihood(self, requests):
        raise NotImplementedError("mmtox supports generate_until tasks only (MM-TOXIC-QA and generative utility tasks)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("mmtox does not support multi-round generation")

    # ------------------------------------------------------------------
    def _hf_messages(self, doc_to_messages, doc_id: int, task: str, split: str) -> list[dict]:
        """One doc's chat in Hugging Face form, its images as the doc holds them (not yet checked or converted)."""
        where = f"task {task!r} doc {doc_id}"
        try:
            doc = self.task_dict[task][split][doc_id]
            messages = doc_to_messages(doc)
        except MMToxError:
            raise
        except Exception as exc:  # decoding a corrupt image happens here (datasets decodes lazily)
            raise MMToxError(
                f"{where}: could not build its prompt ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); rebuild the data or drop the item"
            ) from exc
        try:
            chat = ChatMessages(messages=messages)
        except Exception as exc:
            raise MMToxError(f"{where}: doc_to_messages returned an invalid chat ({str(exc).splitlines()[0]})") from exc
        return chat.to_hf_messages()

    def conversation_for(self, doc_to_messages, doc_id: int, task: str, split: str) -> list[dict]:
        """Build and validate the HF-format conversation for one doc (one-line errors on bad input)."""
        where = f"task {task!r} doc {doc_id}"
        conversation = self._hf_messages(doc_to_messages, doc_id, task, split)
        has_text = False
        for message in conversation:
            for part in message["content"]:
                if part["type"] == "image":
                    image = part["image"]
                    if isinstance(image, str):
                        try:
                            image = Image.open(image)
                            image.load()
                        except Exception as exc:
                            raise MMToxError(
                                f"{where}: image {part['image']!r} is missing or not a readable image; fix the path or rebuild the data"
                            ) from exc
                    if not isinstance(image, Image.Image):
                        raise MMToxError(
                            f"{where}: image is {type(image).__name__}, not an image; the doc's image field is missing or corrupt"
                        )
                    part["image"] = image.convert("RGB")
                elif part["type"] == "text" and part["text"].strip() and message["role"] == "user":
                    has_text = True
        if not has_text:
            raise MMToxError(f"{where}: the question is empty; every item needs a non-empty question")
        if not self.loaded.multimodal and any(p["type"] == "image" for m in conversation for p in m["content"]):
            eval_logger.warning(f"{self.loaded.model_id} is text-only: images are dropped")
        return conversation

    def _warn_if_length_overridden(self, gen_kwargs: dict, task: str) -> None:
        """``--model_args max_new_tokens=N`` is only a default: say so, once per task, when a task's own length wins."""
        asked = gen_kwargs.get("max_new_tokens")
        if not self.explicit_max_new_tokens or asked is None or task in self._length_warned:
            return
        if gen_int("max_new_tokens", asked) != self.default_max_new_tokens:
            self._length_warned.add(task)
            eval_logger.warning(
                f"mmtox: task {task} asks for max_new_tokens={asked}, which wins over model_args max_new_tokens="
                f"{self.default_max_new_tokens}; pass --gen_kwargs max_new_tokens={self.default_max_new_tokens} "
                "(mmtoxicqa sweep: --max-new-tokens) to change a task's answer length"
            )

    def prompt_size(self, args: tuple) -> tuple[int, int]:
        """(images, text tokens) of one request's conversation: the length its batch is sorted by.

        A cheap proxy for the prompt's token count: the doc's chat is built again (``doc_to_messages``,
        which decodes its images) but no image goes through the processor; the text parts are
        tokenized without the chat template (the same for every request of a method). Requests with the
        same number of images are batched together, so with a fixed-size vision encoder (LLaVA's CLIP)
        the image tokens of a batch are equal and its padding comes from the text alone."""
        _ctx, doc_to_messages, _gen_kwargs, doc_id, task, split = args
        parts = [part for message in self._hf_messages(doc_to_messages, doc_id, task, split) for part in message["content"]]
        text = "\n".join(part["text"] for part in parts if part["type"] == "text")
        return sum(part["type"] == "image" for part in parts), len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def batches(self, requests: list[Instance]) -> tuple[lmms_utils.Collator, list[list[tuple]]]:
        """The batches ``generate_until`` runs, as lists of request args, and the collator that restores
        request order. lmms-eval's ``Collator`` groups requests by gen_kwargs and sorts each group by
        the key given: here the longest prompts first (:meth:`prompt_size`, descending; ties keep
        request order), so a batch holds similar lengths, little padding, and a batch too large for
        the memory fails at once rather than at the end. At batch size 1 nothing is padded: requests
        go in doc id order and no length is computed."""

        def longest_first(args):
            images, tokens = self.prompt_size(args)
            return -images, -tokens

        def doc_order(args):
            return args[3]

        key = longest_first if self.batch_size > 1 else doc_order
        collator = lmms_utils.Collator([req.args for req in requests], key, group_fn=lambda args: args[2], grouping=True)
        return collator, list(collator.get_batched(n=self.batch_size, batch_fn=None))

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        collator, chunks = self.batches(requests)
        results: list[GenerationResult] = []
        if self.world_size > 1:
            eval_logger.info(f"mmtox: process {self.rank} of {self.world_size} answers {len(requests)} requests")
        progress = tqdm(total=len(requests), disable=(self.rank != 0), desc=f"mmtox[{self.method.name}]")
        cut_before = self.loaded.cut_prompts
        for chunk in chunks:
            _ctx, doc_to_messages, all_gen_kwargs, doc_ids, tasks, splits = zip(*chunk)
            conversations = [
                self.conversation_for(fn, doc_id, task, split) for fn, doc_id, task, split in zip(doc_to_messages, doc_ids, tasks, splits)
            ]
            gen_kwargs = dict(all_gen_kwargs[0] or {})
            self._warn_if_length_overridden(gen_kwargs, tasks[0])
            gen_kwargs.setdefault("max_new_tokens", self.default_max_new_tokens)
            start = time.perf_counter()
            answers = self.method.generate(conversations, gen_kwargs)
            elapsed = time.perf_counter() - start
            self.generation_seconds += elapsed
            self.generated_items += len(answers)
            for answer in answers:
                n_tokens = len(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
                results.append(GenerationResult(text=answer, token_counts=TokenCounts(output_tokens=n_tokens)))
            progress.update(len(answers))
            progress.set_postfix(s_per_item=f"{elapsed / max(len(answers), 1):.2f}")
        progress.close()
        cut = self.loaded.cut_prompts - cut_before
        if cut:
            eval_logger.warning(
                f"{cut} of {len(requests)} prompts were longer than {self.loaded.model_id}'s context and were cut to fit "
                "(the end of the question was dropped); their answers reply to the shortened question"
            )
        return collator.get_original(results)
