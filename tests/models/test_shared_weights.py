"""A shared block's prepared weights made once per stage forward (``models/shared_weights.py``).

First the memo's rules on stand-ins; then a whole SReT-T through Triton's interpreter, trained one step with and
without the memo: the same logits and gradients bit for bit, and half the attention weight casts (each shared block
is applied twice).
"""

from __future__ import annotations

import torch
from torch import nn

from sret.models import shared_weights

from ..interpreter import run_in_interpreter


def test_memo_keeps_results_inside_a_block_only():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.zeros(2))
    made = []

    def make():
        made.append(1)
        return object()

    first = shared_weights.memoized(make, (p,), "k")
    assert shared_weights.memoized(make, (p,), "k") is not first and len(made) == 2  # no block: made every time
    with shared_weights.once():
        a = shared_weights.memoized(make, (p,), "k")
        assert shared_weights.memoized(make, (p,), "k") is a  # kept
        assert shared_weights.memoized(make, (p,), "other") is not a  # another key
        assert shared_weights.memoized(make, (p, q), "k") is not a  # other parameters
        with shared_weights.once():  # nested: the outer block's table
            assert shared_weights.memoized(make, (p,), "k") is a
        with torch.no_grad():
            p.add_(1)  # an in-place update bumps the version counter: made again
        assert shared_weights.memoized(make, (p,), "k") is not a
        temp = torch.ones(3)  # not a Parameter: its identity could be reused, never kept
        assert shared_weights.memoized(make, (temp,), "k") is not shared_weights.memoized(make, (temp,), "k")
        nones = []
        assert shared_weights.memoized(lambda: nones.append(1), (q,), "none") is None
        shared_weights.memoized(lambda: nones.append(1), (q,), "none")
        assert len(nones) == 2  # a None (the caller's fallback) is not kept
    b = shared_weights.memoized(make, (p,), "k")
    assert b is not a and shared_weights.memoized(make, (p,), "k") is not b  # the block closed: nothing kept


SCRIPT = r"""
import contextlib
import torch
import sret
from sret.models import shared_weights, stage
from sret.models import sublayer_kernels as K

counts = {}
for name in ("_cast_parameters_now", "_prepared_weights_now", "_padded_now"):
    plain = getattr(K, name)
    def counted(*a, _plain=plain, _name=name, **k):
        counts[_name] = counts.get(_name, 0) + 1
        return _plain(*a, **k)
    setattr(K, name, counted)

torch.manual_seed(0)
model = sret.create_model("sret_t", img_size=64, num_classes=10, drop_path_rate=0.1)
x = torch.randn(2, 3, 64, 64)

def step():
    counts.clear()
    torch.manual_seed(1)  # same permutations and drop-path masks
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    out.float().square().sum().backward()
    return [out.float()] + [p.grad.clone() for p in model.parameters() if p.grad is not None], dict(counts)

once, once_counts = step()
real = shared_weights.once
shared_weights.once = contextlib.nullcontext
each, each_counts = step()
shared_weights.once = real
print("with the memo", once_counts, "without", each_counts)
assert len(once) == len(each) and all(torch.equal(a, b) for a, b in zip(once, each))
# 20 attention applications over 10 shared blocks; MLPs: 20 applications of 10 shared blocks plus 20 unshared NLLs
assert each_counts["_cast_parameters_now"] == 20 and once_counts["_cast_parameters_now"] == 10
mlp_each = each_counts.get("_prepared_weights_now", 0) + each_counts.get("_padded_now", 0)
mlp_once = once_counts.get("_prepared_weights_now", 0) + once_counts.get("_padded_now", 0)
assert mlp_each > mlp_once > 0, (mlp_each, mlp_once)
print("ok")
"""


def test_shared_blocks_prepare_weights_once_with_the_same_results_in_interpreter():
    run_in_interpreter(SCRIPT, SRET_FAST_LN="1", SRET_FUSED="1", SRET_FUSED_KERNELS="1")
