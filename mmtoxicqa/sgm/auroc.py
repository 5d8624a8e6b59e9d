"""Expertise: every neuron's AUROC for toxic (1) vs non-toxic (0), exact, all neurons at once.

The AUROC of a score that puts toxic inputs above non-toxic ones is the Mann-Whitney U
statistic over ``n1 * n0``. With ties handled by average ranks:

    R1  = sum over toxic inputs of their average rank among all N scores (1-based)
    AUC = (R1 - n1 (n1 + 1) / 2) / (n1 n0)

The average rank of a value v is ``(#{< v} + #{<= v} + 1) / 2``; both counts come from
``searchsorted`` on each neuron's sorted column, so ``2 R1`` is an exact integer sum and the
only rounding is the final division (float64).

Memory: columns are processed in blocks (``chunk_size`` columns, default about 4M scores per
block). Each block is copied on its own to the ``device`` that computes (default: where the
scores are), so a pooled matrix kept in CPU memory is never copied whole to a GPU; the working
set of one block is :func:`block_bytes`. A float16 / bfloat16 matrix is widened to float32 one
block at a time (exact). Several label vectors (the real labels and the placebo's permutation)
share one sort per block (:func:`aurocs`).

Ties: equal scores get the average rank, so a tie between a toxic and a non-toxic input counts
1/2 (the Mann-Whitney tie correction). Storing scores in a narrower float type rounds them
monotonically: it can merge two distinct values into a tie but never swap their order, so each
cross-class pair that merges moves the AUROC by at most ``1 / (2 n1 n0)``.
"""

from __future__ import annotations

import torch

from mmtoxicqa.core.errors import MMToxError

MIN_PER_CLASS = 2


def check_labels(labels, n: int | None = None, min_per_class: int = MIN_PER_CLASS) -> torch.Tensor:
    """Labels as a bool tensor (True = toxic); refuse a missing or tiny class, giving the counts."""
    y = torch.as_tensor(labels).reshape(-1)
    if y.dtype != torch.bool:
        if not torch.all((y == 0) | (y == 1)):
            raise MMToxError("labels must be 0 (non-toxic) or 1 (toxic); fix the calibration labels")
        y = y != 0
    if n is not None and y.numel() != n:
        raise MMToxError(f"labels has {y.numel()} entries but there are {n} scored inputs; pass one label per input")
    toxic = int(y.sum())
    clean = int(y.numel()) - toxic
    if toxic < min_per_class or clean < min_per_class:
        raise MMToxError(
            f"calibration needs at least {min_per_class} toxic and {min_per_class} non-toxic inputs, got {toxic} toxic "
            f"and {clean} non-toxic; add inputs of the missing class"
        )
    return y


DEFAULT_BLOCK_ELEMENTS = 1 << 22


