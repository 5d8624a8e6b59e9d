"""Decoding-time parts: contrastive extra rows (CoCA, self-debiasing) and word bans.

Methods such as CoCA and self-debiasing need the model's next-token scores under
*other* prompts for the same partial answer. We run those prompts as extra rows in
the same batch (one forward pass for all), combine the scores for each original row,
choose the token there (argmax, or sampling with the run's temperature/top_p), and
force that same token on every row of the group, so all rows keep sharing the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.loading import Conversation

Combine = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]


@dataclass
class RowExpansion:
    """Extra prompt variants per conversation plus how to merge their scores into the main row's."""

    variants: Sequence[Callable[[Conversation], Conversation]]
    combine: Combine  # (main_logits [B,V], [variant_logits [B,V]] * k) -> combined scores [B,V]


class GroupedChoice:
    """A transformers LogitsProcessor over (1+k)*B rows: combine, pick per group, force on all rows."""

    def __init__(self, batch: int, expansion: RowExpansion, extra_processors=(), do_sample=False, temperature=1.0, top_p=None, seed=0):
        self.batch = batch
        self.expansion = expansion
        self.extra = list(extra_processors)
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        b = self.batch
        k = len(self.expansion.variants)
        main = scores[:b].float()
        variants = [scores[b * (i + 1) : b * (i + 2)].float() for i in range(k)]
        combined = self.expansion.combine(main, variants)
        for proc in self.extra:
            combined = proc(input_ids[:b], combined)
        chosen = self._choose(combined)
        forced = torch.full_like(scores, float("-inf"))
        rows = torch.arange(scores.shape[0], device=scores.device)
        forced[rows, chosen.repeat(k + 1).to(scores.device)] = 0.0
        return forced

    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.do_sample:
            return scores.argmax(dim=-1)
        logits = scores / max(self.temperature, 1e-6)
        probs = torch.softmax(logits, dim=-1)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(dim=-1) - sorted_p < self.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs.cpu(), 1, generator=self.generator).squeeze(-1)


def contrastive_combine(strength: float) -> Combine:
    """CoCA: logits + strength * (logits with the safety principle - logits without)."""

    def combine(main: torch.Tensor, variants: list[torch.Tensor]) -> torch.Tensor:
        return main + strength * (variants[0] - main)

    return combine


def self_debias_combine(decay: float) -> Combine:
    """Self-debiasing (Schick et al. 2021): scale down tokens that a 'toxic' prefix makes more likely.

    delta = p(x | prompt) - max_k p(x | toxic-description_k + prompt); tokens with delta < 0
    are multiplied by exp(decay * delta); the result is renormalised (returned as log-probs).
    """

    def combine(main: torch.Tensor, variants: list[torch.Tensor]) -> torch.Tensor:
        p_main = torch.softmax(main, dim=-1)
        p_bias = torch.stack([torch.softmax(v, dim=-1) for v in variants]).max(dim=0).values
        delta = p_main - p_bias
        alpha = torch.where(delta >= 0, torch.ones_like(delta), torch.exp(decay * delta))
        p = p_main * alpha
        return torch.log(p / p.sum(dim=-1, keepdim=True))

    return combine


def read_word_list(path: str | Path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MMToxError(
            f"bad-words list {path} not found; pass bad_words_path=FILE (one word per line), e.g. ../shared/data/rtp-bad-words/list_of_naughty_and_bad_words.txt"
        )
    words = [w.strip() for w in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise MMToxError(f"bad-words list {path} is empty; it needs one word per line")
    return words


def bad_words_processor(tokenizer, words: Sequence[str]):
    """transformers' NoBadWordsLogitsProcessor over the token sequences of each word's spellings."""
    from transformers.generation.logits_process import NoBadWordsLogitsProcessor  # heavy: transformers loads only where a model runs

    sequences: set[tuple[int, ...]] = set()
    for word in words:
        for variant in {word, word.lower(), word.capitalize(), word.upper()}:
            for text in (variant, " " + variant):
                ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
                if ids:
                    sequences.add(ids)
    eos = tokenizer.eos_token_id
    return NoBadWordsLogitsProcessor([list(s) for s in sorted(sequences)], eos_token_id=eos)
