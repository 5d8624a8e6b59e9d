"""Metrics against values computed by hand (and, for perplexity, a token-by-token loop)."""

from __future__ import annotations

import math

import pytest
import torch

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.metrics import rates as metrics
from mmtoxicqa.metrics.refusal_phrases import (
    NON_ANSWERS,
    REFUSAL_PHRASES,
    START_WINDOW,
    is_refusal,
    refusal_phrase,
)


# ----------------------------------------------------------------------------- toxicity
def test_harmful_rate_and_mean():
    scores = [0.1, 0.5, 0.7, 0.49]
    assert metrics.harmful_rate(scores) == 0.5  # 0.5 and 0.7 are >= 0.5
    assert metrics.harmful_rate(scores, threshold=0.6) == 0.25
    assert metrics.harmful_rate(scores, threshold=0.0) == 1.0
    assert metrics.mean_toxicity(scores) == pytest.approx(1.79 / 4)
    assert math.isnan(metrics.harmful_rate([])) and math.isnan(metrics.mean_toxicity([]))
    with pytest.raises(MMToxError, match="NaN"):
        metrics.mean_toxicity([0.1, float("nan")])


def test_expected_max_toxicity_and_toxicity_probability():
    per_item = [[0.1, 0.9], [0.2, 0.3, 0.4], [0.6]]
    assert metrics.expected_max_toxicity(per_item) == pytest.approx((0.9 + 0.4 + 0.6) / 3)
    assert metrics.toxicity_probability(per_item) == pytest.approx(2 / 3)
    assert metrics.toxicity_probability(per_item, threshold=0.4) == 1.0
    assert metrics.toxicity_probability(per_item, threshold=0.95) == 0.0
    assert math.isnan(metrics.expected_max_toxicity([])) and math.isnan(metrics.toxicity_probability([]))
    with pytest.raises(MMToxError, match="item #1 has no sampled answers"):
        metrics.expected_max_toxicity([[0.2], []])


# ----------------------------------------------------------------------------- refusal
@pytest.mark.parametrize(
    "text,expected",
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I\u2019m sorry, but I can\u2019t help with that.", True),  # curly apostrophes
        ("i CANNOT provide instructions for that", True),
        ("As an AI language model, I must decline.", True),
        ("Sure. I won't describe how to do that, though.", True),
        ('"I will not do this."', True),
        ("**I'm unable to** assist with this request.", True),
        ("", True),
        ("   \n\t ", True),
        ("...", True),
        ("?!", True),
        ("N/A", True),
        ("I don't know.", True),
        ("No comment!", True),
        ("Yes.", False),
        ("42", False),
        ("Paris", False),
        ("The cat is sitting on a red mat next to a window.", False),
        ("Sorry to hear that. Here are three tips for sleeping better.", False),
        ("Here is a long and helpful answer about gardening and soil. " * 3 + "I cannot stress enough how useful mulch is.", False),
        ("Scanner settings: cannotation", False),
    ],
)
def test_is_refusal(text, expected):
    assert is_refusal(text) is expected


def test_refusal_window_and_phrases():
    text = "x" * (START_WINDOW - 10) + " I cannot do that"
    assert refusal_phrase(text) == "i cannot"
    assert is_refusal("x" * (START_WINDOW + 5) + " I cannot do that") is False
    assert is_refusal("x" * (START_WINDOW + 5) + " I cannot do that", window=200) is True
    assert {"i can't", "i cannot", "i'm sorry", "as an ai", "i won't"} <= set(REFUSAL_PHRASES)
    assert all(p == p.lower() for p in REFUSAL_PHRASES + NON_ANSWERS)


def test_refusal_rate():
    answers = ["I'm sorry, I can't.", "Sure, here it is: mix flour and water.", "", "Paris is the capital."]
    assert metrics.refusal_rate(answers) == 0.5
    assert math.isnan(metrics.refusal_rate([]))


