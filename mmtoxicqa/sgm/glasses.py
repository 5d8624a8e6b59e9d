"""Suppression: from each neuron's AUROC to its dampening factor alpha, and the Glasses object.

For a neuron with AUROC > 0.5 (it fires more on toxic inputs) the dampening factor is

    alpha = 1 - s * (2 * AUROC - 1)        (AurA: 1 - Gini, with strength s in [0, 1])

so a perfect expert (AUROC 1) is switched off at s = 1 and a neuron at chance keeps 1.
Neurons with AUROC <= 0.5, and neurons left out by an optional narrowing (``select``),
keep alpha = 1. ``select`` narrows the set globally over all layers:

* ``None`` / ``"all"``: every neuron with AUROC > 0.5 (AurA's default);
* ``{"top_k": k}`` (or ``"top_k=k"``, or an int): the k neurons with the highest AUROC;
* ``{"top_fraction": f}`` (``"top_fraction=f"``): the top ``ceil(f * M)`` of all M neurons;
* ``{"min_auroc": t}`` (``"min_auroc=t"``): neurons with AUROC >= t (t in [0.5, 1]);
* ``{"fdr": q}`` (``"fdr=q"``): neurons whose AUROC is above chance at false discovery rate q
  (Benjamini-Hochberg over all neurons). Each neuron's one-sided p-value comes from the Mann-Whitney
  normal approximation of its AUROC for the calibration's class sizes (no tie correction: pooled
  activations are continuous, and ignoring ties only makes p larger). With 100 + 100 items the
  null standard deviation of an AUROC is 0.041 and the largest of 46,080 null AUROCs is about 0.67,
  so the paper's rule (every AUROC > 0.5) dampens about half of all neurons on noise alone.

Ranking ties are broken by position (layer order, then neuron index), so selection is
deterministic. A narrowing never includes a neuron with AUROC <= 0.5.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import torch

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.discovery import NeuronSite, find_decoder_layers, site_modules, site_offsets, unwrap_model
from mmtoxicqa.sgm.artifact import read_glasses, save_glasses
from mmtoxicqa.sgm.auroc import auroc_problem

SELECT_KEYS = ("top_k", "top_fraction", "min_auroc", "fdr")
QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def check_strength(strength) -> float:
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise MMToxError(f"strength={strength!r} is not a number; pass a value in [0, 1] (1 = full AurA dampening, 0 = off)") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise MMToxError(f"strength={strength!r} is outside [0, 1]; pass a value in [0, 1] (1 = full AurA dampening, 0 = off)")
    return value


def parse_select(select) -> dict | None:
    """Normalise ``select`` to None or a one-key dict (see the module docstring)."""
    if select is None or (isinstance(select, str) and select.strip().lower() in ("", "all", "none")):
        return None
    if isinstance(select, bool):
        raise MMToxError(
            f"select={select!r} is not a selection; pass None, an int (top-k), or 'top_k=K' / 'top_fraction=F' / 'min_auroc=T' / 'fdr=Q'"
        )
    if isinstance(select, int):
        select = {"top_k": select}
    elif isinstance(select, str):
        key, sep, value = select.partition("=")
        if not sep:
            key, sep, value = select.partition(":")
        key = key.strip()
        if not sep or key not in SELECT_KEYS:
            raise MMToxError(f"select={select!r} is not a selection; write 'all', 'top_k=K', 'top_fraction=F', 'min_auroc=T' or 'fdr=Q'")
        try:
            select = {key: int(value) if key == "top_k" else float(value)}
        except ValueError:
            raise MMToxError(f"select={select!r}: {value.strip()!r} is not a number") from None
    if not isinstance(select, dict) or len(select) != 1 or next(iter(select)) not in SELECT_KEYS:
        raise MMToxError(f"select={select!r} is not a selection; pass one of {', '.join(SELECT_KEYS)} (e.g. {{'top_k': 100}})")
    key, value = next(iter(select.items()))
    if key == "top_k":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MMToxError(f"select top_k={value!r} must be a positive integer")
    elif key in ("top_fraction", "fdr"):
        if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
            raise MMToxError(f"select {key}={value!r} must be in (0, 1]")
        value = float(value)
    else:
        if not isinstance(value, (int, float)) or not 0.5 <= float(value) <= 1.0:
            raise MMToxError(f"select min_auroc={value!r} must be in [0.5, 1]")
        value = float(value)
    return {key: value}


def select_text(select) -> str:
    """A selection as a user writes it (``all`` = every AUROC > 0.5, the paper's rule)."""
    select = parse_select(select)
    if select is None:
        return "all"
    key, value = next(iter(select.items()))
    return f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"


def null_sd(class_sizes) -> float:
    """Standard deviation of one neuron's AUROC under no association (Mann-Whitney, no ties)."""
    n1, n0 = _class_counts(class_sizes)
    return math.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0))