def default_chunk_size(n: int) -> int:
    """Columns per block for ``n`` inputs: about 4M scores (``DEFAULT_BLOCK_ELEMENTS``) per block."""
    return max(1, DEFAULT_BLOCK_ELEMENTS // max(n, 1))


def block_bytes(n: int, n1: int, columns: int, label_sets: int = 1, stored_bytes: int = 4) -> int:
    """Upper bound of the memory one block of ``columns`` columns takes while its AUROCs are computed
    (``n`` inputs, ``n1`` toxic, ``stored_bytes`` per stored score): the column copy moved to the
    computing device (``stored_bytes``), its float32 transpose (4), the sorted values (4) and sort
    indices (8) per score, and per toxic score and label set its value (4) and two int64 ranks (16)."""
    per_score = stored_bytes + 4 + 4 + 8
    return columns * (n * per_score + label_sets * n1 * (4 + 16))


def _as_scores(scores) -> tuple[torch.Tensor, bool]:
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    squeeze = scores.dim() == 1
    if squeeze:
        scores = scores.unsqueeze(1)
    if scores.dim() != 2:
        raise MMToxError(f"scores must be N x M (inputs x neurons), got shape {tuple(scores.shape)}")
    return scores, squeeze


def aurocs(
    scores: torch.Tensor,
    label_sets,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    min_per_class: int = MIN_PER_CLASS,
) -> list[torch.Tensor]:
    """The AUROC of every column of ``scores`` (N x M) for each labelling in ``label_sets``: a list of
    float64 (M,) tensors on the CPU, one per labelling, from one sort per block.

    ``scores`` stay where they are; each block of ``chunk_size`` columns (default
    :func:`default_chunk_size`) is copied to ``device`` (default: ``scores.device``) and computed
    there, so the working set is one block (:func:`block_bytes`), never a second copy of ``scores``."""
    scores, _ = _as_scores(scores)
    n, m = scores.shape
    device = scores.device if device is None else torch.device(device)
    ys = [check_labels(labels, n, min_per_class).to(device) for labels in label_sets]
    if not ys:
        raise MMToxError("aurocs needs at least one labelling")
    if chunk_size is None:
        chunk_size = default_chunk_size(n)
    if int(chunk_size) < 1:
        raise MMToxError(f"chunk_size={chunk_size} must be a positive number of columns")
    chunk_size = int(chunk_size)
    plans = []
    for y in ys:
        n1 = int(y.sum())
        # 2 R1 = sum over toxic of (#{< v} + #{<= v}) + n1 (from the +1 of each average rank); subtract 2 * n1 (n1 + 1) / 2
        plans.append((y.nonzero().squeeze(1), n1, n1 * (n1 + 1) - n1, 2.0 * n1 * (n - n1)))
    outs = [torch.empty(m, dtype=torch.float64) for _ in ys]
    for start in range(0, m, chunk_size):
        block = scores[:, start : start + chunk_size].to(device)
        if block.is_floating_point():
            if block.dtype in (torch.float16, torch.bfloat16):
                block = block.float()  # exact widening; sort/searchsorted need a native type
        else:
            block = block.double()
        block = block.T.contiguous()  # (c, N): one row per neuron
        if bool(torch.isnan(block).any()):
            col = start + int(torch.isnan(block).any(1).nonzero()[0])
            raise MMToxError(f"scores column {col} contains NaN; the pooled responses are broken (check the model dtype/inputs)")
        ordered = torch.sort(block, dim=1).values
        for out, (positive_rows, _n1, subtract, denominator) in zip(outs, plans):
            toxic_values = block.index_select(1, positive_rows).contiguous()  # (c, n1)
            below = torch.searchsorted(ordered, toxic_values, side="left")  # #{< v}
            upto = torch.searchsorted(ordered, toxic_values, side="right")  # #{<= v}
            twice_r1 = (below + upto).sum(1)  # exact int64
            out[start : start + block.shape[0]] = ((twice_r1 - subtract).double() / denominator).cpu()
            del toxic_values, below, upto
        del block, ordered
    return outs


def auroc(
    scores: torch.Tensor,
    labels,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    min_per_class: int = MIN_PER_CLASS,
) -> torch.Tensor:
    """AUROC of each column of ``scores`` (N x M, or N) for ``labels`` (N, 1 = toxic), float64 (M,).

    Exact with ties (equals ``sklearn.metrics.roc_auc_score`` per column). Computed block by block
    on ``device`` (default: ``scores.device``), ``chunk_size`` columns at a time (default: about 4M
    scores per block); returned on ``device`` when given, else on ``scores.device``.
    """
    matrix, squeeze = _as_scores(scores)
    [out] = aurocs(matrix, [labels], chunk_size=chunk_size, device=device, min_per_class=min_per_class)
    out = out.to(matrix.device if device is None else torch.device(device))
    return out[0] if squeeze else out


def auroc_problem(auroc: torch.Tensor) -> str | None:
    """Why ``auroc`` cannot be a tensor of AUROCs (NaN/inf or outside [0, 1]), or None when it can."""
    auroc = auroc.detach()
    bad = ~torch.isfinite(auroc) | (auroc < 0) | (auroc > 1)
    if not bool(bad.any()):
        return None
    first = int(bad.nonzero()[0][0]) if auroc.dim() else 0
    value = float(auroc.reshape(-1)[first])
    return f"{int(bad.sum())} AUROC value(s) are NaN or outside [0, 1] (e.g. neuron {first}: {value})"
