"""Entry-point manifests: how lmms-eval finds our models (group ``lmms_eval.models``).

``pyproject.toml`` points the entry point at :func:`manifests`; lmms-eval calls it and
registers each manifest. Every name is a chat model (lmms-eval's preferred path):
``mmtox`` (any method via ``method=``) and one name per registered method.
"""

from __future__ import annotations

from lmms_eval.models.registry_v2 import ModelManifest

from mmtoxicqa.methods import known_methods


def manifests() -> list[ModelManifest]:

    found = [ModelManifest(model_id="mmtox", chat_class_path="mmtoxicqa.model_wrappers.mmtox.MMTox")]
    for name in known_methods():
        found.append(ModelManifest(model_id=name, chat_class_path=f"mmtoxicqa.model_wrappers.method_models.MMTox_{name}"))
    return found
