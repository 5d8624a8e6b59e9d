"""Where a model's weights sit: device maps, memory limits, attention kernels, image pixel limits.

Why a module of its own: every entry point (``--model_args``, ``calibrate``, ``sweep``) takes the
same loading options, and each must be refused in one line before any weight is read. A model
split by accelerate (``device_map``) keeps some weights on other devices or offloaded (``meta``
placeholders that accelerate's hooks fill on the fly), so code that needs "the device of this
module" asks :func:`execution_device` instead of reading a parameter's device.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmtoxicqa.core.errors import MMToxError

DEVICE_MAP_KEYWORDS = ("auto", "balanced", "balanced_low_0", "sequential")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
# Every option that changes how a model is loaded (not how it generates); the wrapper, calibrate and
# sweep accept exactly these besides the method options.
LOAD_OPTIONS = (
    "device",
    "dtype",
    "revision",
    "trust_remote_code",
    "device_map",
    "max_memory",
    "attn_implementation",
    "offload_folder",
    "min_pixels",
    "max_pixels",
)


@dataclass(frozen=True)
class Placement:
    """The checked placement options: ``device_map`` is None (one device), a keyword or a module -> device dict."""

    device_map: str | dict | None = None
    max_memory: dict | None = None
    attn_implementation: str | None = None
    offload_folder: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None

    def model_kwargs(self) -> dict:
        """The ``from_pretrained`` keyword arguments these options add (none when unset)."""
        kwargs = {}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        if self.max_memory is not None:
            kwargs["max_memory"] = self.max_memory
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.offload_folder is not None:
            kwargs["offload_folder"] = self.offload_folder
        return kwargs

    def processor_kwargs(self) -> dict:
        return {k: v for k, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels)) if v is not None}


def _json_or_file(name: str, value) -> object:
    """``value`` as JSON text or, when it names a ``.json`` file, that file's JSON (model_args split on
    commas, so a map with several entries travels as a file)."""
    text = str(value).strip()
    if text.endswith(".json") and not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise MMToxError(f"{name}={value!r}: no such file; pass a JSON file mapping module names to devices, or a keyword")
        text = path.read_text()
    try:
        return json.loads(text)
    except ValueError:
        return None


def _device_name(name: str, value) -> str | int:
    """One device of a device map or memory limit: an int (CUDA index), cpu, disk, cuda:N, mps."""
    if isinstance(value, bool):
        raise MMToxError(f"{name}: {value!r} is not a device; use an index (0), cuda:N, cpu or disk")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if text in ("cpu", "disk", "mps") or (text.startswith("cuda") and (text == "cuda" or text[5:].isdigit())):
        return text
    raise MMToxError(f"{name}: {value!r} is not a device; use an index (0), cuda:N, cpu or disk")


def parse_device_map(value) -> str | dict | None:
    """``device_map`` as a keyword (auto, balanced, balanced_low_0, sequential), a single device
    (cpu, cuda:0), or a JSON map (text, a dict or a ``.json`` file) of module name -> device."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, dict):
        parsed = value
    else:
        text = str(value).strip()
        if text.lower() in DEVICE_MAP_KEYWORDS:
            return text.lower()
        parsed = _json_or_file("device_map", text)
        if parsed is None:
            try:
                return {"": _device_name("device_map", text)}
            except MMToxError:
                raise MMToxError(
                    f"device_map={value!r} is not usable; use {', '.join(DEVICE_MAP_KEYWORDS)}, a device (cuda:0), "
                    'or a JSON map of module name -> device (e.g. {"model.language_model.layers.0": 0, "lm_head": 1}) in a .json file'
                ) from None
    if not isinstance(parsed, dict) or not parsed:
        raise MMToxError(f"device_map={value!r} must be a non-empty JSON object of module name -> device")
    return {str(k): _device_name(f"device_map[{k!r}]", v) for k, v in parsed.items()}


