"""Neuron interventions: SGM and its relatives (AurA, Det0, Damp).

All of them rate decoder MLP neurons on the benchmark's ``calibration`` split (or
``calibration_data=``) and wear the resulting glasses (mmtoxicqa.sgm.wear) only while a
generation runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mmtoxicqa.core.errors import MMToxError, yes_no
from mmtoxicqa.core.hashing import sha256_file
from mmtoxicqa.core.registry import register_method
from mmtoxicqa.methods.base import Method, Part, check_count, check_number
from mmtoxicqa.modeling.discovery import SITE_KINDS
from mmtoxicqa.modeling.loading import LoadedModel
from mmtoxicqa.modeling.positions import TOKEN_SCOPES
from mmtoxicqa.sgm import Glasses, wear
from mmtoxicqa.sgm.calibration import calibrate
from mmtoxicqa.sgm.glasses import selection_mask
from mmtoxicqa.sgm.memory import check_auroc_device, parse_pool_dtype

NEURON_SLOT = "neuron dampening (sgm / aura / det0 / damp)"


def _glasses(
    loaded: LoadedModel,
    glasses: str | None,
    *,
    text_only: bool,
    pooling: str,
    layers,
    calibration_data,
    calibration_limit,
    tokens: str = "text",
    site: str = "down_input",
    pool_dtype: str | None = None,
    auroc_device: str | None = None,
):
    """(fitted glasses, where they came from): a file the user fitted, or a calibration now (cached;
    under data parallel, once: each process runs its shard, rank 0 rates and writes, the others load)."""

    if glasses:
        path = Path(glasses).expanduser()
        if not path.is_file():
            raise MMToxError(
                f"glasses={glasses!r} not found; make them with `mmtoxicqa calibrate --out {glasses}` or omit glasses= to calibrate now"
            )
        return Glasses.load(path, loaded.model), {"file": str(path), "file_sha256": sha256_file(path)}
    limit = check_count("calibration_limit", calibration_limit, low=1, allow_none=True)
    fitted = calibrate(
        loaded,
        calibration_data,
        text_only=text_only,
        pooling=pooling,
        layers=layers,
        limit=limit,
        tokens=tokens,
        site=site,
        pool_dtype=pool_dtype,
        auroc_device=auroc_device,
    )
    return fitted, {"file": None, "calibrated_on": str(calibration_data or "the calibration split"), "calibration_limit": limit}


def _check_memory_options(pool_dtype, auroc_device) -> None:
    """Refuse a bad ``calibration_pool_dtype`` / ``calibration_auroc_device`` before calibrating (one line)."""

    parse_pool_dtype(pool_dtype)
    check_auroc_device(auroc_device)


def _as_worn(owner: str, fitted, source: dict, strength, select):
    """The glasses worn exactly as fitted unless ``strength`` / ``select`` are given and differ; each
    change is logged in one line (fitted -> used) and kept in the record."""
    worn, changes = fitted.as_worn(strength=strength, select=select)
    if changes and source.get("file"):
        # stderr, not logging: visible under lmms-eval and sweeps whatever their log level
        print(
            f"mmtoxicqa: {owner}: glasses {source['file']} worn with {'; '.join(changes)} (explicit option overrides the file's)",
            file=sys.stderr,
        )
    return worn, {**source, **worn.worn_record(), "overrides": changes}


def _check_mode(mode: str, owner: str) -> str:
    if mode not in ("hooks", "fused"):
        raise MMToxError(f"{owner}_mode={mode!r} must be 'hooks' or 'fused'")
    return mode


def _wear_part(loaded: LoadedModel, glasses, mode: str, owner: str) -> Part:

    _check_mode(mode, owner)
    return Part("intervention", lambda: wear(loaded.model, glasses, mode=mode), slot=NEURON_SLOT, owner=owner)


@register_method("sgm", slots=(NEURON_SLOT,))
def sgm(
    loaded: LoadedModel,
    glasses: str | None = None,
    sgm_strength: float | None = None,
    sgm_select: str | None = None,
    sgm_mode: str = "hooks",
    sgm_pooling: str = "max",
    sgm_layers: str | None = None,
    sgm_tokens: str = "text",
    sgm_placebo: bool | str = False,
    sgm_site: str | None = None,
    calibration_data: str | None = None,
    calibration_limit: int | None = None,
    calibration_pool_dtype: str | None = None,
    calibration_auroc_device: str | None = None,
) -> Method:
    """SGM, safety glasses for toxic neurons (this project; builds on AurA, Suau et al. 2024): language-decoder
    MLP neurons rated by AUROC on fused image+text calibration inputs, each scaled by
    alpha = 1 - s * (2 AUROC - 1) during every forward pass.

    A ``glasses=`` file is worn exactly as it was fitted (its strength, selection and alphas);
    ``sgm_strength`` / ``sgm_select`` given explicitly re-derive the alphas from its AUROCs. Without a
    file, SGM calibrates now with the paper's rule (strength 1, every AUROC > 0.5) unless told otherwise.

    ``sgm_placebo=1`` wears the control instead: the same alphas given to the neurons that rank highest
    under permuted calibration labels (:meth:`Glasses.placebo`): the same number of neurons dampened by
    the same factors, unrelated to toxicity. ``sgm_site=gate_up_output`` calibrates and dampens the
    outputs of each MLP's gate and up projections (AurA's released placement) instead of the input of its
    down projection; a glasses file carries its own site."""
    strength = None if sgm_strength in (None, "", "None") else check_number("sgm_strength", sgm_strength)
    _check_mode(sgm_mode, "sgm")
    if sgm_site not in (None, *SITE_KINDS):
        raise MMToxError(f"sgm_site={sgm_site!r} must be one of {', '.join(SITE_KINDS)}")
    check_count("calibration_limit", calibration_limit, low=1, allow_none=True)
    _check_memory_options(calibration_pool_dtype, calibration_auroc_device)
    if strength == 0:
        return Method("sgm", loaded, worn={"sgm": {"strength": 0.0, "dampened": 0, "overrides": ["strength: -> 0 (off)"]}})
    fitted, source = _glasses(
        loaded,
        glasses,
        text_only=False,
        pooling=sgm_pooling,
        layers=sgm_layers,
        calibration_data=calibration_data,
        calibration_limit=calibration_limit,
        tokens=sgm_tokens,
        site=sgm_site or "down_input",
        pool_dtype=calibration_pool_dtype,
        auroc_device=calibration_auroc_device,
    )
    fitted_site = fitted.meta.get("site", "down_input")
    if sgm_site is not None and sgm_site != fitted_site:
        raise MMToxError(
            f"glasses={glasses} were fitted at site {fitted_site}, not sgm_site={sgm_site}; refit them with `--site {sgm_site}`"
        )
    worn, record = _as_worn("sgm", fitted, source, strength, sgm_select)
    if yes_no(sgm_placebo, "sgm_placebo"):
        real = record["alpha_sha256"]
        worn = worn.placebo()
        record = {**record, **worn.worn_record(), "placebo_of": real}
    method = Method("sgm", loaded, [_wear_part(loaded, worn, sgm_mode, "sgm")], worn={"sgm": record})
    method.glasses = worn
    return method


@register_method("aura", slots=(NEURON_SLOT,))
def aura(
    loaded: LoadedModel,
    aura_strength: float | None = None,
    aura_mode: str = "hooks",
    aura_tokens: str = "request",
    calibration_data: str | None = None,
    calibration_limit: int | None = None,
    calibration_pool_dtype: str | None = None,
    calibration_auroc_device: str | None = None,
) -> Method:
    """AurA (Suau et al. 2024, "Whispering Experts"): SGM's machinery calibrated on the text alone
    (images dropped): the unimodal ablation. As in AurA, a neuron's response is pooled over the
    sentence alone (``aura_tokens="request"``: the item's own question, not the chat template or
    system prompt); ``aura_tokens=text`` pools like SGM's default."""

    strength = None if aura_strength in (None, "", "None") else check_number("aura_strength", aura_strength)
    _check_mode(aura_mode, "aura")
    check_count("calibration_limit", calibration_limit, low=1, allow_none=True)
    _check_memory_options(calibration_pool_dtype, calibration_auroc_device)
    if aura_tokens not in TOKEN_SCOPES:
        raise MMToxError(f"aura_tokens={aura_tokens!r} must be one of {', '.join(TOKEN_SCOPES)}")
    if strength == 0:
        return Method("aura", loaded, worn={"aura": {"strength": 0.0, "dampened": 0, "overrides": ["strength: -> 0 (off)"]}})
    fitted, source = _glasses(
        loaded,
        None,
        text_only=True,
        pooling="max",
        layers=None,
        calibration_data=calibration_data,
        calibration_limit=calibration_limit,
        tokens=aura_tokens,
        pool_dtype=calibration_pool_dtype,
        auroc_device=calibration_auroc_device,
    )
    worn, record = _as_worn("aura", fitted, source, strength, None)
    method = Method("aura", loaded, [_wear_part(loaded, worn, aura_mode, "aura")], worn={"aura": record})
    method.glasses = worn
    return method


