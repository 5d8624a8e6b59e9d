"""Fold SGM glasses into a plain Hugging Face checkpoint that any inference engine can serve.

Why: vLLM, SGLang and TGI run their own model code, so forward hooks never reach them. SGM
scales neuron j (input j of each decoder layer's MLP output projection) by a constant alpha_j,
which equals scaling that projection's weight column: ``W (alpha * x) == (W diag(alpha)) x``
(for GPT-2's ``Conv1D``, whose weight is (in, out), the row). A bias is added after the
product, so it is not scaled. The export is the source checkpoint with those few tensors
rewritten; config, generation config, tokenizer, processor, shard layout, index and dtypes
stay as they are, and loading it needs no custom code.

How, for models larger than RAM: the model is never instantiated with weights. An empty
(meta-device) copy built from ``config.json`` gives the runtime module names and shapes that
the glasses are checked against. Each safetensors shard is copied as bytes, one file at a
time, and only the byte ranges of the changed tensors are rewritten in place, a block of rows
at a time (``CHUNK_BYTES``), read straight from the source file at the offsets its header
gives. Dtypes and shapes do not change, so every header, offset and the index stay valid.
Memory use is a few blocks, whatever the model's size.

The alphas are the glasses' own (``Glasses.alpha``, the ones hooks mode multiplies by), or
re-derived from their AUROCs with ``--strength`` / ``--select`` exactly as
``Glasses.with_options`` does; the product is :func:`mmtoxicqa.sgm.wear.scale_neurons`, the one
fused wearing uses, so an exported weight equals the in-memory fused weight bit for bit.

Key mapping: glasses record runtime module names (``model.language_model.layers.3.mlp.down_proj``)
while checkpoints may use another layout (``language_model.model.layers.3.mlp.down_proj.weight``,
as transformers still saves LLaVA). A site maps to the one checkpoint tensor ending in
``layers.3.mlp.down_proj.weight`` outside vision/projector components (the components discovery
excludes), with the expected shape; anything else is refused in one line.

The output is written to a hidden temporary folder next to ``--out`` and renamed at the end, so
an interrupted export never leaves a complete-looking checkpoint behind.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import mmtoxicqa
from mmtoxicqa.core.atomic import atomic_dir
from mmtoxicqa.core.errors import MMToxError, is_os_fault, os_fault
from mmtoxicqa.core.hashing import sha256_file
from mmtoxicqa.methods import ALIASES, check_method
from mmtoxicqa.modeling.discovery import EXCLUDED_COMPONENTS, find_decoder_layers, is_conv1d
from mmtoxicqa.modeling.loading import resolve_pretrained
from mmtoxicqa.sgm import Glasses
from mmtoxicqa.sgm.wear import neuron_dim, scale_neurons

log = logging.getLogger(__name__)

RECORD_FILE = "sgm_export.json"
CARD_FILE = "README.md"
RECORD_FORMAT = "mmtoxicqa-sgm-export"
RECORD_VERSION = 1
# The names transformers loads safetensors weights from (a single file, or an index naming the shards).
SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
# Weight files of other formats: never copied, since they would hold the un-dampened weights.
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5", ".onnx", ".pkl", ".npz", ".safetensors")
SKIPPED_DIRS = frozenset({".git", ".cache", ".huggingface"})
DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
CHUNK_BYTES = 32 << 20  # source bytes folded per block


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file: its file, shape, dtype and absolute byte range."""

    file: str
    shape: list[int]
    dtype: str
    begin: int
    end: int


@dataclass(frozen=True)
class Fold:
    """One checkpoint tensor to rewrite: neuron j (index j along ``dim``) times ``alpha[j]``."""

    layer_index: int
    module_name: str
    key: str
    info: TensorInfo
    dim: int
    alpha: torch.Tensor

    @property
    def dampened(self) -> int:
        return int((self.alpha < 1).sum())


@dataclass
class Checkpoint:
    """A source checkpoint's safetensors layout, read from the file headers only."""

    root: Path
    weight_files: list[str]
    index_file: str | None
    tensors: dict[str, TensorInfo]
    not_copied: list[str]


# -- which methods can be served ------------------------------------------------------------------