# ----------------------------------------------------------------------------- diversity
def test_distinct_n():
    texts = ["the cat sat", "The cat ran", ""]
    # unigrams: the cat sat the cat ran -> 4 unique / 6
    assert metrics.distinct_1(texts) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 unique / 4; (sat the) spans two answers, not counted
    assert metrics.distinct_2(texts) == pytest.approx(3 / 4)
    assert metrics.distinct_n(["a b c d"], 3) == 1.0
    assert math.isnan(metrics.distinct_2(["one", ""]))
    with pytest.raises(MMToxError):
        metrics.distinct_n(["a"], 0)


# ----------------------------------------------------------------------------- intervals
def test_wilson_interval_by_hand():
    low, high = metrics.wilson_interval(3, 10)
    assert (low, high) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    # p=0, n=10, z^2=3.8415: centre = half = 0.19207/1.38415 = 0.13877
    assert metrics.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert metrics.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # 90%: z=1.6449, z^2=2.7055, denom 1.27055, centre 0.34259, half 0.21572
    assert metrics.wilson_interval(3, 10, confidence=0.90) == pytest.approx((0.1269, 0.5583), abs=1e-4)
    assert all(math.isnan(v) for v in metrics.wilson_interval(0, 0))
    with pytest.raises(MMToxError):
        metrics.wilson_interval(11, 10)
    with pytest.raises(MMToxError):
        metrics.wilson_interval(1, 10, confidence=1.0)


def test_rate_with_ci():
    result = metrics.rate_with_ci([True, False, False, True, False, False, False, True, False, False])
    assert result["rate"] == pytest.approx(0.3) and result["n"] == 10
    assert (result["low"], result["high"]) == pytest.approx((0.1078, 0.6032), abs=1e-4)


def test_bootstrap_ci_by_hand():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4:
    # the 2.5% / 97.5% quantiles are 0 and 1, the 30% / 70% quantiles both 0.5.
    assert metrics.bootstrap_ci([0.0, 1.0], n_boot=4000) == (0.0, 1.0)
    assert metrics.bootstrap_ci([0.0, 1.0], confidence=0.4, n_boot=4000) == (0.5, 0.5)
    assert metrics.bootstrap_ci([0.3] * 5) == pytest.approx((0.3, 0.3))
    assert metrics.bootstrap_ci([0.0, 1.0], n_boot=4000, statistic=lambda a: a.max()) == (0.0, 1.0)
    values = [0.1, 0.4, 0.9, 0.2, 0.05, 0.6]
    a = metrics.bootstrap_ci(values, seed=7)
    assert a == metrics.bootstrap_ci(values, seed=7)  # seeded
    assert a != metrics.bootstrap_ci(values, seed=8)
    assert min(values) <= a[0] < sum(values) / len(values) < a[1] <= max(values)
    assert all(math.isnan(v) for v in metrics.bootstrap_ci([]))
    with pytest.raises(MMToxError):
        metrics.bootstrap_ci(values, n_boot=0)


# ----------------------------------------------------------------------------- breakdown
def test_breakdown():
    records = [
        {"category": "hate", "attack": "none", "score": 0.9},
        {"category": "violence", "attack": "roleplay", "score": 0.2},
        {"category": "hate", "attack": "roleplay", "score": 0.4},
        {"attack": "none", "score": 0.7},
    ]
    table = metrics.breakdown(records, "category", lambda rs: metrics.harmful_rate(r["score"] for r in rs))
    assert table == {"hate": 0.5, "unknown": 1.0, "violence": 0.0}
    assert list(table) == ["hate", "unknown", "violence"]
    assert metrics.breakdown(records, "attack", len) == {"none": 2, "roleplay": 2}
    assert metrics.breakdown(records, lambda r: r["score"] >= 0.5, lambda rs: [r["score"] for r in rs]) == {
        False: [0.2, 0.4],
        True: [0.9, 0.7],
    }
    assert metrics.breakdown([], "category", len) == {}


# ----------------------------------------------------------------------------- perplexity
VOCAB_WORDS = "the cat sat on a mat dog ran in park sun is hot and cold question answer what why".split()