def _fixed_alpha(fitted, top_k: int, factor: float):
    """Glasses whose top-k AUROC neurons get ``factor`` and every other neuron 1."""

    mask = selection_mask(fitted.auroc_all(), {"top_k": top_k})
    alpha = torch.where(mask, torch.full_like(fitted.alpha_all(), factor), torch.ones_like(fitted.alpha_all()))
    widths = [s.width for s in fitted.sites]
    return Glasses(fitted.sites, fitted.auroc, list(alpha.split(widths)), dict(fitted.meta, fixed_factor=factor, top_k=top_k))


def _ranking_glasses(loaded, glasses, calibration_data, calibration_limit, pool_dtype, auroc_device):
    """The glasses whose AUROCs rank det0's and damp's top-k neurons: the file, or SGM's default calibration."""
    return _glasses(
        loaded,
        glasses,
        text_only=False,
        pooling="max",
        layers=None,
        calibration_data=calibration_data,
        calibration_limit=calibration_limit,
        pool_dtype=pool_dtype,
        auroc_device=auroc_device,
    )


@register_method("det0", slots=(NEURON_SLOT,))
def det0(
    loaded: LoadedModel,
    glasses: str | None = None,
    det0_top_k: int = 200,
    calibration_data: str | None = None,
    calibration_limit: int | None = None,
    calibration_pool_dtype: str | None = None,
    calibration_auroc_device: str | None = None,
) -> Method:
    """Det0 (Suau et al. 2024's baseline, after Suau et al. 2022 "Self-conditioning"): the top-k
    expert neurons by AUROC are set to zero. With ``glasses=``, the ranking is that file's AUROCs."""
    k = check_count("det0_top_k", det0_top_k)
    check_count("calibration_limit", calibration_limit, low=1, allow_none=True)
    _check_memory_options(calibration_pool_dtype, calibration_auroc_device)
    if k == 0:
        return Method("det0", loaded)
    fitted, source = _ranking_glasses(
        loaded, glasses, calibration_data, calibration_limit, calibration_pool_dtype, calibration_auroc_device
    )
    worn = _fixed_alpha(fitted, k, 0.0)
    method = Method("det0", loaded, [_wear_part(loaded, worn, "hooks", "det0")], worn={"det0": {**source, **worn.worn_record()}})
    method.glasses = worn
    return method