# Per method: None when its intervention is a constant per-neuron scale that this command folds, else
# what it does at run time that a checkpoint cannot hold and how to serve it instead.
SERVING = {
    "sgm": None,
    "aura": None,  # AurA's glasses (`calibrate --text-only --tokens request`) fold the same way
    "vanilla": "it changes nothing; serve the source model",
    "det0": "its fixed top-k zeroing is not what --strength/--select derive; wear it with --model det0 (transformers)",
    "damp": "its fixed top-k factor is not what --strength/--select derive; wear it with --model damp (transformers)",
    "coca": "CoCA recomputes the logits at every decoding step; apply it in the client (a logits processor) on top of the served model",
    "self_debias": "self-debiasing recomputes the logits at every decoding step; apply it in the client",
    "bad_words": "a decoding-time word ban; pass the list as the engine's bad_words / logit_bias in each request",
    "safety_prompt": "a prompt; add its system prompt and suffix in the client's requests",
    "adashield_s": "a prompt; add its suffix in the client's requests",
    "ecso": "a multi-pass controller around generation; run it in the client",
    "steer": "it adds a vector to a decoder layer's output at run time; serve it with transformers (--model steer)",
}


def check_exportable(spec: str) -> str:
    """The one foldable method of ``spec`` (``sgm``, ``aura``), or a one-line refusal naming the part that
    works at run time and how to serve the rest (e.g. ``sgm_star`` = ``sgm+coca``: export SGM, apply CoCA in the client)."""

    names = check_method(spec)
    shown = f"{spec} (= {ALIASES[spec]})" if spec in ALIASES else spec
    runtime = [n for n in names if SERVING.get(n, "it works at run time") is not None]
    folds = [n for n in names if n not in runtime]
    if runtime:
        why = "; ".join(f"{n}: {SERVING.get(n, 'it works at run time')}" for n in runtime)
        instead = f"export {folds[0]} (--method {folds[0]}) and " if folds else ""
        raise MMToxError(f"--method {shown} cannot be folded into a checkpoint ({why}); {instead}serve the rest as said")
    return folds[0]


# -- source ---------------------------------------------------------------------------------------


def resolve_source(model: str | None, revision: str | None = None) -> Path:
    """The local folder of ``model`` (a directory, a hub id already downloaded, or None = embedded)."""

    source = resolve_pretrained(model)
    if os.path.isdir(source):
        return Path(source).resolve()
    try:
        from huggingface_hub import snapshot_download  # optional network client, only on this path

        folder = snapshot_download(
            source, revision=revision, ignore_patterns=[f"*{s}" for s in OTHER_WEIGHT_SUFFIXES if s != ".safetensors"]
        )
    except Exception as exc:  # offline, unknown repo, gated: all need the same fix
        raise MMToxError(
            f"--model {source}: could not get it from the Hugging Face hub ({type(exc).__name__}); "
            f"download it on a connected machine (`hf download {source}`) and pass its local folder"
        ) from None
    return Path(folder).resolve()


