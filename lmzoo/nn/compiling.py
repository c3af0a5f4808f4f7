"""``eager_in_compile``: a function that ``torch.compile`` calls eagerly instead of tracing.

It is ``torch.compiler.disable``, applied on the first call made inside a compiled region: that
decorator imports ``torch._dynamo`` (over a second) at decoration time, i.e. in every process that
imports lmzoo, while only processes that compile need it. Outside ``torch.compile`` the function is
called directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def eager_in_compile(fn: F) -> F:
    """``fn``, run eagerly (one graph break) when a compiled model calls it."""
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return call  # type: ignore[return-value]
