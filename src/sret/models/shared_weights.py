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
from typing import Any, Optional

import torch

_state = threading.local()


@contextlib.contextmanager
def once() -> Iterator[None]:
    """Within this block, :func:`memoized` results are kept and reused (nested blocks share the outermost one).

    Each block, nested or not, also opens its own scope of :func:`hand_over`: one stage forward, whose applications
    form one chain, even inside a block around several forwards.
    """
    outer = getattr(_state, "table", None) is None
    if outer:
        _state.table = {}
    enclosing = getattr(_state, "hand_overs", None)
    _state.hand_overs = {}
    try:
        yield
    finally:
        _state.hand_overs = enclosing
        if outer:
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


# -------------------------------------------------------------------------------------- the gradient hand-over
# Autograd sums a shared parameter's gradients over its applications: one add launch per parameter and extra
# application, ~170 of them a training step of SReT-T (a few microseconds each, docs/perf_notes.md, change 49). The
# fused sublayers instead hand their parameter gradients down the chain of applications: in backward the later
# applications run first (each one's input is the output of the one before), so each of them passes its gradients,
# plus those handed to it, to the application before and gives autograd None for those parameters; the first
# application adds what it was handed in the launch that finishes its own gradients, and returns the total. Float
# addition commutes, so the sums are those autograd makes.
#
# What makes it safe: a hand-over is used only in the backward pass (graph task) that made it, and only by the
# application right before the one that made it; the last application never takes one. An application whose
# backward runs without the one after it (a gradient asked only of what lies between them) takes nothing; the one
# after it had nothing asked of the shared parameters in that pass, or autograd would have run both.


class HandOver:
    """The applications of one fused sublayer's shared parameters in one forward (within one :func:`once` block)."""

    def __init__(self) -> None:
        self.count = 0  # applications registered by the forward
        self.pending: Optional[tuple[int, int, tuple]] = None  # (graph task, from application, gradients)
        self.memo: dict[Any, tuple[int, Any]] = {}  # backward_memo's: key -> (graph task, value)


def hand_over(params: Sequence[torch.Tensor]) -> Optional[tuple[HandOver, int]]:
    """``(the hand-over shared by every application of these parameters in this block, this one's index)``, or None
    outside a :func:`once` block or for non-``nn.Parameter`` inputs (then autograd sums the gradients as usual).

    The applications registered in one block must form one chain, each one's input computed from the one before's
    output, as a stage's are (``RecursiveStage.forward`` opens a block around them): that makes their backwards run
    in reverse order, which the hand-over relies on."""
    table = getattr(_state, "hand_overs", None)
    if table is None or not all(isinstance(p, torch.nn.Parameter) for p in params):
        return None
    key = tuple((id(p), p._version) for p in params)
    shared = table.get(key)
    if shared is None:
        shared = table[key] = HandOver()
    shared.count += 1
    return shared, shared.count - 1


def handed_to(share: Optional[tuple[HandOver, int]]) -> Optional[tuple]:
    """In a backward: the gradients the next application handed to this one in this pass, else None."""
    if share is None:
        return None
    shared, index = share
    pending = shared.pending
    if pending is None or index == shared.count - 1 or pending[0] != _graph_task() or pending[1] != index + 1:
        return None
    return pending[2]


def pass_on(share: Optional[tuple[HandOver, int]], grads: tuple) -> tuple:
    """In a backward, with this application's total gradients: the first application's returns them; a later one
    hands them to the application before and returns Nones in their place."""
    if share is None:
        return grads
    shared, index = share
    if index == 0:
        shared.pending = None
        return grads
    shared.pending = (_graph_task(), index, grads)
    return (None,) * len(grads)


def _graph_task() -> int:
    """The id of the backward pass running now (autograd's graph task)."""
    return torch._C._current_graph_task_id()


def backward_memo(share: Optional[tuple[HandOver, int]], key: Any, make: Callable[[], Any]) -> Any:
    """``make()``, or what it returned for ``key`` to another application of the same shared parameters earlier in
    this backward pass (``share`` from :func:`hand_over`; None: ``make()``). For values that depend on the shared
    parameters alone, which cannot change during a backward pass."""
    if share is None:
        return make()
    memo, task = share[0].memo, _graph_task()
    kept = memo.get(key)
    if kept is not None and kept[0] == task:
        return kept[1]
    out = make()
    memo[key] = (task, out)
    return out