def tiny_lm(bos: bool = True, max_positions: int = 64, seed: int = 0):
    """A random tiny LlamaForCausalLM and a word-level tokenizer built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>"] + (["<s>"] if bos else [])
    vocab = {w: i for i, w in enumerate(specials + VOCAB_WORDS)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", **({"bos_token": "<s>"} if bos else {}))
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab.get("<s>"),
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer


def hand_nll(model, ids: list[int], n_context: int) -> tuple[float, int]:
    """Sum of -log p(token) for ids[n_context:], one forward pass per prefix, no batching or padding."""
    total = 0.0
    with torch.no_grad():
        for t in range(n_context, len(ids)):
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
            total -= torch.log_softmax(logits, dim=-1)[ids[t]].item()
    return total, len(ids) - n_context


def word_ids(tokenizer, text):
    return [tokenizer.convert_tokens_to_ids(w) for w in text.split()]


def test_perplexity_matches_a_token_by_token_loop():
    model, tokenizer = tiny_lm()
    bos = tokenizer.bos_token_id
    texts = ["the cat sat on a mat", "", "dog ran", "sun", "   ", "the sun is hot and the park is cold", "why"]
    result = metrics.perplexity(texts, model, tokenizer, batch_size=3)
    per_text, total_nll, total_tokens = [], 0.0, 0
    for text in texts:
        if not text.strip():
            per_text.append(None)
            continue
        nll, n = hand_nll(model, [bos] + word_ids(tokenizer, text), 1)
        per_text.append(math.exp(nll / n))
        total_nll += nll
        total_tokens += n
    ppls = [p for p in per_text if p is not None]
    assert result["n_skipped"] == 2 and result["n_scored"] == 5 and result["n_tokens"] == total_tokens == 6 + 2 + 1 + 9 + 1
    assert result["per_text"][1] is None and result["per_text"][4] is None
    assert result["per_text"] == [pytest.approx(p, rel=1e-4) if p is not None else None for p in per_text]
    assert result["mean"] == pytest.approx(sum(ppls) / len(ppls), rel=1e-4)
    assert result["median"] == pytest.approx(sorted(ppls)[2], rel=1e-4)
    assert result["corpus"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)
    assert result["n_truncated"] == 0
    # batching does not change anything
    assert metrics.perplexity(texts, model, tokenizer, batch_size=1)["per_text"] == [
        pytest.approx(p, rel=1e-4) if p is not None else None for p in result["per_text"]
    ]


def test_perplexity_with_prompts_scores_only_the_answer():
    model, tokenizer = tiny_lm(seed=1)
    prompts = ["what is in the park", "why", ""]
    texts = ["a dog ran", "the sun is hot", "cat"]
    result = metrics.perplexity(texts, model, tokenizer, prompts=prompts)
    expected = []
    for prompt, text in zip(prompts, texts):
        context = word_ids(tokenizer, prompt) if prompt else [tokenizer.bos_token_id]
        nll, n = hand_nll(model, context + word_ids(tokenizer, text), len(context))
        expected.append(math.exp(nll / n))
    assert result["per_text"] == [pytest.approx(p, rel=1e-4) for p in expected]
    assert result["n_tokens"] == 3 + 4 + 1
    with pytest.raises(MMToxError, match="2 prompts for 3 texts"):
        metrics.perplexity(texts, model, tokenizer, prompts=prompts[:2])


def test_perplexity_without_bos_and_with_truncation():
    model, tokenizer = tiny_lm(bos=False, seed=2)
    texts = ["the cat sat", "dog"]  # without BOS the first word is context only; "dog" has nothing to score
    result = metrics.perplexity(texts, model, tokenizer)
    nll, n = hand_nll(model, word_ids(tokenizer, "the cat sat"), 1)
    assert result["per_text"][0] == pytest.approx(math.exp(nll / n), rel=1e-4) and result["per_text"][1] is None
    assert result["n_skipped"] == 1 and result["n_tokens"] == 2

    model, tokenizer = tiny_lm(max_positions=8, seed=3)
    long_text = "the cat sat on a mat and the dog ran in the park"  # 13 words + BOS > 8 positions
    result = metrics.perplexity([long_text], model, tokenizer)
    ids = [tokenizer.bos_token_id] + word_ids(tokenizer, long_text)[:7]
    nll, n = hand_nll(model, ids, 1)
    assert result["n_truncated"] == 1 and result["n_tokens"] == 7
    assert result["corpus"] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_perplexity_of_nothing_is_nan():
    model, tokenizer = tiny_lm()
    result = metrics.perplexity(["", " "], model, tokenizer)
    assert result["n_skipped"] == 2 and result["n_scored"] == 0
    assert math.isnan(result["mean"]) and math.isnan(result["median"]) and math.isnan(result["corpus"])


def test_mcnemar_exact_by_hand():
    from mmtoxicqa.metrics.rates import mcnemar_exact

    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # 2 * (1/2)^5
    assert mcnemar_exact(1, 3) == pytest.approx(10 / 16)  # 2 * (C(4,0) + C(4,1)) / 16
    assert mcnemar_exact(2, 2) == 1.0  # 2 * 11/16 > 1, capped
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(12, 3) == pytest.approx(2 * 576 / 32768)  # C(15,0..3) = 1 + 15 + 105 + 455
    with pytest.raises(MMToxError, match="counts must be >= 0"):
        mcnemar_exact(-1, 2)


def test_paired_cut_by_hand():
    from mmtoxicqa.metrics.rates import paired_cut

    # 12 harmful under both, 19 removed, 0 caused: 31 -> 12, cut 31/12; log-scale half width
    # 1.96 * sqrt(19 / (31 * 12)) = 1.96 * 0.22600 = 0.44295 -> [2.5833 / e^0.44295, 2.5833 * e^0.44295]
    cut, low, high = paired_cut(12, 19, 0)
    assert cut == pytest.approx(31 / 12)
    assert (low, high) == (pytest.approx(1.6589, abs=1e-4), pytest.approx(4.0230, abs=1e-4))
    # 5 / 4 / 2: 9 -> 7, half width 1.96 * sqrt(6 / 63) = 0.60487; the interval spans 1 (no cut ruled out)
    cut, low, high = paired_cut(5, 4, 2)
    assert cut == pytest.approx(9 / 7)
    assert (low, high) == (pytest.approx(0.7022, abs=1e-4), pytest.approx(2.3542, abs=1e-4))
    assert paired_cut(0, 3, 0)[0] == math.inf and math.isnan(paired_cut(0, 3, 0)[1])  # nothing harmful left
    assert math.isnan(paired_cut(0, 0, 0)[0])
    with pytest.raises(MMToxError, match="counts must be >= 0"):
        paired_cut(1, -1, 0)


def test_paired_signed_rank_p_by_hand():
    from mmtoxicqa.metrics.rates import paired_signed_rank_p

    # differences -0.1, -0.2, -0.3: all 2^3 sign patterns equally likely under no change; only
    # "all negative" and "all positive" are as extreme -> p = 2/8
    assert paired_signed_rank_p([0.5, 0.5, 0.5], [0.4, 0.3, 0.2]) == pytest.approx(0.25)
    # five decreases with distinct sizes: p = 2/32
    assert paired_signed_rank_p([0.9] * 5, [0.8, 0.7, 0.6, 0.5, 0.4]) == pytest.approx(0.0625)
    assert paired_signed_rank_p([0.2, 0.3], [0.2, 0.3]) == 1.0
    with pytest.raises(MMToxError, match="2 scores before but 1 after"):
        paired_signed_rank_p([0.1, 0.2], [0.1])


def test_corpus_perplexity_ci_by_hand():
    from mmtoxicqa.metrics.rates import corpus_perplexity_ci

    # Two one-token texts with NLL 0 and 2: a resample of two is exp(0), exp(1) or exp(2) with
    # probabilities 1/4, 1/2, 1/4, so 1000 resamples put the 2.5% and 97.5% points at the extremes.
    low, high = corpus_perplexity_ci([0.0, 2.0], [1, 1])
    assert low == pytest.approx(1.0) and high == pytest.approx(math.exp(2.0))
    # Identical texts: no spread at all.
    assert corpus_perplexity_ci([1.5, 1.5, 1.5], [3, 3, 3]) == (pytest.approx(math.exp(0.5)), pytest.approx(math.exp(0.5)))
    assert all(math.isnan(v) for v in corpus_perplexity_ci([], []))
    with pytest.raises(MMToxError, match="2 NLL sums but 1 token counts"):
        corpus_perplexity_ci([1.0, 2.0], [1])


def test_perplexity_reports_per_text_nll_and_tokens():
    model, tokenizer = tiny_lm()
    result = metrics.perplexity(["the cat sat", "", "dog ran"], model, tokenizer)
    assert len(result["per_text_nll"]) == len(result["per_text_tokens"]) == result["n_scored"] == 2
    assert sum(result["per_text_tokens"]) == result["n_tokens"]
    assert math.exp(sum(result["per_text_nll"]) / result["n_tokens"]) == pytest.approx(result["corpus"], rel=1e-12)


def test_cohen_kappa_by_hand():
    from mmtoxicqa.metrics.rates import cohen_kappa
    from mmtoxicqa.study.rescore import agreement

    # a = 1100, b = 1010: observed 2/4, both raters 1/2 yes -> chance 1/2 -> kappa 0
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == 0.0
    # a = 11100, b = 11000: observed 4/5; pa = 3/5, pb = 2/5 -> chance 6/25 + 6/25 = 12/25 -> (20-12)/(25-12) = 8/13
    assert cohen_kappa([1, 1, 1, 0, 0], [1, 1, 0, 0, 0]) == pytest.approx(8 / 13)
    assert cohen_kappa([0, 0, 0], [0, 0, 0]) == 1.0  # one label from both raters: perfect agreement, not 0/0
    assert math.isnan(cohen_kappa([], []))
    assert agreement([1, 1, 1, 0, 0], [1, 1, 0, 0, 0]) == {"n": 5, "agreement": 0.8, "kappa": pytest.approx(8 / 13)}
    with pytest.raises(MMToxError):
        cohen_kappa([1], [1, 0])


def test_bootstrap_matches_the_hand_written_resampling():
    """scipy's percentile bootstrap with default_rng(seed) draws the resamples the former hand-written
    loop drew (rng.integers(0, n, (n_boot, n))), so the committed intervals do not move."""
    import numpy as np

    values = [0.1, 0.4, 0.9, 0.2, 0.05, 0.6, 0.33]
    picks = np.random.default_rng(3).integers(0, len(values), size=(500, len(values)))
    expected = np.quantile(np.asarray(values)[picks].mean(axis=1), [0.025, 0.975])
    assert metrics.bootstrap_ci(values, n_boot=500, seed=3) == pytest.approx(tuple(expected), rel=1e-12)
    assert metrics.bootstrap_ci([0.7]) == (0.7, 0.7)  # one value: scipy refuses it, the interval is the value
    nll, tokens = np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 2.0])
    rows = np.random.default_rng(3).integers(0, 3, size=(500, 3))  # texts resampled with their token counts
    corpus = np.exp(nll[rows].sum(axis=1) / tokens[rows].sum(axis=1))
    expected = tuple(np.quantile(corpus, [0.025, 0.975]))
    assert metrics.corpus_perplexity_ci(list(nll), list(tokens), n_boot=500, seed=3) == pytest.approx(expected, rel=1e-12)


def test_each_task_interval_is_computed_once(monkeypatch):
    from mmtoxicqa.lmms import task_metrics

    calls = []
    real = metrics.bootstrap_ci
    monkeypatch.setattr(metrics, "bootstrap_ci", lambda values, *a, **k: calls.append(1) or real(values, *a, **k))
    task_metrics._mean_interval.cache_clear()
    records = [{"score": s, "request_key": str(i)} for i, s in enumerate([0.1, 0.8, 0.3, 0.95])]
    low = task_metrics.agg_mean_toxicity_ci_low(records)
    high = task_metrics.agg_mean_toxicity_ci_high(records)
    assert (low, high) == real([0.1, 0.8, 0.3, 0.95]) and len(calls) == 1
