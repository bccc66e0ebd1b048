"""The fused sublayer's parameter gradients finished in one launch (``models/backward_finish.py``, change 48) and
handed from a shared block's later application to the one before (``shared_weights.hand_over``, change 49), through
Triton's interpreter: first the kernel against float64 sums of its inputs, for widths on and off its column block and
program counts on and off its chunk, with and without gradients to add; then a block applied twice, through backward
passes that run only one of its applications; then a whole SReT-T with drop path, whose every sublayer backward takes
the one launch, against the separate launches and autograd's sums they replace."""

from __future__ import annotations

import pytest

from ..interpreter import run_in_interpreter

pytest.importorskip("triton")

KERNEL = r"""
import torch
from sret.models.backward_finish import finish_sublayer

torch.manual_seed(0)
# (C, programs of the LayerNorm backward, projection inputs, its GEMM output's width, lin rows)
for C, P, n_in, gw_width, n_lin in ((64, 264, 64, 64, 192), (20, 7, 33, 40, 61), (128, 100, 460, 480, 480)):
    partial = torch.randn(4, C, P)
    gw = torch.randn(C, gw_width).half()  # the GEMM's output in the compute dtype; columns past n_in are padding
    w, b = torch.randn(C, n_in), torch.randn(C)
    c1, c2 = torch.randn(1), torch.randn(1)
    dwb = torch.randn(n_lin, C + 8).half()  # the lin weight gradient, then its bias gradient in column C
    counter = torch.zeros(1, dtype=torch.int32)  # as the LayerNorm backward leaves it
    got = finish_sublayer(partial, counter, gw, w, b, c1, c2, dwb, torch.float32, torch.float32)
    assert counter.item() == 0  # left as found, for the next launch
    sums = partial.double().sum(-1)  # (4, C)
    g = gw[:, :n_in].double()
    want = (sums[0], sums[1], sums[2].sum().reshape(1), c2.double() * g, c2.double() * sums[3],
            ((w.double() * g).sum() + (b.double() * sums[3]).sum()).reshape(1), dwb[:, :C].double(),
            dwb[:, C].double())
    names = ("ln weight", "ln bias", "c1", "proj weight", "proj bias", "c2", "lin weight", "lin bias")
    for a, e, name in zip(got, want, names):
        assert a.dtype == torch.float32 and a.shape == e.shape, (C, name, a.shape, e.shape)
        assert rel(a, e) < 1e-6, (C, P, name, rel(a, e))
    assert torch.equal(got[6], dwb[:, :C].float()) and torch.equal(got[7], dwb[:, C].float())  # casts: exact
    assert torch.equal(got[3], gw[:, :n_in].float() * c2)  # one float32 multiply, as the PyTorch ops round it
    # a later application's gradients added in the same launch (and dwb's zero-padding rows past lin_rows left out)
    add = tuple(torch.randn(t.shape) for t in got[:6]) + (torch.randn(n_lin - 1, C), torch.randn(n_lin - 1))
    summed = finish_sublayer(partial, counter, gw, w, b, c1, c2, dwb, torch.float32, torch.float32,
                             lin_rows=n_lin - 1, add=add)
    own = got[:6] + (got[6][:-1], got[7][:-1])
    for a, o, h, name in zip(summed, own, add, names):
        assert a.shape == h.shape and rel(a, o.double() + h.double()) < 1e-6, (C, name)
    try:
        finish_sublayer(partial, counter, gw, w, b, c1, c2, dwb, torch.float32, torch.float32, add=add)
        raise AssertionError("an add of the wrong shape was taken")
    except ValueError as exc:
        assert "lin_weight" in str(exc), exc
print("ok")
"""