def read_header(path: Path) -> tuple[int, dict]:
    """(header length, header dict) of a safetensors file: tensor dtypes, shapes and byte offsets."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or length <= 0 or length > size - 8:
            raise MMToxError(f"{path} is not a safetensors file (or is truncated); re-download or re-save the checkpoint")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise MMToxError(f"{path} has a broken safetensors header; re-download or re-save the checkpoint") from None
    if not isinstance(header, dict):
        raise MMToxError(f"{path} has a broken safetensors header; re-download or re-save the checkpoint")
    return length, header


def source_files(root: Path) -> list[str]:
    """Every file under ``root`` as a relative POSIX path (symlinks followed, VCS/cache folders skipped)."""
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name in SKIPPED_DIRS:
            continue
        if entry.is_dir():
            out.extend(f"{entry.name}/{sub}" for sub in source_files(entry))
        elif entry.is_file():
            out.append(entry.name)
    return out


def read_checkpoint(root: Path) -> Checkpoint:
    """The safetensors files transformers would load from ``root`` (its index, else ``model.safetensors``) and their tensors."""
    if (root / RECORD_FILE).is_file():
        raise MMToxError(f"{root} is already an SGM export (it has {RECORD_FILE}); export from the original model, not from an export")
    everything = source_files(root)
    if (root / SAFE_INDEX).is_file():
        index = root / SAFE_INDEX
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise MMToxError(f"{index} is not a safetensors index (no weight_map); re-download the checkpoint") from None
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise MMToxError(f"{root} lacks {missing[0]} named by {SAFE_INDEX} ({len(missing)} missing); finish downloading the checkpoint")
    elif (root / SAFE_SINGLE).is_file():
        weight_map, files = None, [SAFE_SINGLE]
    else:
        others = [f for f in everything if f.endswith(OTHER_WEIGHT_SUFFIXES)]
        found = f" (found {', '.join(others[:3])})" if others else ""
        raise MMToxError(
            f"{root} has no {SAFE_SINGLE} or {SAFE_INDEX}{found}; export needs a safetensors checkpoint: "
            "load the model in transformers and save_pretrained() it (safetensors is the default), then export that folder"
        )
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        length, header = read_header(root / name)
        size = (root / name).stat().st_size
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if key in tensors:
                raise MMToxError(f"tensor {key} is in both {tensors[key].file} and {name}; re-save the checkpoint with save_pretrained()")
            try:
                begin, end = (8 + length + int(o) for o in info["data_offsets"])
                tensors[key] = TensorInfo(name, [int(d) for d in info["shape"]], str(info["dtype"]), begin, end)
            except (KeyError, TypeError, ValueError):
                raise MMToxError(f"{root / name}: tensor {key} has a broken header entry; re-download the checkpoint") from None
            if tensors[key].end > size:
                raise MMToxError(f"{root / name} is truncated (it ends inside tensor {key}); re-download the checkpoint")
    if weight_map is not None:
        wrong = [k for k, f in weight_map.items() if k not in tensors or tensors[k].file != f]
        if wrong:
            raise MMToxError(
                f"{SAFE_INDEX} in {root} places {wrong[0]} in {weight_map[wrong[0]]} but that file does not hold it "
                f"({len(wrong)} such); re-save the checkpoint with save_pretrained()"
            )
    # Other weight files and indexes: a loader could pick them up and bypass the folded weights.
    kept = set(files) | ({SAFE_INDEX} if weight_map is not None else set())
    not_copied = [f for f in everything if f not in kept and (f.endswith(OTHER_WEIGHT_SUFFIXES) or f.endswith(".index.json"))]
    return Checkpoint(root, files, SAFE_INDEX if weight_map is not None else None, tensors, not_copied)


def empty_model(root: Path, trust_remote_code: bool = False):
    """The model's module tree on the meta device (no weights allocated), of the class ``load_model`` would pick."""
    from transformers import (  # heavy: transformers loads only where a model runs
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )

    try:
        config = AutoConfig.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise MMToxError(
            f"{root}: no usable config.json ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "point --model at a Hugging Face model folder (pass --trust-remote-code only for a model whose code you trust)"
        ) from None
    if getattr(config, "quantization_config", None):
        raise MMToxError(f"{root} is a quantized checkpoint; export from the unquantized model, then quantize the exported one")
    multimodal = type(config) in AutoModelForImageTextToText._model_mapping
    auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            return auto.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError:
        raise MMToxError(
            f"{root}: transformers has no image-text-to-text or causal LM class for model_type {config.model_type!r}; "
            "upgrade transformers, or pass --trust-remote-code for a model whose code you trust"
        ) from None


# -- plan -----------------------------------------------------------------------------------------


def _non_language(key: str) -> bool:
    return any(part in EXCLUDED_COMPONENTS for part in key.split("."))


def checkpoint_key(site, list_name: str, ckpt: Checkpoint, tensor: str = "weight") -> tuple[str, str]:
    """(key, prefix): the checkpoint tensor holding ``site``'s projection weight (or ``tensor="bias"``),
    whatever the key layout, and what precedes ``layers.{i}.`` in it."""
    own = f"{list_name}.{site.layer_index}."
    if not site.module_name.startswith(own):
        raise MMToxError(
            f"glasses site {site.module_name} is not in this model's decoder layer list {list_name}; these glasses belong to another model"
        )
    leaf = list_name.rsplit(".", 1)[-1]
    suffix = f"{leaf}.{site.layer_index}.{site.module_name[len(own) :]}.{tensor}"
    matches = [k for k in ckpt.tensors if (k == suffix or k.endswith("." + suffix)) and not _non_language(k)]
    if not matches:
        raise MMToxError(
            f"no tensor in {ckpt.root} ends with {suffix!r} (the weight of {site.module_name}); the checkpoint names it differently: "
            "load the model in transformers and save_pretrained() it, then export that folder"
        )
    if len(matches) > 1:
        raise MMToxError(
            f"{len(matches)} tensors in {ckpt.root} end with {suffix!r} ({', '.join(sorted(matches)[:4])}); "
            "cannot tell which is the language decoder's; remove the extra copies from the checkpoint"
        )
    return matches[0], matches[0][: -len(suffix)]