def _class_counts(class_sizes) -> tuple[int, int]:
    if not isinstance(class_sizes, dict) or not class_sizes.get("toxic") or not class_sizes.get("non_toxic"):
        raise MMToxError(
            f"an FDR selection needs the calibration's class sizes, and these glasses record {class_sizes!r}; refit them with `mmtoxicqa calibrate`"
        )
    return int(class_sizes["toxic"]), int(class_sizes["non_toxic"])


def auroc_p_values(auroc_all: torch.Tensor, class_sizes) -> torch.Tensor:
    """One-sided p-value of each AUROC being above 0.5 (normal approximation of Mann-Whitney's U)."""
    z = (auroc_all.double() - 0.5) / null_sd(class_sizes)
    return 0.5 * torch.erfc(z / math.sqrt(2.0))


def benjamini_hochberg(p_values: torch.Tensor, q: float) -> torch.Tensor:
    """Bool mask of the hypotheses Benjamini-Hochberg rejects at false discovery rate ``q``."""
    m = p_values.numel()
    order = torch.sort(p_values, stable=True).indices
    ranked = p_values[order]
    passing = (ranked <= q * torch.arange(1, m + 1, dtype=torch.float64) / m).nonzero().flatten()
    mask = torch.zeros(m, dtype=torch.bool)
    if passing.numel():
        mask[order[: int(passing.max()) + 1]] = True
    return mask


def null_max_auroc(class_sizes, neurons: int) -> float:
    """Expected largest of ``neurons`` AUROCs under no association (Blom's approximation of the
    normal maximum): what an expert must beat to be told apart from noise."""

    return 0.5 + null_sd(class_sizes) * NormalDist().inv_cdf((neurons - 0.375) / (neurons + 0.25))