def parse_max_memory(value) -> dict | None:
    """``max_memory`` as JSON (``{"0": "20GiB", "cpu": "64GiB"}``) or ``0:20GiB;1:20GiB;cpu:64GiB``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    parsed = value if isinstance(value, dict) else _json_or_file("max_memory", value)
    if parsed is None:
        parsed = {}
        for entry in str(value).split(";"):
            device, sep, amount = entry.strip().rpartition(":")
            if not sep or not device or not amount:
                raise MMToxError(f"max_memory={value!r} is not usable; write it as 0:20GiB;1:20GiB;cpu:64GiB (device:amount, ';' between)")
            parsed[device] = amount
    if not isinstance(parsed, dict) or not parsed:
        raise MMToxError(f"max_memory={value!r} must map devices to amounts, e.g. 0:20GiB;cpu:64GiB")
    out = {}
    for device, amount in parsed.items():
        text = str(amount).strip()
        digits = text.rstrip("BbKkMmGgTtIi")
        try:
            float(digits)
        except ValueError:
            raise MMToxError(f"max_memory: {amount!r} for {device} is not an amount; use e.g. 20GiB, 500MB or a byte count") from None
        out[_device_name("max_memory", device)] = int(text) if text.isdigit() else text
    return out


def check_attn_implementation(value, on_cuda: bool) -> str | None:
    """``attn_implementation`` one of :data:`ATTN_IMPLEMENTATIONS`; flash_attention_2 needs CUDA and the flash_attn package."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    name = str(value).strip().lower()
    if name not in ATTN_IMPLEMENTATIONS:
        raise MMToxError(f"attn_implementation={value!r} is not supported; use one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if name == "flash_attention_2":
        if not on_cuda:
            raise MMToxError("attn_implementation=flash_attention_2 needs a CUDA device; use sdpa (or eager) on this machine")
        if importlib.util.find_spec("flash_attn") is None:
            raise MMToxError("attn_implementation=flash_attention_2 needs the flash_attn package (pip install flash-attn); or use sdpa")
    return name


def _pixels(name: str, value) -> int | None:
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    try:
        number = int(float(str(value).strip()))
    except ValueError:
        number = 0
    if number < 1 or isinstance(value, bool):
        raise MMToxError(f"{name}={value!r} must be a positive number of pixels (e.g. {name}=1003520 for 1280 x 28 x 28)")
    return number


def check_placement(
    device: str | None = None,
    dtype=None,
    *,
    device_map=None,
    max_memory=None,
    attn_implementation=None,
    offload_folder=None,
    min_pixels=None,
    max_pixels=None,
) -> Placement:
    """Check every placement option (no weight is read): one line naming the first bad one."""
    device_map = parse_device_map(device_map)
    max_memory = parse_max_memory(max_memory)
    if max_memory is not None and device_map is None:
        raise MMToxError("max_memory only applies with device_map (e.g. device_map=auto,max_memory=0:20GiB;cpu:64GiB); add a device_map")
    values = device_map.values() if isinstance(device_map, dict) else []
    on_cuda = str(device or "").startswith("cuda") or any(isinstance(v, int) or str(v).startswith("cuda") for v in values)
    if isinstance(device_map, str) and torch.cuda.is_available():
        on_cuda = True
    wants_cuda = [v for v in values if isinstance(v, int) or str(v).startswith("cuda")]
    if wants_cuda and not torch.cuda.is_available():
        raise MMToxError(f"device_map puts modules on {wants_cuda[0]!r} but CUDA is not available on this machine; map them to cpu")
    if "disk" in values and not offload_folder:
        raise MMToxError("device_map offloads modules to disk; pass offload_folder=DIR (a folder with room for those weights)")
    low, high = _pixels("min_pixels", min_pixels), _pixels("max_pixels", max_pixels)
    if low is not None and high is not None and low > high:
        raise MMToxError(f"min_pixels={low} is above max_pixels={high}; swap them")
    attn = check_attn_implementation(attn_implementation, on_cuda)
    if attn == "flash_attention_2" and dtype is not None and str(dtype).removeprefix("torch.") in ("float32", "fp32", "float"):
        raise MMToxError("attn_implementation=flash_attention_2 runs in float16/bfloat16 only; pass dtype=bfloat16")
    return Placement(device_map, max_memory, attn, str(offload_folder) if offload_folder else None, low, high)


def _size_budget(image_processor) -> dict | None:
    """The processor's ``size`` when it is a pixel budget (shortest_edge = min pixels, longest_edge = max pixels)."""
    size = getattr(image_processor, "size", None)
    if size is None:
        return None
    try:
        size = dict(size.items()) if hasattr(size, "items") else dict(vars(size))
    except TypeError:
        return None
    if size.get("shortest_edge") is None or size.get("longest_edge") is None:
        return None
    return size


def check_pixel_limits(processor, placement: Placement, source: str) -> None:
    """Refuse ``min_pixels``/``max_pixels`` for a processor that would ignore them (only processors
    that resize to a pixel budget, as Qwen2-VL's, have them) or that did not take them."""
    asked = placement.processor_kwargs()
    if not asked:
        return
    image_processor = getattr(processor, "image_processor", None)
    size = _size_budget(image_processor)
    if size is None:
        kind = type(image_processor).__name__ if image_processor is not None else "no image processor"
        raise MMToxError(
            f"{', '.join(asked)} set but {source} has {kind}, which has no pixel budget; drop them "
            "(they apply to processors that resize to a pixel budget, such as Qwen2-VL's)"
        )
    taken = {"min_pixels": size.get("shortest_edge"), "max_pixels": size.get("longest_edge")}
    for key, value in asked.items():
        if taken[key] != value:
            raise MMToxError(f"{key}={value} was not taken by {type(image_processor).__name__} (it has {taken[key]}); report this")


def _hook_device(module: nn.Module) -> torch.device | None:
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is None:
        for inner in getattr(hook, "hooks", ()) or ():  # accelerate's SequentialHook
            device = getattr(inner, "execution_device", None) or device
    if device is None:
        return None
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def execution_device(module: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """Where ``module`` computes: accelerate's hook device for a dispatched module (its own or its
    nearest dispatched ancestor is not visible here, so its first real parameter is next), else ``fallback``."""
    device = _hook_device(module)
    if device is not None:
        return device
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device(fallback)


def input_device(model: nn.Module) -> torch.device:
    """Where a batch's ``input_ids`` must be: the device of the input embeddings' computation."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if isinstance(embeddings, nn.Module):
        return execution_device(embeddings, _main_device(model))
    return execution_device(model)


def _main_device(model: nn.Module) -> torch.device:
    devices = [d for d in (getattr(model, "hf_device_map", None) or {}).values() if d not in ("disk", "meta")]
    if not devices:
        return torch.device("cpu")
    first = devices[0]
    return torch.device(f"cuda:{first}" if isinstance(first, int) else first)


def is_offloaded(module: nn.Module) -> bool:
    """Whether accelerate keeps ``module``'s weights off its execution device (cpu/disk offload):
    they are ``meta`` placeholders between forward passes."""
    return any(p.device.type == "meta" for p in module.parameters(recurse=False))