def plan_folds(glasses, net, ckpt: Checkpoint) -> list[Fold]:
    """One Fold per site whose alpha is not all 1 (two for an output site with a bias), each mapped to its checkpoint tensor and checked."""
    list_name, _ = find_decoder_layers(net)
    folds, prefixes = [], {}
    for site, alpha in zip(glasses.sites, glasses.alpha):
        if bool((alpha == 1).all()):
            continue
        module = net.get_submodule(site.module_name)
        if not (isinstance(module, torch.nn.Linear) or is_conv1d(module)):
            raise MMToxError(
                f"{site.module_name} is a {type(module).__name__}, not a Linear or Conv1D; SGM export folds alpha into plain linear weights only"
            )
        tensors = [("weight", neuron_dim(module, site.reads))]
        if site.reads == "output" and getattr(module, "bias", None) is not None:
            tensors.append(("bias", 0))  # an output feature is W[j] x + b[j]: both scale
        for tensor, dim in tensors:
            expected = list(getattr(module, tensor).shape)
            key, prefix = checkpoint_key(site, list_name, ckpt, tensor)
            info = ckpt.tensors[key]
            if info.shape != expected:
                raise MMToxError(
                    f"checkpoint tensor {key} in {info.file} has shape {info.shape} but {site.module_name} expects {expected}; "
                    "the weights do not match config.json: re-save the model with save_pretrained()"
                )
            if info.dtype not in DTYPES:
                raise MMToxError(
                    f"checkpoint tensor {key} in {info.file} is {info.dtype}, not a float; export from the unquantized model, then quantize the exported one"
                )
            prefixes[prefix] = key
            folds.append(Fold(site.layer_index, site.module_name, key, info, dim, alpha.detach().float().cpu()))
    if len(prefixes) > 1:
        raise MMToxError(
            f"the glasses' layers map to tensors under different prefixes ({', '.join(sorted(prefixes.values())[:3])}); "
            "the checkpoint mixes key layouts: re-save it with save_pretrained()"
        )
    return folds


# -- write ----------------------------------------------------------------------------------------


