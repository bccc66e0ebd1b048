"""The branch gradient's compute-dtype copy, written by the LayerNorm backward (``models/fused.py``, change 45).

First the rules on plain tensors (a copy is used only while it is valid for the gradient it rides on and was made
with the same drop-path scale); then a whole SReT-T with drop path through Triton's interpreter, trained one step with
and without the copies: the same logits and gradients bit for bit, and every sublayer's backward but those at a
stage's end takes its operand from a copy, in the shuffled token order where the attention shuffles.
"""

from __future__ import annotations

import torch

from sret.models import fused

from ..interpreter import run_in_interpreter


def test_copy_is_used_only_while_valid_and_for_its_scale():
    g = torch.randn(2, 3, 4)
    scale = torch.tensor([1.25, 0.0])
    low = (g * scale.view(2, 1, 1)).half()
    fused._keep_low_copy(g, low, scale)
    assert fused._branch_grad(g, scale, torch.float16) is low
    assert torch.equal(fused._branch_grad(g, None, torch.float16), g.half())  # made for another scale: computed
    assert fused._branch_grad(g, scale.clone(), torch.float16) is not low  # another scale tensor
    assert fused._branch_grad(g, scale, torch.bfloat16).dtype == torch.bfloat16  # another dtype: computed
    view = fused._reshape_with_low_copy(g, (6, 4))
    assert getattr(view, fused._LOW_COPY)[0].data_ptr() == low.data_ptr()  # carried over to the view
    g.mul_(2)  # changed in place after the copy was made: stale
    again = fused._branch_grad(g, scale, torch.float16)
    assert again is not low and torch.equal(again, (g * scale.view(2, 1, 1)).half())
    plain = torch.ones(1, 2, 3)
    assert torch.equal(fused._branch_grad(plain, None, torch.float16), plain.half())  # no copy at all


def test_copies_are_requested_only_for_outputs_of_fused_sublayers():
    x = torch.randn(2, 3, 4)
    assert fused._low_copy_request(x, torch.bfloat16) is None  # not a fused sublayer's output: nobody would use it
    scale = torch.ones(2)
    fused._mark_output(x, scale)
    assert fused._low_copy_request(x, torch.bfloat16) == (torch.bfloat16, scale, None)
    assert fused._low_copy_request(x, torch.float32) is None  # no narrower dtype: the backward casts nothing


SCRIPT = r"""
import torch
import sret
from sret.models import fused

hits = []
plain_branch_grad = fused._branch_grad
def counted(g, scale, dtype, order=None, width=None):
    out = plain_branch_grad(g, scale, dtype, order, width)
    kept = getattr(g, fused._LOW_COPY, None)
    hits.append(kept is not None and out is kept[0])
    return out
fused._branch_grad = counted
gathers = []  # index_select calls in a training step
plain_index_select = torch.Tensor.index_select
def counted_index_select(self, *args, **kwargs):
    gathers.append(tuple(self.shape))
    return plain_index_select(self, *args, **kwargs)
torch.Tensor.index_select = counted_index_select

torch.manual_seed(0)
model = sret.create_model("sret_t", img_size=64, num_classes=10, drop_path_rate=0.1)
x = torch.randn(2, 3, 64, 64)

def step():
    hits.clear()
    torch.manual_seed(1)  # same permutations and drop-path masks
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        gathers.clear()
        out = model(x)
    out.float().square().sum().backward()
    return [out.float()] + [p.grad.clone() for p in model.parameters() if p.grad is not None], list(hits)

kept, kept_hits = step()
kept_gathers = list(gathers)
fused._KEEP_LOW_COPY = False
computed, computed_hits = step()
print("backwards", len(kept_hits), "using a copy", sum(kept_hits), "without", sum(computed_hits))
assert len(kept) == len(computed) and all(torch.equal(a, b) for a, b in zip(kept, computed))
# 60 sublayer backwards (20 attention, 20 MLP, 20 NLL); the last sublayer of each of the 3 stages gets its gradient
# from the pooling after it or from the head, which make no copy
assert len(kept_hits) == 60 and sum(kept_hits) == 57 and sum(computed_hits) == 0
# Only stage 0's recursive applications shuffle their tokens (groups2 = (2, 1, 1)): 2 of the 20 attention sublayers.
# Their backward reads its branch gradient from a copy written in the shuffled order and hands d LN(x) to the
# LayerNorm backward in that order, and its forward writes the LayerNorm statistics in grid order: no gathers. With
# the gathers as separate ops (change 52 off) the same bits, with the statistics, the grid-order copies (2 fewer
# backwards take a copy as it is) and d LN(x) gathered: 8 gathers.
fused._KEEP_LOW_COPY = True
fused._GATHER_IN_KERNELS = False
gathered, gathered_hits = step()
print("gathers", len(kept_gathers), "with the gathers as ops", len(gathers))
assert all(torch.equal(a, b) for a, b in zip(gathered, computed))
assert kept_gathers == [] and len(gathers) == 8 and sum(gathered_hits) == 55
fused._GATHER_IN_KERNELS = True
# gradient checkpointing (each application recomputed in backward, its drop-path masks redrawn from the saved RNG
# state): the copies are made on the recomputed graph, and the result is again the same bits
fused._KEEP_LOW_COPY = True
model.set_grad_checkpointing(True)
checkpointed, _ = step()
assert all(torch.equal(a, b) for a, b in zip(checkpointed, computed))
print("ok")
"""


def test_whole_model_gradients_are_the_same_bits_with_the_copies_in_interpreter():
    run_in_interpreter(SCRIPT, SRET_FAST_LN="1", SRET_FUSED="1", SRET_FUSED_KERNELS="1")
