"""SGM ("safety glasses"): find language-decoder MLP neurons that separate toxic from non-toxic
inputs, rate each by AUROC, and softly dampen them at inference (AurA-style, training-free).

    from mmtoxicqa.sgm import fit_glasses, wear, Glasses
    glasses = fit_glasses(model, batches, labels)          # 1 = toxic, 0 = non-toxic
    glasses.save("g.safetensors")
    with wear(model, Glasses.load("g.safetensors", model)):  # mode="hooks" (default) or "fused"
        model.generate(...)
"""

from mmtoxicqa.modeling.discovery import NeuronSite, discover_sites, find_decoder_layers
from mmtoxicqa.sgm.api import fit_glasses, glasses_from_responses
from mmtoxicqa.sgm.auroc import auroc
from mmtoxicqa.sgm.collect import Responses, collect
from mmtoxicqa.sgm.glasses import Glasses, compute_alpha, parse_select
from mmtoxicqa.sgm.wear import GlassesHandle, put_on, take_off, wear

__all__ = [
    "Glasses",
    "GlassesHandle",
    "NeuronSite",
    "Responses",
    "auroc",
    "collect",
    "compute_alpha",
    "discover_sites",
    "find_decoder_layers",
    "fit_glasses",
    "glasses_from_responses",
    "parse_select",
    "put_on",
    "take_off",
    "wear",
]