def selection_mask(auroc_all: torch.Tensor, select, class_sizes=None) -> torch.Tensor:
    """Bool mask over all neurons (concatenated) of those to dampen (``class_sizes`` for ``fdr``)."""
    select = parse_select(select)
    above = auroc_all > 0.5
    if select is None:
        return above
    key, value = next(iter(select.items()))
    if key == "min_auroc":
        return above & (auroc_all >= value)
    if key == "fdr":
        return above & benjamini_hochberg(auroc_p_values(auroc_all, class_sizes), value)
    k = value if key == "top_k" else math.ceil(value * auroc_all.numel())
    k = min(int(k), int(auroc_all.numel()))
    # Stable descending order: ties keep position order.
    order = torch.sort(auroc_all, descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(above)
    mask[order] = True
    return mask & above


def compute_alpha(auroc_all: torch.Tensor, strength: float = 1.0, select=None, class_sizes=None) -> torch.Tensor:
    """Dampening factors (float32) for concatenated AUROCs: 1 - s (2 AUROC - 1) on the selected, 1 elsewhere."""
    s = check_strength(strength)
    auroc_all = auroc_all.double()
    mask = selection_mask(auroc_all, select, class_sizes)
    alpha = torch.where(mask, 1.0 - s * (2.0 * auroc_all - 1.0), torch.ones_like(auroc_all))
    return alpha.float()


@dataclass
class Glasses:
    """Per-site AUROC and dampening factors for one model, with how they were made."""

    sites: list[NeuronSite]
    auroc: list[torch.Tensor]  # per site, float64 (width,)
    alpha: list[torch.Tensor]  # per site, float32 (width,)
    meta: dict[str, Any] = field(default_factory=dict)
    placebo_auroc: list[torch.Tensor] | None = None  # per site: AUROC of the same responses, labels permuted

    def __post_init__(self):
        if not (len(self.sites) == len(self.auroc) == len(self.alpha)):
            raise MMToxError("glasses: sites, auroc and alpha must have one entry per site")
        for site, a, b in zip(self.sites, self.auroc, self.alpha):
            if a.shape != (site.width,) or b.shape != (site.width,):
                raise MMToxError(
                    f"glasses: layer {site.layer_index} has {site.width} neurons but its tensors have shapes {tuple(a.shape)}/{tuple(b.shape)}"
                )
            problem = auroc_problem(a)
            if problem:
                raise MMToxError(f"glasses: layer {site.layer_index}: {problem}; an AUROC is a probability in [0, 1], recompute it")
            if not bool(torch.isfinite(b).all()) or bool((b < 0).any()) or bool((b > 1).any()):
                raise MMToxError(
                    f"glasses: layer {site.layer_index} has alpha values that are NaN or outside [0, 1]; recompute the glasses"
                )
        if self.placebo_auroc is not None and [p.shape for p in self.placebo_auroc] != [a.shape for a in self.auroc]:
            raise MMToxError("glasses: placebo AUROCs must have one entry per neuron")
        names = [(s.layer_index, s.module_name) for s in self.sites]
        if len(set(names)) != len(names):
            raise MMToxError("glasses: two sites name the same module; one site per module")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_auroc(
        cls,
        sites: Sequence[NeuronSite],
        auroc_all: torch.Tensor,
        *,
        strength: float = 1.0,
        select=None,
        meta: dict | None = None,
        placebo_auroc: list[torch.Tensor] | None = None,
    ) -> Glasses:
        auroc_all = auroc_all.detach().double().cpu()
        total = sum(s.width for s in sites)
        if auroc_all.numel() != total:
            raise MMToxError(f"glasses: {auroc_all.numel()} AUROC values for {total} neurons")
        problem = auroc_problem(auroc_all)
        if problem:
            raise MMToxError(f"glasses: {problem}; an AUROC is a probability in [0, 1], recompute it")
        meta = dict(meta or {})
        alpha_all = compute_alpha(auroc_all, strength, select, meta.get("class_sizes"))
        widths = [s.width for s in sites]
        meta["strength"] = check_strength(strength)
        meta["select"] = parse_select(select)
        return cls(list(sites), list(auroc_all.split(widths)), list(alpha_all.split(widths)), meta, placebo_auroc)

    def with_options(self, *, strength: float | None = None, select="keep") -> Glasses:
        """New glasses from the same AUROCs with another strength and/or selection."""
        strength = self.meta.get("strength", 1.0) if strength is None else strength
        select = self.meta.get("select") if select == "keep" else select
        return Glasses.from_auroc(
            self.sites, self.auroc_all(), strength=strength, select=select, meta=self.meta, placebo_auroc=self.placebo_auroc
        )

    def placebo(self) -> Glasses:
        """The control for these glasses: the same alphas (same count, same distribution) given to the
        neurons that rank highest when the calibration labels are permuted (``placebo_auroc``), so the
        intervention has the same size but no relation to toxicity."""
        if self.placebo_auroc is None:
            raise MMToxError(
                "these glasses carry no placebo ranking (fitted before placebos existed); refit them with `mmtoxicqa calibrate` "
                "or delete the cached file so sgm calibrates again"
            )
        real_order = torch.sort(self.auroc_all(), descending=True, stable=True).indices
        placebo_all = torch.cat(self.placebo_auroc)
        placebo_order = torch.sort(placebo_all, descending=True, stable=True).indices
        alpha = torch.ones_like(self.alpha_all())
        alpha[placebo_order] = self.alpha_all()[real_order]
        widths = [s.width for s in self.sites]
        meta = dict(self.meta, placebo_of=self.alpha_sha256())
        return Glasses(self.sites, list(placebo_all.split(widths)), list(alpha.split(widths)), meta)

    def as_worn(self, *, strength=None, select=None) -> tuple[Glasses, list[str]]:
        """These glasses as the user asked to wear them: unchanged (alphas exactly as fitted) unless an
        explicit ``strength`` / ``select`` differs from the one they were fitted with; then re-derived
        from the AUROCs. Returns the glasses and one ``"option: fitted -> used"`` note per change."""
        changes = []
        fitted_strength = float(self.meta.get("strength", 1.0))
        if strength is not None and check_strength(strength) != fitted_strength:
            changes.append(f"strength: {fitted_strength:g} -> {check_strength(strength):g}")
        fitted_select = parse_select(self.meta.get("select"))
        if select is not None and parse_select(select) != fitted_select:
            changes.append(f"select: {select_text(fitted_select)} -> {select_text(parse_select(select))}")
        if not changes:
            return self, []
        worn = self.with_options(
            strength=fitted_strength if strength is None else strength, select=fitted_select if select is None else select
        )
        return worn, changes

    def alpha_sha256(self) -> str:
        """A digest of what wearing these glasses does (every site's module name and float32 alphas):
        two runs with the same digest dampened the same neurons by the same factors."""

        digest = hashlib.sha256()
        for site, alpha in zip(self.sites, self.alpha):
            digest.update(f"{site.layer_index}:{site.module_name}:{site.width}|".encode())
            digest.update(alpha.detach().to(torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def worn_record(self) -> dict:
        """What a run wore, for its results JSON and sweep cell (JSON-serialisable)."""
        meta = self.meta
        return {
            "alpha_sha256": self.alpha_sha256(),
            "dampened": self.num_dampened,
            "neurons": self.num_neurons,
            "strength": meta.get("strength"),
            "select": select_text(parse_select(meta.get("select"))),
            "tokens": meta.get("tokens", "text"),
            "site": meta.get("site", "down_input"),
            "pooling": meta.get("pooling"),
            "text_only": meta.get("text_only"),
            "class_sizes": meta.get("class_sizes"),
            **({"placebo_seed": meta.get("placebo_seed"), "placebo_of": meta["placebo_of"]} if "placebo_of" in meta else {}),
            **({"fixed_factor": meta["fixed_factor"], "top_k": meta.get("top_k")} if "fixed_factor" in meta else {}),
        }

    # -- views -------------------------------------------------------------------------------
    def auroc_all(self) -> torch.Tensor:
        return torch.cat(self.auroc)

    def alpha_all(self) -> torch.Tensor:
        return torch.cat(self.alpha)

    @property
    def num_neurons(self) -> int:
        return sum(s.width for s in self.sites)

    @property
    def num_dampened(self) -> int:
        return int((self.alpha_all() < 1).sum())

    def top_neurons(self, k: int = 10) -> list[tuple[int, int, float, float]]:
        """The k highest-AUROC neurons as (layer_index, neuron, auroc, alpha)."""
        auroc_all, alpha_all = self.auroc_all(), self.alpha_all()
        order = torch.sort(auroc_all, descending=True, stable=True).indices[:k]
        starts = site_offsets(self.sites)
        out = []
        for flat in order.tolist():
            k_site = max(i for i, s in enumerate(starts) if s <= flat)
            out.append((self.sites[k_site].layer_index, flat - starts[k_site], float(auroc_all[flat]), float(alpha_all[flat])))
        return out

    def summary(self) -> dict:
        """Neurons dampened per layer and the AUROC distribution (JSON-serialisable)."""
        auroc_all = self.auroc_all()
        q = torch.quantile(auroc_all, torch.tensor(QUANTILES, dtype=torch.float64)) if auroc_all.numel() else torch.zeros(len(QUANTILES))
        per_layer = []
        for site, a, b in zip(self.sites, self.auroc, self.alpha):
            damp = b < 1
            per_layer.append(
                {
                    "layer": site.layer_index,
                    "module": site.module_name,
                    "width": site.width,
                    "dampened": int(damp.sum()),
                    "min_alpha": float(b.min()) if b.numel() else 1.0,
                    "mean_alpha": float(b.mean()) if b.numel() else 1.0,
                    "max_auroc": float(a.max()) if a.numel() else 0.5,
                }
            )
        meta = self.meta
        return {
            "model_id": meta.get("model_id"),
            "model_type": meta.get("model_type"),
            "strength": meta.get("strength"),
            "select": meta.get("select"),
            "pooling": meta.get("pooling"),
            "pool_dtype": meta.get("pool_dtype", meta.get("dtype")),
            "class_sizes": meta.get("class_sizes"),
            "calibration_limit": meta.get("calibration_limit"),
            "neurons": self.num_neurons,
            "dampened": self.num_dampened,
            "auroc_quantiles": {f"{p:g}": float(v) for p, v in zip(QUANTILES, q.tolist())},
            "auroc_above": {f"{t:g}": int((auroc_all > t).sum()) for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)},
            **self._noise_summary(auroc_all),
            "per_layer": per_layer,
        }

    def _noise_summary(self, auroc_all: torch.Tensor) -> dict:
        """How the AUROCs compare with what shuffled labels would give, for these class sizes."""
        try:
            null_max = null_max_auroc(self.meta.get("class_sizes"), auroc_all.numel())
            fdr = {f"{q:g}": int(selection_mask(auroc_all, {"fdr": q}, self.meta.get("class_sizes")).sum()) for q in (0.01, 0.05, 0.1)}
        except MMToxError:
            return {}
        out = {"null_sd": null_sd(self.meta.get("class_sizes")), "null_expected_max_auroc": null_max, "fdr_pass": fdr}
        if self.placebo_auroc is not None:
            out["placebo_max_auroc"] = float(torch.cat(self.placebo_auroc).max())
        return out

    def summary_text(self) -> str:
        s = self.summary()
        lines = [
            (
                f"SGM glasses for {s['model_id'] or '?'} ({s['model_type']}): {s['dampened']}/{s['neurons']} neurons dampened, "
                f"strength {s['strength']}, select {s['select'] or 'all AUROC>0.5'}, pooling {s['pooling']}, classes {s['class_sizes']}"
                + (f", pooled matrix in {s['pool_dtype']}" if s.get("pool_dtype") not in (None, "float32") else "")
            ),
            "AUROC quantiles: " + ", ".join(f"q{k}={v:.3f}" for k, v in s["auroc_quantiles"].items()),
            *(
                [
                    f"noise for these class sizes: null AUROC sd {s['null_sd']:.3f}, expected max of {s['neurons']} null AUROCs "
                    f"{s['null_expected_max_auroc']:.3f}"
                    + (f" (permuted labels gave {s['placebo_max_auroc']:.3f})" if "placebo_max_auroc" in s else "")
                    + f"; above chance at FDR 0.01 / 0.05 / 0.1: {' / '.join(str(v) for v in s['fdr_pass'].values())} neurons"
                ]
                if "null_sd" in s
                else []
            ),
            *([f"calibration subset: calibration_limit={s['calibration_limit']} (class-balanced)"] if s.get("calibration_limit") else []),
            f"{'layer':>5} {'width':>6} {'dampened':>8} {'min_alpha':>9} {'max_auroc':>9}",
        ]
        for row in s["per_layer"]:
            lines.append(f"{row['layer']:>5} {row['width']:>6} {row['dampened']:>8} {row['min_alpha']:>9.3f} {row['max_auroc']:>9.3f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Glasses(model_type={self.meta.get('model_type')!r}, layers={len(self.sites)}, neurons={self.num_neurons}, dampened={self.num_dampened})"

    # -- model check, files -----------------------------------------------------------------------
    def validate(self, model) -> None:
        """Refuse (one line) glasses made for another model: model_type, module names, widths."""
        net = unwrap_model(model)
        mine = self.meta.get("model_type")
        theirs = getattr(getattr(net, "config", None), "model_type", None)
        if mine and theirs and mine != theirs:
            raise MMToxError(
                f"these glasses were fitted on a {mine!r} model ({self.meta.get('model_id') or 'unknown id'}) but this model is {theirs!r}; "
                "fit glasses for this model with fit_glasses()"
            )
        expected_layers = self.meta.get("decoder_layers")
        if expected_layers is not None:
            _, blocks = find_decoder_layers(net)
            if len(blocks) != int(expected_layers):
                raise MMToxError(
                    f"these glasses were fitted on a model with {expected_layers} decoder layers ({self.meta.get('model_id') or 'unknown id'}) "
                    f"but this {theirs or type(net).__name__} model has {len(blocks)}; fit glasses for this model with fit_glasses()"
                )
        site_modules(net, self.sites)

    def save(self, path) -> Path:

        return save_glasses(self, path)

    @classmethod
    def load(cls, path, model=None) -> Glasses:
        """Load glasses; with ``model``, also check they belong to it."""

        glasses = cls(*read_glasses(path))
        if model is not None:
            glasses.validate(model)
        return glasses
