"""The subcommand table: each command's name, the cli module that adds it, and its one-line help.

Kept free of imports so that ``mmtoxicqa --help`` lists every command without loading torch,
datasets or lmms-eval; only the module of the command that runs is imported.
"""

from __future__ import annotations

# name -> (module under mmtoxicqa.cli, one-line help shown by `mmtoxicqa --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "build-model": (
        "build_model",
        "convert the embedded SmolLM2 GGUF into the cached LLaVA model directory (done automatically on first use)",
    ),
    "read-image": ("read_images", "print the text the reading model (embedded-ocr) reads in images, as its decoder sees it"),
    "download-sources": (
        "sources",
        "download the pinned source files (parallel, retried, sha256-checked, resumable); exit 2 if any failed",
    ),
    "build-data": ("build_data", "build the MM-TOXIC-QA splits (parquet) + datasheet from public sources"),
    "push-data": ("hub", "upload the built MM-TOXIC-QA folder to a Hugging Face dataset repository"),
    "calibrate": ("calibrate", "fit SGM glasses (per-neuron AUROC + dampening) for a model on the calibration split"),
    "glasses": ("calibrate", "summarise SGM glasses: neurons dampened per layer, AUROC distribution (no model needed)"),
    "collect": ("runs", "turn an lmms-eval output folder (--log_samples) into a run record JSON with per-item outcomes"),
    "regress": ("runs", "CI gate: exit 1 when a split's harmful rate rises beyond the tolerance with statistical support"),
    "rescore": (
        "rescore",
        "re-score saved answers (an lmms-eval run folder or sweep cells) with other judges; nothing is regenerated",
    ),
    "judges-agree": ("rescore", "agreement (percent and Cohen's kappa) between the judges a run logged, on the same answers"),
    "sweep": ("sweep", "run models x methods x tasks through lmms-eval; one result file per cell, resumable"),
    "leaderboard": ("leaderboard", "write LEADERBOARD.md, leaderboard.csv and frontier.png from sweep cells"),
    "export": ("export", "fold SGM glasses into a standard Hugging Face checkpoint (for vLLM / SGLang / TGI / transformers)"),
    "organism-report": (
        "organism_report",
        "the toxic model organism study's table (LEADERBOARD.md + JSON) from its sweep cells",
    ),
    "planted-control": (
        "planted_control",
        "SGM where its effect is known: vanilla vs SGM vs placebo on a tiny organism with planted toxic neurons (seconds)",
    ),
}


def help_for(name: str) -> str:
    """The one-line help of command ``name`` (each cli module passes it to ``add_parser``)."""

    return COMMANDS[name][1]
