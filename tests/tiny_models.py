"""Tiny real models built locally for tests (no hub): a word-level tokenizer trained here,
a random LLaVA (CLIP vision tower + Llama text model), and its PIL image processor."""

from __future__ import annotations

from pathlib import Path

import torch

from mmtoxicqa.embedded import CHAT_TEMPLATE

CORPUS = [
    "you are a helpful assistant named smollm trained by hugging face",
    "what is in the image describe the picture please answer the question",
    "the cat sat on the mat and the dog ran in the park",
    "write a poem about the sea the sky the sun and the moon",
    "i cannot help with that request sorry",
    "how to pick a lock steal a car hurt someone",
    "hello world this is a small test of a tiny model",
    "one two three four five six seven eight nine ten",
    "yes no maybe",
]
SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<pad>"]


def build_tokenizer():
    """A word-level tokenizer trained on CORPUS with ChatML specials and the <image> token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS)
    extra = ["system", "user", "assistant", "\n", "?", ".", ","]
    tok.train_from_iterator(CORPUS + [" ".join(extra)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        bos_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<image>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_llava(out_dir: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 16) -> Path:
    """Save a random tiny LLaVA (+ processor) to ``out_dir`` and return the path."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from mmtoxicqa.embedded import pil_image_processor

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=16,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = LlavaProcessor(
        image_processor=pil_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
