"""Forward hooks on modules, added together and removed together, even on error.

Every activation reading or editing in the project goes through :class:`Hooks` (the role of
baukit's ``Trace`` or TransformerLens's hook points): SGM response collection reads the input
of each MLP output projection, wearing glasses scales it, steering shifts a decoder layer's
output and the steering vector is read from there.

A callback gets ``(module, tensor)``: the module's first input for :meth:`Hooks.on_input`
(positional or keyword, as the model passes it), the first tensor of its output for
:meth:`Hooks.on_output`. It returns ``None`` to leave the value alone or a tensor to replace it;
the rest of the arguments / output tuple is passed through untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Callback = Callable[[nn.Module, torch.Tensor], "torch.Tensor | None"]


def _input_hook(fn: Callback):
    def hook(module, args, kwargs):
        key = None
        if args:
            value = args[0]
        else:
            key = next(iter(kwargs))
            value = kwargs[key]
        new = fn(module, value)
        if new is None:
            return None
        if key is None:
            return (new,) + tuple(args[1:]), kwargs
        return args, {**kwargs, key: new}

    return hook


def _output_hook(fn: Callback):
    def hook(module, args, output):
        value = output[0] if isinstance(output, tuple) else output
        new = fn(module, value)
        if new is None:
            return None
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    return hook


class Hooks:
    """A set of forward hooks; ``with Hooks() as hooks: hooks.on_input(m, fn) ...`` removes them all on exit."""

    def __init__(self):
        self._handles: list = []

    def on_input(self, module: nn.Module, fn: Callback) -> Hooks:
        """Call ``fn`` on the module's first input before it runs (and let it replace that input)."""
        self._handles.append(module.register_forward_pre_hook(_input_hook(fn), with_kwargs=True))
        return self

    def on_output(self, module: nn.Module, fn: Callback) -> Hooks:
        """Call ``fn`` on the first tensor of the module's output (and let it replace that tensor)."""
        self._handles.append(module.register_forward_hook(_output_hook(fn)))
        return self

    def remove(self) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles = []

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False
