"""Expertise: every neuron's AUROC for toxic (1) vs non-toxic (0), exact, all neurons at once.

The AUROC of a score that puts toxic inputs above non-toxic ones is the Mann-Whitney U
statistic over ``n1 * n0``. With ties handled by average ranks:

    R1  = sum over toxic inputs of their average rank among all N scores (1-based)
    AUC = (R1 - n1 (n1 + 1) / 2) / (n1 n0)

The average rank of a value v is ``(#{< v} + #{<= v} + 1) / 2``; both counts come from
``searchsorted`` on each neuron's sorted column, so ``2 R1`` is an exact integer sum and the
only rounding is the final division (float64). Columns are processed in chunks on the
scores' device (CPU or GPU) to bound memory.
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


def auroc(scores: torch.Tensor, labels, *, chunk_size: int | None = None, min_per_class: int = MIN_PER_CLASS) -> torch.Tensor:
    """AUROC of each column of ``scores`` (N x M, or N) for ``labels`` (N, 1 = toxic), float64 (M,).

    Exact with ties (equals ``sklearn.metrics.roc_auc_score`` per column). Computed on
    ``scores.device``; ``chunk_size`` columns at a time (default: about 4M elements per chunk).
    """
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    squeeze = scores.dim() == 1
    if squeeze:
        scores = scores.unsqueeze(1)
    if scores.dim() != 2:
        raise MMToxError(f"scores must be N x M (inputs x neurons), got shape {tuple(scores.shape)}")
    n, m = scores.shape
    y = check_labels(labels, n, min_per_class).to(scores.device)
    n1 = int(y.sum())
    n0 = n - n1
    if not scores.is_floating_point():
        scores = scores.double()
    nan_cols = torch.isnan(scores).any(0)
    if bool(nan_cols.any()):
        col = int(nan_cols.nonzero()[0])
        raise MMToxError(f"scores column {col} contains NaN; the pooled responses are broken (check the model dtype/inputs)")
    if chunk_size is None:
        chunk_size = max(1, (1 << 22) // max(n, 1))
    out = torch.empty(m, dtype=torch.float64, device=scores.device)
    positive_rows = y.nonzero().squeeze(1)
    offset = n1 + 0  # from the +1 in each average rank: sum over n1 toxic inputs of 1
    subtract = n1 * (n1 + 1)  # 2 * n1 (n1 + 1) / 2
    denominator = 2.0 * n1 * n0
    for start in range(0, m, chunk_size):
        block = scores[:, start : start + chunk_size].T.contiguous()  # (c, N): one row per neuron
        if block.dtype in (torch.float16, torch.bfloat16):
            block = block.float()  # exact widening; sort/searchsorted need a native type
        ordered, _ = torch.sort(block, dim=1)
        toxic_values = block.index_select(1, positive_rows).contiguous()  # (c, n1)
        below = torch.searchsorted(ordered, toxic_values, side="left")  # #{< v}
        upto = torch.searchsorted(ordered, toxic_values, side="right")  # #{<= v}
        twice_r1 = (below + upto).sum(1) + offset  # exact int64: 2 * R1
        out[start : start + block.shape[0]] = (twice_r1 - subtract).double() / denominator
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
