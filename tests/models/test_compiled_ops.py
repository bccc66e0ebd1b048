"""The ops compiled models run (``sret::attn_residual``, ``sret::mlp_residual`` and their training forms), run
through Triton's CPU interpreter.

Under ``torch.compile`` on a GPU, Inductor traces these ops' bodies; here they run eagerly through the dispatcher,
which checks the plumbing a compiled model depends on: the same kernels, results and gradients as the eager fused
sublayers (the training ops' registered backward included), and every sublayer of a model routed through an op when
the model is being compiled, for inference and (opt-in) for a training step. The GPU check
(``benchmarks/check_compiled.py``) compiles the model for real.

The interpreter needs ``TRITON_INTERPRET=1`` before Triton is imported, hence the subprocess.
"""

from __future__ import annotations

import pytest

from ..interpreter import run_in_interpreter

pytest.importorskip("triton")

SCRIPT = """
    import os
    import torch
    import sret
    from sret.models import compiled_ops as CO, fused as FU

    torch.manual_seed(0)
    model = sret.create_model("sret_t", img_size=32, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)

    # One block of each kind, straight: the op's result is the eager fused sublayer's, bit for bit.
    block, nll = model.transformers[0].blocks[0], model.transformers[0].blocks[1]
    t = torch.randn(2, 64, block.norm1.weight.numel())
    perm = torch.randperm(64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        for groups, p in ((1, None), (4, None), (4, perm)):
            inv = None if p is None else torch.argsort(p)
            want = FU.attn_residual(t, block.norm1, block.attn, groups, p, inv, block.coefficient1,
                                    block.coefficient2)
            got = CO.attn_residual(t, block.norm1, block.attn, groups, p, inv, block.coefficient1,
                                   block.coefficient2)
            assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want), (groups, rel(got, want))
        want = FU.mlp_residual(t, nll.norm1, nll.mlp, nll.coefficient1, nll.coefficient2)
        got = CO.mlp_residual(t, nll.norm1, nll.mlp, nll.coefficient1, nll.coefficient2)
        assert got is not None and torch.equal(got, want), rel(got, want)

    # Training: each training op and its registered backward against the eager fused sublayer, bit for bit (values
    # and every gradient), shuffled groups included.
    def grads_of(fn, *args):
        t_in = t.clone().requires_grad_(True)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            y = fn(t_in, *args)
        y.float().square().sum().backward()
        return [y.detach(), t_in.grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.train()
    os.environ["SRET_COMPILED_TRAIN"] = "1"  # opt-in (compiled_ops.py says why)
    for groups, p in ((1, None), (4, perm)):
        inv = None if p is None else torch.argsort(p)
        args = (block.norm1, block.attn, groups, p, inv, block.coefficient1, block.coefficient2)
        want, got = grads_of(FU.attn_residual, *args), grads_of(CO.attn_residual, *args)
        assert len(got) == len(want) == 2 + 8 and all(torch.equal(a, b) for a, b in zip(got, want)), groups
    args = (block.norm2, block.mlp, block.coefficient3, block.coefficient4)
    want, got = grads_of(FU.mlp_residual, *args), grads_of(CO.mlp_residual, *args)
    assert len(got) == len(want) == 2 + 8 and all(torch.equal(a, b) for a, b in zip(got, want))
    os.environ["SRET_COMPILED_TRAIN"] = "0"
    model.eval()

    # The whole model as torch.compile traces it (is_compiling True): every sublayer through an op, logits within
    # float16 rounding of the eager fused path and of the plain modules (the compiled path before these ops).
    calls = []
    originals = {name: getattr(CO, name) for name in ("attn_residual", "mlp_residual")}

    def counted(fn, name):  # counts the calls that ran an op (an entry point returns None where it steps aside)
        def call(*args):
            out = fn(*args)
            if out is not None:
                calls.append(name)
            return out
        return call

    for name, fn in originals.items():
        setattr(CO, name, counted(fn, name))

    def logits(compiling, ops="1", grad=False):
        os.environ["SRET_COMPILED_OPS"] = ops
        real = torch.compiler.is_compiling
        torch.compiler.is_compiling = lambda: compiling
        try:
            with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.float16):
                return model(x).float()
        finally:
            torch.compiler.is_compiling = real

    eager = logits(False)
    assert not calls
    via_ops = logits(True)
    attn_calls, mlp_calls = calls.count("attn_residual"), calls.count("mlp_residual")
    # sret_t: 20 attention applications; an MLP after each and an NLL after each (both through the op's kernels)
    assert attn_calls == 20 and mlp_calls == 40, (attn_calls, mlp_calls)
    calls.clear()
    plain = logits(True, ops="0")
    assert not calls
    assert rel(via_ops, eager) < 1e-2 and rel(via_ops, plain) < 1e-2, (rel(via_ops, eager), rel(via_ops, plain))
    # A training step through the training ops (opt-in): every sublayer, logits and gradients within float16 rounding of
    # the eager fused step's (same permutations: the same seed).
    def step(compiling):
        torch.manual_seed(3)
        model.zero_grad()
        out = logits(compiling, grad=True)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    calls.clear()
    eager_out, eager_grads = step(False)
    step(True)  # training through the ops is opt-in (SRET_COMPILED_TRAIN=1): by default the plain modules
    assert not calls
    os.environ["SRET_COMPILED_TRAIN"] = "1"
    ops_out, ops_grads = step(True)
    assert calls.count("attn_residual") == 20 and calls.count("mlp_residual") == 40, calls
    assert rel(ops_out, eager_out) < 1e-2 and eager_grads.keys() == ops_grads.keys()
    errs = sorted(rel(ops_grads[n], eager_grads[n]) for n in eager_grads if eager_grads[n].norm() > 0)
    assert errs[len(errs) // 2] < 1e-2, errs[-5:]
    print("ok")
"""


def test_compiled_ops_match_fused_sublayers_in_interpreter():
    run_in_interpreter(SCRIPT, SRET_FAST_LN="1", SRET_FUSED="1", SRET_FUSED_KERNELS="1")