@register_method("damp", slots=(NEURON_SLOT,))
def damp(
    loaded: LoadedModel,
    glasses: str | None = None,
    damp_top_k: int = 200,
    damp_factor: float = 0.5,
    calibration_data: str | None = None,
    calibration_limit: int | None = None,
    calibration_pool_dtype: str | None = None,
    calibration_auroc_device: str | None = None,
) -> Method:
    """Damp (Suau et al. 2024's baseline): the top-k expert neurons by AUROC are multiplied by a
    fixed factor (factor 1 = off). With ``glasses=``, the ranking is that file's AUROCs."""
    factor = check_number("damp_factor", damp_factor)
    k = check_count("damp_top_k", damp_top_k)
    check_count("calibration_limit", calibration_limit, low=1, allow_none=True)
    _check_memory_options(calibration_pool_dtype, calibration_auroc_device)
    if k == 0 or factor == 1.0:
        return Method("damp", loaded)
    fitted, source = _ranking_glasses(
        loaded, glasses, calibration_data, calibration_limit, calibration_pool_dtype, calibration_auroc_device
    )
    worn = _fixed_alpha(fitted, k, factor)
    method = Method("damp", loaded, [_wear_part(loaded, worn, "hooks", "damp")], worn={"damp": {**source, **worn.worn_record()}})
    method.glasses = worn
    return method
