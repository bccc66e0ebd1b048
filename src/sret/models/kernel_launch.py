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


def cdiv(a: Any, b: Any) -> Any:
    """``ceil(a / b)`` for the host-side grid and tile arithmetic.

    Why not ``triton.cdiv`` / ``triton.next_power_of_2``: those are Triton ``ConstexprFunction`` objects, whose call
    unwraps every argument first: ~1.1 us of host time a call on the H100 machine's CPU against ~0.1 us here (run 68;
    ~3-5 us on slower CPUs), and an eager SReT-T step makes 387 such calls (inference) or 876 (training), where the
    step is bound by the host.
    Plain integer arithmetic works on ``torch.SymInt`` sizes too (under ``torch.compile``).
    """
    return -(-a // b)


def next_power_of_2(n: Any) -> Any:
    """The smallest power of two >= ``n`` (``n`` >= 1), as ``triton.next_power_of_2`` (see :func:`cdiv` for why)."""
    if type(n) is int and n > 0:
        return 1 << (n - 1).bit_length()
    import triton  # a SymInt under torch.compile, or n <= 0: Triton's own definition

    return triton.next_power_of_2(n)


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
