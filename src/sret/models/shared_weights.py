"""A shared block's compute-dtype weights, made once per stage forward instead of once per application.

Why: SReT applies each shared block several times in a row (weights shared across depth), and every application of
a fused sublayer used to cast its weights to the compute dtype (the MLP kernels also pad them): one launch each
time. Within one forward of a stage the weights cannot change, so later applications take the first one's copies.
In SReT-T that is 23 of the 66 weight launches of a forward, whose host time an eager step pays
(docs/perf_notes.md, change 44).

Only for the span of :func:`once`, which ``Stage.forward`` opens around its applications; never across calls. So
nothing goes stale when an optimizer or an EMA update changes the weights in place, and a CUDA graph that captured
a forward replays the first application's launch as well. Only ``nn.Parameter`` inputs are keyed (by identity and
version counter): they outlive the span, so an identity cannot be reused by another tensor inside it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

_state = threading.local()


@contextlib.contextmanager
def once() -> Iterator[None]:
    """Within this block, :func:`memoized` results are kept and reused (nested blocks share the outermost one)."""
    if getattr(_state, "table", None) is not None:
        yield
        return
    _state.table = {}
    try:
        yield
    finally:
        _state.table = None


def memoized(make: Callable[[], Any], params: Sequence[torch.Tensor], *key: Any) -> Any:
    """``make()``, or what it returned before in this :func:`once` block for the same parameters and ``key``.

    Outside a block, or when an input is not an ``nn.Parameter`` (a temporary: its identity could be reused), it is
    ``make()`` every time. A ``None`` result (the caller's fallback path) is not kept.
    """
    table = getattr(_state, "table", None)
    if table is None or not all(isinstance(p, torch.nn.Parameter) for p in params):
        return make()
    full = (*((id(p), p._version) for p in params), *key)
    out = table.get(full)
    if out is None:
        out = make()
        if out is not None:
            table[full] = out
    return out