def fold_tensor(source, target, fold: Fold, chunk_bytes: int | None = None) -> str:
    """Rewrite ``fold``'s tensor in ``target`` (a byte copy of ``source``, both open binary files) with alpha
    folded in, a block of rows at a time; returns the sha256 of the new tensor bytes."""
    info, dtype = fold.info, DTYPES[fold.info.dtype]
    rows, cols = (info.shape[0], 1) if len(info.shape) == 1 else info.shape  # a bias: one column
    row_bytes = cols * dtype.itemsize
    if rows * row_bytes != info.end - info.begin:
        raise MMToxError(
            f"{fold.key} in {info.file} occupies {info.end - info.begin} bytes but its shape {info.shape} needs {rows * row_bytes}; "
            "the file is corrupt, re-download it"
        )
    step = max(1, (chunk_bytes or CHUNK_BYTES) // max(row_bytes, 1))
    digest = hashlib.sha256()
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        source.seek(info.begin + start * row_bytes)
        raw = bytearray(source.read((stop - start) * row_bytes))
        if len(raw) != (stop - start) * row_bytes:
            raise MMToxError(f"{info.file} ends inside tensor {fold.key}; the file is truncated, re-download it")
        block = torch.frombuffer(raw, dtype=dtype).view(stop - start, cols)
        alpha = fold.alpha if fold.dim == 1 else fold.alpha[start:stop]
        data = scale_neurons(block, alpha, fold.dim).contiguous().view(torch.uint8).numpy()
        target.seek(info.begin + start * row_bytes)
        target.write(data)
        digest.update(data)
    return digest.hexdigest()


def _check_out(out: Path, src: Path, overwrite: bool) -> None:
    if out == src or src in out.parents or out in src.parents:
        raise MMToxError(f"--out {out} overlaps the source checkpoint {src}; write the export to a separate folder")
    if out.exists() and not out.is_dir():
        raise MMToxError(f"--out {out} is a file; pass a folder path for the exported checkpoint")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = [p.name for p in sorted(out.iterdir()) if p.name == "config.json" or p.name.endswith(".safetensors")]
        what = f"already holds a checkpoint ({', '.join(held[:3])})" if held else "is not empty"
        raise MMToxError(f"--out {out} {what}; pass --overwrite to replace it, or choose another folder")


def _select_text(select) -> str:
    if not select:
        return "all AUROC > 0.5"
    return ", ".join(f"{k}={v}" for k, v in select.items()) if isinstance(select, dict) else str(select)


def _card(record: dict, original: str | None) -> str:
    """README model card: what was folded, with which glasses, and how to evaluate it."""
    g, m = record["glasses"], record["model"]
    layers = "all" if g["layers"] is None else g["layers"]
    body = "\n".join(
        [
            f"# {Path(m['id']).name} with SGM safety glasses folded in",
            "",
            f"This checkpoint is `{m['id']}` with SGM (mmtoxicqa {record['mmtoxicqa_version']}) folded into its weights: for every",
            "dampened neuron j of a language-decoder MLP output projection, weight column j is multiplied by alpha_j",
            "(`W[:, j] *= alpha_j`; rows for GPT-2 `Conv1D`). Nothing else changed: config, tokenizer, processor,",
            "shard layout and dtypes are the source's. It loads like the original, with no custom code.",
            "",
            "| | |",
            "| --- | --- |",
            f"| source model | `{m['id']}` ({m['model_type']}) |",
            f"| glasses file | `{g['file']}` |",
            f"| glasses sha256 | `{g['sha256']}` |",
            f"| glasses fitted on | `{g['model_id']}` ({g['model_type']}) |",
            f"| strength / select | {g['strength']} / {_select_text(g['select'])}"
            + (" (set at export)" if g["options_overridden"] else "")
            + " |",
            f"| pooling / layers / tokens | {g['pooling']} / {layers} / {g['tokens']} |",
            f"| calibration data hash | `{g['data_hash']}` |",
            f"| neurons dampened | {g['dampened']} of {g['neurons']} |",
            f"| tensors changed | {len(record['changed_tensors'])} (listed with their sha256 in `{RECORD_FILE}`) |",
            "",
            "Evaluate it on MM-TOXIC-QA with lmms-eval's own model types (`THIS_FOLDER` = this folder), e.g.",
            "",
            "```bash",
            "lmms_eval --model llava_hf --model_args pretrained=THIS_FOLDER,device=cuda:0,device_map=cuda:0,dtype=bfloat16 \\",
            '    --tasks mm_toxic_qa --include_path "$(mmtoxicqa tasks-path)" --batch_size 1 --output_path out/sgm-exported',
            "lmms_eval --model vllm --model_args model=THIS_FOLDER,tensor_parallel_size=2,trust_remote_code=False \\",
            '    --tasks mm_toxic_qa --include_path "$(mmtoxicqa tasks-path)" --batch_size 32 --output_path out/sgm-exported-vllm',
            "```",
            "",
        ]
    )
    if not original:
        return body
    front = ""
    if original.startswith("---\n") and "\n---" in original[4:]:
        end = original.index("\n---", 4) + len("\n---")
        front, original = original[:end].rstrip() + "\n\n", original[end:].lstrip("\n")
    return front + body + "\n## Source model card\n\n" + original


def read_record(folder) -> dict:
    """The export record (``sgm_export.json``) of an exported checkpoint."""
    path = Path(folder) / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise MMToxError(f"{path} is missing or not JSON; {folder} is not a checkpoint written by `mmtoxicqa export`") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise MMToxError(
            f"{path} is not an mmtoxicqa export record (format {record.get('format') if isinstance(record, dict) else None!r})"
        )
    return record


def export_checkpoint(
    model: str | None,
    glasses_path,
    out,
    *,
    overwrite: bool = False,
    strength: float | None = None,
    select=None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> dict:
    """Write ``model`` with ``glasses_path``'s alphas folded in to the folder ``out``; returns the export record.

    ``strength`` / ``select`` (None = the glasses' own) re-derive alpha from the glasses' AUROCs as
    ``Glasses.as_worn`` does; the glasses' own alphas are folded unchanged otherwise."""

    if sys.byteorder != "little":
        raise MMToxError("safetensors stores little-endian data; run the export on a little-endian machine (x86, ARM)")
    src = resolve_source(model, revision)
    out = Path(out).expanduser().resolve()
    _check_out(out, src, overwrite)
    glasses_path = Path(glasses_path).expanduser()
    glasses, overrides = Glasses.load(glasses_path).as_worn(strength=strength, select=select)  # as fitted unless told otherwise
    ckpt = read_checkpoint(src)
    net = empty_model(src, trust_remote_code)
    try:
        glasses.validate(net)
    except MMToxError as exc:
        raise MMToxError(f"--glasses {glasses_path} does not fit --model {model or src}: {exc}") from None
    folds = plan_folds(glasses, net, ckpt)
    meta = glasses.meta
    record = {
        "format": RECORD_FORMAT,
        "format_version": RECORD_VERSION,
        "mmtoxicqa_version": mmtoxicqa.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "id": model or f"embedded:{src.name}",
            "source": str(src),
            "model_type": net.config.model_type,
            "architecture": type(net).__name__,
        },
        "glasses": {
            "file": glasses_path.name,
            "sha256": sha256_file(glasses_path),
            "model_id": meta.get("model_id"),
            "model_type": meta.get("model_type"),
            "strength": meta.get("strength"),
            "select": meta.get("select"),
            "pooling": meta.get("pooling"),
            "layers": meta.get("layers"),
            "tokens": meta.get("tokens", "text"),
            "text_only": meta.get("text_only"),
            "data_hash": meta.get("data_hash"),
            "class_sizes": meta.get("class_sizes"),
            "neurons": glasses.num_neurons,
            "dampened": glasses.num_dampened,
            "options_overridden": bool(overrides),
            "overrides": overrides,
            "alpha_sha256": glasses.alpha_sha256(),
        },
        "changed_tensors": [],
        "untouched_layers": sorted({s.layer_index for s in glasses.sites} - {f.layer_index for f in folds}),
        "weight_files": ckpt.weight_files,
        "index_file": ckpt.index_file,
        "not_copied": ckpt.not_copied,
    }
    if ckpt.not_copied:
        log.warning("not copied (other weight files that would hold un-dampened weights): %s", ", ".join(ckpt.not_copied))
    try:
        return _write_export(src, out, ckpt, folds, record)
    except OSError as exc:
        if is_os_fault(exc):
            raise os_fault(exc, f"--out {out}") from None
        raise


def _write_export(src: Path, out: Path, ckpt: Checkpoint, folds: list[Fold], record: dict) -> dict:
    """Copy the checkpoint into a temporary folder beside ``out``, fold, write record and card, rename."""
    by_file: dict[str, list[Fold]] = {}
    for fold in folds:
        by_file.setdefault(fold.info.file, []).append(fold)
    digests = {}
    with atomic_dir(out) as tmp:
        skip = set(ckpt.weight_files) | set(ckpt.not_copied) | {CARD_FILE, RECORD_FILE}
        for rel in source_files(src):
            if rel not in skip:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, tmp / rel)
        for name in ckpt.weight_files:  # one shard at a time: byte copy, then the changed tensors in place
            shutil.copyfile(src / name, tmp / name)
            if name in by_file:
                with open(src / name, "rb") as source, open(tmp / name, "r+b") as target:
                    for fold in by_file[name]:
                        digests[fold.key] = fold_tensor(source, target, fold)
        record["changed_tensors"] = [
            {
                "key": f.key,
                "file": f.info.file,
                "layer": f.layer_index,
                "module": f.module_name,
                "neuron_dim": f.dim,
                "width": int(f.alpha.numel()),
                "dampened": f.dampened,
                "min_alpha": float(f.alpha.min()),
                "sha256": digests[f.key],
            }
            for f in folds
        ]
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        original = (src / CARD_FILE).read_text(errors="replace") if (src / CARD_FILE).is_file() else None
        (tmp / CARD_FILE).write_text(_card(record, original))
    return record