BLOCK = r"""
import torch
from sret.models import fused, shared_weights
from sret.models.blocks import RecursiveBlock

torch.manual_seed(0)
block = RecursiveBlock(32, 2, 4.0, True, 0.0, 0.0, 0.0, True, "sdpa")
for p in block.parameters():  # coefficients away from 1, so that a lost or doubled gradient shows
    p.data.add_(0.1 * torch.randn(p.shape))
x = torch.randn(2, 16, 32, requires_grad=True)
params = list(block.parameters())

def forward():
    with shared_weights.once(), torch.autocast("cpu", dtype=torch.float16):
        y1 = block(x, 1, None)
        y2 = block(y1, 1, None)
    return y1, y2

def grads(loss, wrt):
    out = torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=True)
    return [None if g is None else g.clone() for g in out]

fused._FINISH_IN_ONE_LAUNCH = False  # autograd sums the two applications' gradients
y1, y2 = forward()
ref_full = grads(y2.float().square().sum(), params + [x])
ref_first = grads(y1.float().square().sum(), params)
fused._FINISH_IN_ONE_LAUNCH = True
handed = []
plain = shared_weights.pass_on
def counted(share, g):
    out = plain(share, g)
    handed.append(share is not None and share[1] > 0)
    return out
shared_weights.pass_on = counted

def same(a, b, what):
    for i, (u, v) in enumerate(zip(a, b)):
        assert (u is None) == (v is None) and (u is None or rel(u, v) < 1e-6), (what, i)

from sret.models import sublayer_kernels
casts = []
plain_cast = sublayer_kernels.scaled_cast
def counted_cast(*args):
    casts.append(1)
    return plain_cast(*args)
sublayer_kernels.scaled_cast = counted_cast

y1, y2 = forward()
loss = y2.float().square().sum()
same(grads(loss, params + [x]), ref_full, "both applications")
assert handed == [True, True, False, False], handed  # app 2 hands over (attention, MLP), app 1 returns the totals
assert len(casts) == 2, len(casts)  # c2 * w of the projections: once a sublayer, not once an application
# a pass that runs only the second application (a gradient of y1): it hands over, and nobody takes it ...
grads(loss, [y1])
# ... then a pass that runs only the first one (y1's own loss): it must not take that stale hand-over
same(grads(y1.float().square().sum(), params), ref_first, "first application alone")
# and a full pass again: the totals as autograd sums them
same(grads(loss, params + [x]), ref_full, "full pass again")

# a block around two forwards (two views of a batch, say), each forward a chain in its own inner block as a stage's
# is: each chain hands over within itself, whatever order autograd runs the two chains' backwards in
x2 = torch.randn(2, 16, 32, requires_grad=True)
def two_forwards():
    with shared_weights.once():
        ya, yb = forward()[1], None
        with shared_weights.once(), torch.autocast("cpu", dtype=torch.float16):
            yb = block(block(x2, 1, None), 1, None)
    return ya.float().square().sum() + yb.float().pow(3).sum()
fused._FINISH_IN_ONE_LAUNCH = False
ref_two = grads(two_forwards(), params + [x, x2])
fused._FINISH_IN_ONE_LAUNCH = True
handed.clear()
same(grads(two_forwards(), params + [x, x2]), ref_two, "two chains under one outer block")
assert handed.count(True) == 4, handed  # each chain's second application handed over (attention, MLP)
print("ok")
"""

MODEL = r"""
import torch
import sret
from sret.models import fused

calls = []
plain = fused._finish.finish_sublayer
def counted(*args, **kwargs):
    calls.append(1)
    return plain(*args, **kwargs)
fused._finish.finish_sublayer = counted

torch.manual_seed(0)
model = sret.create_model("sret_t", img_size=64, num_classes=10, drop_path_rate=0.1)
x = torch.randn(2, 3, 64, 64)

def step():
    torch.manual_seed(1)  # same permutations and drop-path masks
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    out.float().square().sum().backward()
    return out.float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

out_one, one = step()
assert len(calls) == 60, len(calls)  # every sublayer: 20 attention, 20 MLP, 20 NLL
# gradient checkpointing (each application recomputed in backward): the same gradients, handed over the same way
model.set_grad_checkpointing(True)
_, checkpointed = step()
model.set_grad_checkpointing(False)
assert all(torch.equal(checkpointed[n], g) for n, g in one.items())
calls.clear()
fused._FINISH_IN_ONE_LAUNCH = False
out_sep, separate = step()
assert not calls and torch.equal(out_one, out_sep) and one.keys() == separate.keys()
for name, grad in one.items():
    # only sums over tokens are added up in another order: float32 rounding, nothing more
    assert rel(grad, separate[name]) < 1e-4, (name, rel(grad, separate[name]))
    if name.endswith(("qkv.weight", "qkv.bias", "fc1.weight", "fc1.bias")) or ".proj.weight" in name \
            or "fc2.weight" in name:
        # casts, one multiply and, for a shared block, the add autograd would make: the same bits
        assert torch.equal(grad, separate[name]), name
print("ok")
"""


def test_kernel_matches_float64_sums_in_interpreter():
    run_in_interpreter(KERNEL, SRET_FUSED_KERNELS="1")


def test_shared_block_hands_its_gradients_over_in_interpreter():
    run_in_interpreter(BLOCK, SRET_FAST_LN="1", SRET_FUSED="1", SRET_FUSED_KERNELS="1")


def test_whole_model_takes_one_launch_per_sublayer_in_interpreter():
    run_in_interpreter(MODEL, SRET_FAST_LN="1", SRET_FUSED="1", SRET_FUSED_KERNELS="1")
