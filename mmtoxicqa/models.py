"""What ``LMMS_EVAL_PLUGINS=mmtoxicqa`` asks for: lmms-eval 0.7.3's legacy plugin hook.

When that variable names a package, lmms-eval imports ``<package>.models`` while it builds its
model registry, reads ``AVAILABLE_MODELS`` (model name -> class name) and records each class as
``<package>.models.<name>.<class>``. The modules under that prefix are aliases of our wrappers,
so each recorded path imports. The same import also adds our task folder to lmms-eval's task
index: lmms-eval's own handling of the variable appends the folder only after its index is built,
so the tasks would otherwise not be found. (The ``lmms_eval.models`` entry point, which needs no
variable, still supplies the chat-model classes lmms-eval prefers.)
"""

from __future__ import annotations

import sys

from mmtoxicqa.lmms.evaluate import index_plugin_tasks
from mmtoxicqa.model_wrappers import method_models, mmtox

AVAILABLE_MODELS: dict[str, str] = {"mmtox": mmtox.MMTox.__name__}
AVAILABLE_MODELS.update({name: cls.__name__ for name, cls in method_models.METHOD_MODELS.items()})

sys.modules[f"{__name__}.mmtox"] = mmtox
for _name in method_models.METHOD_MODELS:
    sys.modules[f"{__name__}.{_name}"] = method_models

index_plugin_tasks()
