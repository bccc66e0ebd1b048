"""How the fused sublayers launch their Triton kernels: directly, or traceably inside a ``torch.library.triton_op``.

Why: ``torch.compile`` cannot trace the fused sublayers' Python (autograd Functions, tile tables, launches), so the
compiled model used to run the plain modules on Inductor's own kernels. The ops of :mod:`sret.models.compiled_ops`
wrap the same launch code; Inductor traces their bodies and can only see a launch made through
``torch.library.wrap_triton``. Everywhere else the wrapper would route each launch through a higher-order op
(torch's own note puts that at ~1 ms in eager), so the eager path keeps launching the kernels itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

_state = threading.local()


def launchable(kernel: Any) -> Any:
    """``kernel``, or ``torch.library.wrap_triton(kernel)`` while :func:`traceable_launches` is active."""
    return torch.library.wrap_triton(kernel) if getattr(_state, "traceable", False) else kernel


@contextlib.contextmanager
def traceable_launches() -> Iterator[None]:
    """Make :func:`launchable` wrap kernels for tracing (the body of a triton_op)."""
    previous = getattr(_state, "traceable", False)
    _state.traceable = True
    try:
        yield
    finally:
        _state.traceable = previous
