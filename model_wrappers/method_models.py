"""One lmms-eval model name per method: ``--model coca`` is ``--model mmtox --model_args method=coca``.

The classes are generated from the method registry so a new method gets a model name
without a new wrapper; all of them share MMTox's loading, batching and validation.
"""

from __future__ import annotations

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.methods import known_methods
from mmtoxicqa.model_wrappers.mmtox import MMTox


def _class_name(method: str) -> str:
    return "MMTox_" + method


def _make(method: str) -> type:
    def __init__(self, *args, **kwargs):
        if kwargs.get("method") not in (None, method):
            raise MMToxError(f"--model {method} fixes method={method}; use --model mmtox --model_args method=A+B to compose methods")
        kwargs["method"] = method
        MMTox.__init__(self, *args, **kwargs)

    return type(
        _class_name(method),
        (MMTox,),
        {
            "__init__": __init__,
            "__module__": __name__,
            "default_method": method,
            "__doc__": f"lmms-eval model `{method}`: MMTox with method={method}.",
        },
    )


METHOD_MODELS = {name: _make(name) for name in known_methods()}
globals().update({cls.__name__: cls for cls in METHOD_MODELS.values()})
