"""SGM expertise: vectorised exact AUROC equals sklearn's, ties included; bad labels refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.sgm.auroc import auroc
from mmtoxicqa.sgm.glasses import compute_alpha, parse_select, selection_mask


def _sklearn(scores: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    y = labels.numpy()
    return np.array([roc_auc_score(y, scores[:, j].double().numpy()) for j in range(scores.shape[1])])


@pytest.mark.parametrize("levels", [3, 7, None])
def test_auroc_equals_sklearn_with_ties_many_neurons(levels):
    g = torch.Generator().manual_seed(levels or 0)
    n, m = 157, 1000
    if levels is None:  # continuous scores plus a block of exact ties
        scores = torch.randn(n, m, generator=g, dtype=torch.float64)
        scores[:40] = scores[0]
    else:
        scores = torch.randint(0, levels, (n, m), generator=g).double() / 3.0
    labels = torch.randint(0, 2, (n,), generator=g)
    ours = auroc(scores, labels)
    assert ours.dtype == torch.float64 and ours.shape == (m,)
    assert np.max(np.abs(ours.numpy() - _sklearn(scores, labels))) < 1e-9


def test_auroc_chunking_dtypes_and_single_column():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(-4, 5, (64, 300), generator=g).float()
    labels = torch.arange(64) % 3 == 0
    reference = _sklearn(scores, labels.long())
    for chunk in (1, 7, 300, None):
        assert np.max(np.abs(auroc(scores, labels, chunk_size=chunk).numpy() - reference)) < 1e-9
    assert np.max(np.abs(auroc(scores.half(), labels).numpy() - reference)) < 1e-9  # small ints are exact in fp16
    single = auroc(scores[:, 5], labels.tolist())
    assert abs(float(single) - reference[5]) < 1e-9
    # Constant column: 0.5; perfect separation: 1 and 0.
    x = torch.stack([torch.ones(64), labels.double(), -labels.double()], 1)
    assert auroc(x, labels).tolist() == [0.5, 1.0, 0.0]


@pytest.mark.parametrize(
    "labels, message",
    [
        ([1] * 10, "0 non-toxic"),
        ([0] * 10, "0 toxic"),
        ([1] + [0] * 9, "1 toxic and 9 non-toxic"),
    ],
)
def test_auroc_refuses_empty_or_tiny_class(labels, message):
    with pytest.raises(MMToxError, match=message):
        auroc(torch.randn(10, 4), labels)


def test_auroc_refuses_bad_labels_and_nan():
    with pytest.raises(MMToxError, match="0 .*or 1"):
        auroc(torch.randn(6, 2), [0, 1, 2, 0, 1, 0])
    with pytest.raises(MMToxError, match="one label per input"):
        auroc(torch.randn(6, 2), [0, 1, 0, 1])
    scores = torch.randn(6, 3)
    scores[2, 1] = float("nan")
    with pytest.raises(MMToxError, match="column 1"):
        auroc(scores, [0, 1, 0, 1, 0, 1])


def test_alpha_formula_and_selection():
    a = torch.tensor([1.0, 0.9, 0.75, 0.5, 0.3, 0.9], dtype=torch.float64)
    assert compute_alpha(a).tolist() == pytest.approx([0.0, 0.2, 0.5, 1.0, 1.0, 0.2])
    assert compute_alpha(a, strength=0.5).tolist() == pytest.approx([0.5, 0.6, 0.75, 1.0, 1.0, 0.6])
    assert torch.equal(compute_alpha(a, strength=0.0), torch.ones(6))
    # top_k ties broken by position; never a neuron at or below 0.5.
    assert selection_mask(a, {"top_k": 2}).tolist() == [True, True, False, False, False, False]
    assert selection_mask(a, "top_k=10").tolist() == [True, True, True, False, False, True]
    assert selection_mask(a, {"top_fraction": 0.5}).tolist() == [True, True, False, False, False, True]
    assert selection_mask(a, "min_auroc=0.8").tolist() == [True, True, False, False, False, True]
    assert parse_select(3) == {"top_k": 3} and parse_select("all") is None
    for bad in ("top_k=0", "top_fraction=1.5", "min_auroc=0.2", "best=3", {"top_k": 1, "min_auroc": 0.6}):
        with pytest.raises(MMToxError):
            parse_select(bad)


@pytest.mark.parametrize("strength", [-0.1, 1.01, float("nan"), "strong"])
def test_strength_outside_unit_interval_refused(strength):
    with pytest.raises(MMToxError, match="strength"):
        compute_alpha(torch.tensor([0.9], dtype=torch.float64), strength=strength)
