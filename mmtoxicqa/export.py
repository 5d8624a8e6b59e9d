"""Fold SGM glasses into a plain Hugging Face checkpoint that any inference engine can serve.

Why: vLLM, SGLang and TGI run their own model code, so forward hooks never reach them. SGM
scales neuron j (input j of each decoder layer's MLP output projection) by a constant alpha_j,
which equals scaling that projection's weight column: ``W (alpha * x) == (W diag(alpha)) x``
(for GPT-2's ``Conv1D``, whose weight is (in, out), the row). So the export is the source
checkpoint with those few tensors rewritten; config, tokenizer, processor, shard layout, index
and dtypes stay as they are, and loading it needs no custom code.

How, for models larger than RAM: the model is never instantiated with weights. An empty
(meta-device) copy built from ``config.json`` gives the runtime module names and shapes that
the glasses are checked against; each safetensors file is copied as bytes and only the byte
ranges of the changed tensors are rewritten in place (tensors read one at a time with
``safe_open``). Dtypes and shapes do not change, so every header and offset stays valid.

Key mapping: glasses record runtime names (``model.language_model.layers.3.mlp.down_proj``)
while checkpoints may use another layout (``language_model.model.layers.3.mlp.down_proj.weight``).
A site maps to the one checkpoint tensor ending in ``layers.3.mlp.down_proj.weight`` outside
vision/projector components, with the expected shape; anything else is refused in one line.

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
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mmtoxicqa.atomic import atomic_dir
from mmtoxicqa.errors import MMToxError

log = logging.getLogger(__name__)

RECORD_FILE = "sgm_export.json"
CARD_FILE = "README.md"
RECORD_FORMAT = "mmtoxicqa-sgm-export"
RECORD_VERSION = 1
# Path components of the non-language parts of multimodal checkpoints (as discovery excludes them).
NON_LANGUAGE = frozenset({
    "vision_tower", "vision_model", "visual", "vision", "vision_encoder", "image_encoder",
    "multi_modal_projector", "mm_projector", "projector", "connector", "resampler", "perceiver",
    "image_newline", "audio_tower", "audio_model", "audio", "vision_embed_tokens", "img_processor",
})
# Weight files of other formats: never copied, since they would hold the un-dampened weights.
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5", ".onnx", ".pkl", ".npz")
SKIPPED_DIRS = frozenset({".git", ".cache", ".huggingface"})
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


@dataclass(frozen=True)
class Fold:
    """One checkpoint tensor to rewrite: ``weight[:, j] *= alpha[j]`` (dim 1) or ``weight[j, :]`` (dim 0)."""

    layer_index: int
    module_name: str
    key: str
    file: str
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
    tensors: dict[str, tuple[str, list[int], str]]  # key -> (file, shape, dtype)
    not_copied: list[str]


# -- source ---------------------------------------------------------------------------------------

def resolve_source(model: str | None, revision: str | None = None) -> Path:
    """The local folder of ``model`` (a directory, a hub id already downloaded, or None = embedded)."""
    from mmtoxicqa.modeling import resolve_pretrained

    source = resolve_pretrained(model)
    if os.path.isdir(source):
        return Path(source).resolve()
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source, revision=revision, ignore_patterns=[f"*{s}" for s in OTHER_WEIGHT_SUFFIXES])
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
    return length, header


def read_checkpoint(root: Path) -> Checkpoint:
    """Which safetensors files make up the checkpoint (its index, else every top-level file) and their tensors."""
    indexes = sorted(p.name for p in root.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise MMToxError(f"{root} holds {len(indexes)} safetensors index files ({', '.join(indexes)}); keep the model's own index only")
    if indexes:
        try:
            weight_map = json.loads((root / indexes[0]).read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise MMToxError(f"{root / indexes[0]} is not a safetensors index (no weight_map); re-download the checkpoint") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise MMToxError(f"{root} lacks {missing[0]} named by {indexes[0]} ({len(missing)} missing); finish downloading the checkpoint")
    else:
        files = sorted(p.name for p in root.glob("*.safetensors"))
    if not files:
        others = [f for f in source_files(root) if f.endswith(OTHER_WEIGHT_SUFFIXES)]
        found = f" (found {', '.join(others[:3])})" if others else ""
        raise MMToxError(
            f"{root} has no safetensors weights{found}; export needs a safetensors checkpoint: "
            "load the model in transformers and save_pretrained() it (safetensors is the default), then export that folder"
        )
    tensors: dict[str, tuple[str, list[int], str]] = {}
    for name in files:
        _, header = read_header(root / name)
        for key, info in header.items():
            if key != "__metadata__":
                tensors[key] = (name, list(info["shape"]), str(info["dtype"]))
    skipped = [f for f in source_files(root) if f.endswith(OTHER_WEIGHT_SUFFIXES + (".safetensors",)) and f not in files]
    return Checkpoint(root, files, indexes[0] if indexes else None, tensors, skipped)


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


def empty_model(root: Path, trust_remote_code: bool = False):
    """The model's module tree on the meta device (no weights allocated), as ``load_model`` would build it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise MMToxError(f"{root}: no usable config.json ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                         "point --model at a Hugging Face model folder (pass --trust-remote-code only for a model whose code you trust)") from None
    if getattr(config, "quantization_config", None):
        raise MMToxError(f"{root} is a quantized checkpoint; export from the unquantized model, then quantize the exported one")
    with torch.device("meta"):
        for auto in (AutoModelForImageTextToText, AutoModelForCausalLM):
            try:
                return auto.from_config(config, trust_remote_code=trust_remote_code)
            except ValueError:
                continue
    raise MMToxError(f"{root}: transformers has no image-text-to-text or causal LM class for model_type {config.model_type!r}; "
                     "upgrade transformers, or pass --trust-remote-code for a model whose code you trust")


