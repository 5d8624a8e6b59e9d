"""Which token positions count when a neuron's or a layer's response to an input is pooled.

The one owner of that rule, for SGM collection, calibration batches and steering vectors:

* ``text`` scope: attended positions (no left padding) whose token is not an image/video
  placeholder (those carry the vision tower's features, not the decoder's reading of the
  request). The chat template, system prompt and the model's special tokens count.
* ``request`` scope: only the positions of the item's own question: the span that differs
  between the conversation and the same conversation with its user text emptied (template,
  images and generation prompt are the same in both, so they fall in the shared prefix/suffix).
* ``answer`` scope: only the positions of an assistant reply teacher-forced after the prompt: the
  span after the longest prefix the conversation shares with its prompt alone (the reply's own
  tokens; the end-of-turn token is not part of it). Where a model writes toxicity, not where it
  reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TOKEN_SCOPES = ("text", "request", "answer")
_PLACEHOLDER_ATTRS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")


def placeholder_token_ids(model) -> list[int]:
    """Image/video placeholder ids declared by a model's config and its text/vision sub-configs."""
    config = getattr(model, "config", None)
    ids: list[int] = []
    for cfg in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        for attr in _PLACEHOLDER_ATTRS:
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0 and value not in ids:
                ids.append(value)
    return ids


def text_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, skip_ids: Sequence[int] = ()) -> torch.Tensor:
    """The ``text`` scope: attended positions whose token is not in ``skip_ids``."""
    mask = attention_mask.bool().clone()
    for token_id in skip_ids:
        mask &= input_ids != int(token_id)
    return mask


def without_user_text(conversation: list[dict]) -> list[dict]:
    """The same conversation with every user text part emptied (images and other turns kept)."""
    out = []
    for message in conversation:
        content = message.get("content")
        if message.get("role") != "user":
            out.append(message)
        elif isinstance(content, str):
            out.append({**message, "content": ""})
        else:
            out.append({**message, "content": [dict(part, text="") if part.get("type") == "text" else part for part in content or []]})
    return out


def _attended(batch, row: int) -> tuple[torch.Tensor, list[int]]:
    """A row's attended positions and their token ids."""
    positions = batch["attention_mask"][row].bool().nonzero().flatten()
    return positions, batch["input_ids"][row][positions].tolist()


def _shared_prefix(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    prefix = 0
    while prefix < limit and a[prefix] == b[prefix]:
        prefix += 1
    return prefix


def request_mask(batch, emptied) -> torch.Tensor:
    """The ``request`` scope: per row, the attended positions of ``batch`` outside the longest prefix
    and suffix it shares with ``emptied`` (the same rows rendered by :func:`without_user_text`)."""
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    for row in range(mask.shape[0]):
        positions, full = _attended(batch, row)
        bare = _attended(emptied, row)[1]
        limit = min(len(full), len(bare))
        prefix = _shared_prefix(full, bare)
        suffix = 0
        while suffix < limit - prefix and full[-1 - suffix] == bare[-1 - suffix]:
            suffix += 1
        mask[row, positions[prefix : len(full) - suffix]] = True
    return mask


def answer_mask(batch, prompts) -> torch.Tensor:
    """The ``answer`` scope: per row, the attended positions of ``batch`` (prompt + reply) after the
    longest prefix it shares with ``prompts`` (the same rows without their reply)."""
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    for row in range(mask.shape[0]):
        positions, full = _attended(batch, row)
        mask[row, positions[_shared_prefix(full, _attended(prompts, row)[1]) :]] = True
    return mask
