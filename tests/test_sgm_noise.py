"""SGM's protocol against noise (issue #22): the answer scope pools exactly the reply's tokens, an FDR
selection keeps planted experts and few false ones, the null maximum matches shuffled labels, and the
placebo dampens as many neurons by the same factors as the real glasses."""

from __future__ import annotations

import math

import pytest
import torch

from mmtoxicqa.sgm import fit_glasses
from mmtoxicqa.sgm.auroc import auroc
from mmtoxicqa.sgm.glasses import auroc_p_values, benjamini_hochberg, null_max_auroc, null_sd, selection_mask
from mmtoxicqa.sgm.toy import plant_neurons, tiny_llama, trigger_batches

pytestmark = pytest.mark.usefixtures("one_thread")


def test_answer_scope_counts_exactly_the_reply_tokens(tiny_llava):
    """Two replies of different lengths, left padded: the counted positions hold the reply's own token
    ids, in order, and nothing of the prompt or padding (checked against the tokenizer by hand)."""
    from mmtoxicqa.sgm.calibration import iter_batches

    items = [
        {"id": "a", "question": "Write a tweet.", "image": None, "image_text": "Write a tweet.", "reply": "steal a car", "toxic_label": 1},
        {
            "id": "b",
            "question": "Write a tweet.",
            "image": None,
            "image_text": "Write a tweet.",
            "reply": "the cat sat on the mat today",
            "toxic_label": 0,
        },
    ]
    (batch,) = list(iter_batches(tiny_llava, items, batch_size=2, tokens="answer"))
    tokenizer = tiny_llava.tokenizer
    for row, item in enumerate(items):
        counted = batch["input_ids"][row][batch["token_mask"][row]].tolist()
        assert counted == tokenizer(item["reply"], add_special_tokens=False)["input_ids"]
        # the counted span is the end of the row: the reply is the last thing the model read
        last = int(batch["attention_mask"][row].nonzero().max())
        assert bool(batch["token_mask"][row, last]) and int(batch["token_mask"][row].sum()) == len(counted)


def test_answer_pairs_share_the_request_and_differ_in_the_reply():
    from mmtoxicqa.sgm.calibration import answer_pairs

    rows = [{"id": f"t{i}", "request": f"toxic statement {i}", "toxic_label": 1} for i in range(5)]
    rows += [{"id": f"n{i}", "request": f"neutral  statement {i}", "toxic_label": 0} for i in range(3)]
    items = answer_pairs(rows, limit=4)
    assert len(items) == 4 and [i["toxic_label"] for i in items] == [1, 0, 1, 0]
    for first, second in (items[0:2], items[2:4]):
        assert first["question"] == second["question"] == first["image_text"] and first["pair"] == second["pair"]
        assert first["reply"].startswith("toxic") and second["reply"].startswith("neutral statement")  # whitespace normalised
    assert len(answer_pairs(rows)) == 6  # every neutral statement paired once


def _planted_scores(n_per_class=100, neurons=5000, planted=10, shift=1.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(2 * n_per_class, neurons, generator=generator)
    labels = torch.tensor([1] * n_per_class + [0] * n_per_class)
    scores[:n_per_class, :planted] += shift
    return scores, labels


def test_fdr_finds_the_planted_experts_and_few_false_ones():
    scores, labels = _planted_scores()
    values = auroc(scores, labels)
    sizes = {"toxic": 100, "non_toxic": 100}
    for q in (0.05, 0.1):
        chosen = selection_mask(values, {"fdr": q}, sizes)
        assert bool(chosen[:10].all())  # every planted neuron (true AUROC 0.86) found
        false = int(chosen[10:].sum())
        assert false <= q * int(chosen.sum())
    paper = selection_mask(values, None)
    assert 2300 < int(paper.sum()) < 2700  # the paper's rule: about half of the noise neurons


def test_bh_and_p_values_by_hand():
    # Mann-Whitney normal approximation: n1 = n0 = 100 -> sd = sqrt(201 / 120000)
    assert null_sd({"toxic": 100, "non_toxic": 100}) == pytest.approx(math.sqrt(201 / 120000))
    p = auroc_p_values(torch.tensor([0.5, 0.5 + 1.959964 * math.sqrt(201 / 120000)]), {"toxic": 100, "non_toxic": 100})
    assert p.tolist() == pytest.approx([0.5, 0.025], abs=1e-6)
    # BH at q = 0.05 over m = 4: sorted p 0.01, 0.02, 0.035, 0.2 against 0.0125, 0.025, 0.0375, 0.05: ranks 1-3 pass
    mask = benjamini_hochberg(torch.tensor([0.01, 0.035, 0.02, 0.2], dtype=torch.float64), 0.05)
    assert mask.tolist() == [True, True, True, False]
    assert benjamini_hochberg(torch.tensor([0.5, 0.9], dtype=torch.float64), 0.05).tolist() == [False, False]


def test_null_maximum_matches_shuffled_labels():
    """The printed null maximum is what permuted labels give (46,080 neurons, 100 + 100 items: about 0.67)."""
    assert null_max_auroc({"toxic": 100, "non_toxic": 100}, 46080) == pytest.approx(0.669, abs=0.003)
    scores, labels = _planted_scores(planted=0, neurons=20000, seed=1)
    maxima = [float(auroc(scores, labels[torch.randperm(200, generator=torch.Generator().manual_seed(s))]).max()) for s in range(4)]
    expected = null_max_auroc({"toxic": 100, "non_toxic": 100}, 20000)
    assert abs(sum(maxima) / len(maxima) - expected) < 0.015


def test_placebo_has_the_real_count_and_alphas_on_other_neurons():
    planted = [(0, 5), (1, 17), (2, 40)]
    model = plant_neurons(tiny_llama(vocab_size=64, num_hidden_layers=3, intermediate_size=64), 7, planted)
    batches, labels, _, _ = trigger_batches(24, 7, 64, seq_len=12, batch_size=8, seed=0)
    glasses = fit_glasses(model, batches, labels, progress=False, model_id="toy-planted", select="top_k=3")
    placebo = glasses.placebo()
    assert placebo.num_dampened == glasses.num_dampened == 3
    assert torch.equal(torch.sort(placebo.alpha_all()).values, torch.sort(glasses.alpha_all()).values)
    real = {(layer, neuron) for layer, neuron, _, _ in glasses.top_neurons(3)}
    assert real == set(planted)
    dampened = {(layer, neuron) for layer, neuron, _, alpha in placebo.top_neurons(3) if alpha < 1}
    assert len(dampened) == 3 and not dampened & set(planted)
    paper = glasses.with_options(select="all")
    assert paper.placebo().num_dampened == paper.num_dampened > 3


def test_sgm_placebo_option_wears_the_placebo(tiny_llava, tmp_path, monkeypatch):
    from test_sgm_integration import write_calibration

    from mmtoxicqa.methods import build_method

    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))  # the glasses sgm caches stay out of the user's cache

    calib = write_calibration(tmp_path / "calibration.parquet")
    real = build_method("sgm", tiny_llava, calibration_data=str(calib))
    placebo = build_method("sgm", tiny_llava, calibration_data=str(calib), sgm_placebo="1")
    assert placebo.worn["sgm"]["dampened"] == real.worn["sgm"]["dampened"] > 0
    assert placebo.worn["sgm"]["placebo_of"] == real.worn["sgm"]["alpha_sha256"] != placebo.worn["sgm"]["alpha_sha256"]
    assert torch.equal(torch.sort(placebo.glasses.alpha_all()).values, torch.sort(real.glasses.alpha_all()).values)