# -- plan -----------------------------------------------------------------------------------------

def _non_language(key: str) -> bool:
    return any(part in NON_LANGUAGE for part in key.split("."))


def _input_dim(module, name: str) -> int:
    """Which weight dim holds the neurons: Linear (out, in) -> 1; GPT-2 Conv1D (in, out) -> 0."""
    if isinstance(module, torch.nn.Linear):
        return 1
    if type(module).__name__ == "Conv1D":
        return 0
    raise MMToxError(f"{name} is a {type(module).__name__}, not a Linear or Conv1D; SGM export folds alpha into plain linear weights only")


def checkpoint_key(site, list_name: str, ckpt: Checkpoint) -> tuple[str, str]:
    """(key, prefix): the checkpoint tensor holding ``site``'s projection weight, whatever the key layout,
    and what precedes ``layers.{i}.`` in it."""
    own = f"{list_name}.{site.layer_index}."
    if not site.module_name.startswith(own):
        raise MMToxError(f"glasses site {site.module_name} is not in this model's decoder layer list {list_name}; these glasses belong to another model")
    leaf = list_name.rsplit(".", 1)[-1]
    suffix = f"{leaf}.{site.layer_index}.{site.module_name[len(own):]}.weight"
    matches = [k for k in ckpt.tensors if (k == suffix or k.endswith("." + suffix)) and not _non_language(k)]
    if not matches:
        raise MMToxError(
            f"no tensor in {ckpt.root} ends with {suffix!r} (the weight of {site.module_name}); the checkpoint names it differently: "
            "load the model in transformers and save_pretrained() it, then export that folder"
        )
    if len(matches) > 1:
        raise MMToxError(f"{len(matches)} tensors in {ckpt.root} end with {suffix!r} ({', '.join(sorted(matches)[:4])}); "
                         "cannot tell which is the language decoder's; remove the extra copies from the checkpoint")
    return matches[0], matches[0][: -len(suffix)]


def plan_folds(glasses, net, ckpt: Checkpoint) -> list[Fold]:
    """One Fold per layer whose alpha is not all 1, each mapped to its checkpoint tensor and checked."""
    from mmtoxicqa.sgm import find_decoder_layers

    list_name, _ = find_decoder_layers(net)
    folds, prefixes = [], {}
    for site, alpha in zip(glasses.sites, glasses.alpha):
        if bool((alpha == 1).all()):
            continue
        module = net.get_submodule(site.module_name)
        dim = _input_dim(module, site.module_name)
        expected = list(module.weight.shape)
        if expected[dim] != site.width:
            raise MMToxError(f"{site.module_name} has {expected[dim]} neurons but the glasses record {site.width}; these glasses belong to another model")
        key, prefix = checkpoint_key(site, list_name, ckpt)
        file, shape, dtype = ckpt.tensors[key]
        if shape != expected:
            raise MMToxError(f"checkpoint tensor {key} in {file} has shape {shape} but {site.module_name} expects {expected}; "
                             "the weights do not match config.json: re-save the model with save_pretrained()")
        if dtype not in FLOAT_DTYPES:
            raise MMToxError(f"checkpoint tensor {key} in {file} is {dtype}, not a float; export from the unquantized model, then quantize the exported one")
        prefixes[prefix] = key
        folds.append(Fold(site.layer_index, site.module_name, key, file, dim, alpha.detach().float().cpu()))
    if len(prefixes) > 1:
        raise MMToxError(f"the glasses' layers map to tensors under different prefixes ({', '.join(sorted(prefixes.values())[:3])}); "
                         "the checkpoint mixes key layouts: re-save it with save_pretrained()")
    return folds


# -- write ----------------------------------------------------------------------------------------

def folded(weight: torch.Tensor, fold: Fold) -> torch.Tensor:
    """``weight`` with alpha folded into its neuron dim, in its own dtype (float32 math, float64 kept)."""
    compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
    shape = (1, -1) if fold.dim == 1 else (-1, 1)
    return (weight.to(compute) * fold.alpha.to(compute).view(shape)).to(weight.dtype).contiguous()


def _tensor_bytes(tensor: torch.Tensor):
    return tensor.reshape(-1).view(torch.uint8).numpy()


def fold_file(source: Path, target: Path, folds: list[Fold]) -> dict[str, str]:
    """Rewrite the changed tensors' bytes of ``target`` (a copy of ``source``); returns key -> sha256 of the new bytes."""
    from safetensors import safe_open

    length, header = read_header(source)
    digests = {}
    with safe_open(str(source), framework="pt") as reader, open(target, "r+b") as writer:
        for fold in folds:
            data = _tensor_bytes(folded(reader.get_tensor(fold.key), fold))
            begin, end = header[fold.key]["data_offsets"]
            if data.nbytes != end - begin:
                raise MMToxError(f"{source}: tensor {fold.key} occupies {end - begin} bytes but holds {data.nbytes}; the file is corrupt, re-download it")
            writer.seek(8 + length + begin)
            writer.write(data.tobytes())
            digests[fold.key] = hashlib.sha256(data).hexdigest()
    return digests


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
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


def _card(record: dict, original: str | None) -> str:
    """README model card: what was folded, with which glasses, and how to serve it."""
    g, m = record["glasses"], record["model"]
    body = "\n".join([
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
        f"| strength / select | {g['strength']} / {g['select'] or 'all AUROC > 0.5'} |",
        f"| pooling / layers / tokens | {g['pooling']} / {g['layers'] if g['layers'] is not None else 'all'} / {g['tokens']} |",
        f"| calibration data hash | `{g['data_hash']}` |",
        f"| neurons dampened | {g['dampened']} of {g['neurons']} |",
        f"| tensors changed | {len(record['changed_tensors'])} (listed with their sha256 in `{RECORD_FILE}`) |",
        "",
        "Evaluate it on MM-TOXIC-QA with any lmms-eval model type, e.g.",
        "",
        "```bash",
        "lmms_eval --model vllm --model_args model=THIS_FOLDER,tensor_parallel_size=1,trust_remote_code=False \\",
        "    --tasks mm_toxic_qa --include_path \"$(mmtoxicqa tasks-path)\" --batch_size 32 --output_path out/sgm-exported",
        "```",
        "",
    ])
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
    if record.get("format") != RECORD_FORMAT:
        raise MMToxError(f"{path} is not an mmtoxicqa export record (format {record.get('format')!r})")
    return record


def export_checkpoint(model: str | None, glasses_path, out, *, overwrite: bool = False, strength: float | None = None, select=None,
                      trust_remote_code: bool = False, revision: str | None = None) -> dict:
    """Write ``model`` with ``glasses_path``'s alphas folded in to the folder ``out``; returns the export record."""
    import mmtoxicqa
    from mmtoxicqa.sgm import Glasses

    src = resolve_source(model, revision)
    out = Path(out).expanduser().resolve()
    _check_out(out, src, overwrite)
    glasses_path = Path(glasses_path)
    glasses = Glasses.load(glasses_path)
    if strength is not None or select is not None:
        glasses = glasses.with_options(strength=strength, select="keep" if select is None else select)
    if sys.byteorder != "little":
        raise MMToxError("safetensors stores little-endian data; run the export on a little-endian machine (x86, ARM)")
    ckpt = read_checkpoint(src)
    net = empty_model(src, trust_remote_code)
    try:
        glasses.validate(net)
    except MMToxError as exc:
        raise MMToxError(f"--glasses {glasses_path} does not fit --model {model or src}: {exc}") from None
    folds = plan_folds(glasses, net, ckpt)
    config = net.config
    meta = glasses.meta
    record = {
        "format": RECORD_FORMAT,
        "format_version": RECORD_VERSION,
        "mmtoxicqa_version": mmtoxicqa.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"id": model or f"embedded:{src.name}", "source": str(src), "model_type": config.model_type, "architecture": type(net).__name__},
        "glasses": {
            "file": glasses_path.name, "sha256": sha256_file(glasses_path), "model_id": meta.get("model_id"), "model_type": meta.get("model_type"),
            "strength": meta.get("strength"), "select": meta.get("select"), "pooling": meta.get("pooling"), "layers": meta.get("layers"),
            "tokens": meta.get("tokens", "text"), "text_only": meta.get("text_only"), "data_hash": meta.get("data_hash"),
            "class_sizes": meta.get("class_sizes"), "neurons": glasses.num_neurons, "dampened": glasses.num_dampened,
            "options_overridden": strength is not None or select is not None,
        },
        "changed_tensors": [],
        "untouched_layers": sorted({s.layer_index for s in glasses.sites} - {f.layer_index for f in folds}),
        "weight_files": ckpt.weight_files,
        "index_file": ckpt.index_file,
        "not_copied": ckpt.not_copied,
    }
    if ckpt.not_copied:
        log.warning("not copied (other weight files that would hold un-dampened weights): %s", ", ".join(ckpt.not_copied))
    by_file: dict[str, list[Fold]] = {}
    for fold in folds:
        by_file.setdefault(fold.file, []).append(fold)
    with atomic_dir(out) as tmp:
        tmp.chmod(0o755)
        skip = set(ckpt.weight_files) | set(ckpt.not_copied) | {CARD_FILE, RECORD_FILE}
        for rel in source_files(src):
            if rel not in skip:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, tmp / rel)
        digests = {}
        for name in ckpt.weight_files:
            shutil.copyfile(src / name, tmp / name)
            if name in by_file:
                digests.update(fold_file(src / name, tmp / name, by_file[name]))
        record["changed_tensors"] = [
            {"key": f.key, "file": f.file, "layer": f.layer_index, "module": f.module_name, "neuron_dim": f.dim,
             "width": int(f.alpha.numel()), "dampened": f.dampened, "min_alpha": float(f.alpha.min()), "sha256": digests[f.key]}
            for f in folds
        ]
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        original = (src / CARD_FILE).read_text(errors="replace") if (src / CARD_FILE).is_file() else None
        (tmp / CARD_FILE).write_text(_card(record, original))
    return record


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="fold SGM glasses into a standard Hugging Face checkpoint (for vLLM / SGLang / TGI / transformers)",
        description=__doc__,
    )
    parser.add_argument("--model", default=None, help="local model folder or downloaded hub id (default: the embedded model)")
    parser.add_argument("--glasses", required=True, help="glasses .safetensors file fitted on this model (`mmtoxicqa calibrate`)")
    parser.add_argument("--out", required=True, help="folder to write the exported checkpoint to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --out")
    parser.add_argument("--strength", type=float, default=None, help="re-derive alpha with this strength (default: the glasses')")
    parser.add_argument("--select", default=None, help="re-derive alpha with this narrowing, e.g. 'top_k=500' (default: the glasses')")
    parser.add_argument("--revision", default=None, help="hub revision of --model")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code to build its module tree")
    parser.set_defaults(func=_cli_export)


def _cli_export(args) -> int:
    start = time.perf_counter()
    record = export_checkpoint(args.model, args.glasses, args.out, overwrite=args.overwrite, strength=args.strength, select=args.select,
                               trust_remote_code=args.trust_remote_code, revision=args.revision)
    changed = record["changed_tensors"]
    files = len({c["file"] for c in changed})
    print(f"wrote {Path(args.out).expanduser().resolve()}: {sum(c['dampened'] for c in changed)} neurons dampened in {len(changed)} tensors "
          f"({files} of {len(record['weight_files'])} weight files), glasses sha256 {record['glasses']['sha256'][:16]}, "
          f"{time.perf_counter() - start:.1f}s")
    if record["not_copied"]:
        print(f"not copied (weights in other formats would bypass SGM): {', '.join(record['not_copied'])}")
    return 0
