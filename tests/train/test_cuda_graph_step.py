"""``GraphedTrainStep``'s bookkeeping on the CPU, with a stand-in for CUDA-graph capture.

The stand-in records what a capture records: the step function and the learning-rate objects the optimizer holds at
that moment (a real graph reads the learning rate from that tensor's memory on every replay, never the float the
scheduler writes later). A replay re-runs the step on the static inputs with those objects. Against plain eager
training this checks what the wrapper owns: the warm-up steps, the copy of every batch into the static inputs, the
learning rate refreshed before each replay, and a batch of another shape run eagerly in between. The capture itself
is PyTorch's, checked on an H100 by ``benchmarks/check_train_graph.py`` and ``experiments/train_cuda_graph.sh``.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sret.train import cuda_graph


class _FakeGraph:
    """What a capture keeps: the step (re-run on the static inputs, writing into the static loss) and the learning-rate
    objects of that moment; each run starts from gradients None, as the captured backward allocates them."""

    step = None  # the GraphedTrainStep under test

    def __init__(self) -> None:
        self.lrs = None
        self.freed = False

    def reset(self) -> None:
        self.freed = True

    def replay(self) -> None:
        step = _FakeGraph.step
        groups = step.optimizer.param_groups
        floats = [g["lr"] for g in groups]
        for group, lr in zip(groups, self.lrs):
            group["lr"] = lr
        try:
            step.optimizer.zero_grad(set_to_none=True)
            step.static_stats.copy_(step._body(*step.static_inputs))
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value


@contextlib.contextmanager
def _fake_capture(graph: _FakeGraph, stream=None, capture_error_mode=None):
    """A capture runs nothing: the body runs here, so the model and optimizer are put back afterwards."""
    step = _FakeGraph.step
    model_state = copy.deepcopy(step.model.state_dict())
    opt_state = copy.deepcopy(step.optimizer.state_dict())
    graph.lrs = [g["lr"] for g in step.optimizer.param_groups]  # the objects the captured update reads
    yield
    step.model.load_state_dict(model_state)
    step.optimizer.load_state_dict(opt_state)  # (this also replaces the groups' lr objects: put them back)
    for group, lr in zip(step.optimizer.param_groups, graph.lrs):
        group["lr"] = lr


class _FakeStream:
    device = None

    def wait_stream(self, other) -> None:
        pass


@pytest.fixture()
def fake_cuda(monkeypatch):
    monkeypatch.setattr(cuda_graph.torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(cuda_graph.torch.cuda, "graph", _fake_capture)
    monkeypatch.setattr(cuda_graph.torch.cuda, "Stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(cuda_graph.torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph.torch.cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(cuda_graph.torch.cuda, "synchronize", lambda device=None: None)


def _batches(n: int):
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        b = 6 if i == 7 else 8  # one short batch after capture: it must run eagerly
        out.append((torch.randn(b, 10, generator=gen), torch.randint(0, 3, (b,), generator=gen)))
    return out


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.GELU(), nn.Linear(16, 3))


def _train_eager(lrs, batches, clip_grad=None, weight_decay=0.01):
    """The reference: plain eager AdamW training of ``_model()`` with the learning rate set before every step."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=lrs[0], weight_decay=weight_decay)
    losses = []
    for lr, (x, y) in zip(lrs, batches):
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        opt.step()
        losses.append(loss.item())
    return model, losses


def test_graphed_step_trains_like_eager(fake_cuda):
    lrs = [1e-2, 1e-2, 5e-3, 5e-3, 2e-3, 2e-3, 1e-3, 1e-3, 5e-4, 5e-4]  # a schedule that changes after capture
    batches = _batches(len(lrs))

    eager, losses_e = _train_eager(lrs, batches, clip_grad=1.0, weight_decay=0.05)

    graphed = _model()
    opt_g = torch.optim.AdamW(graphed.parameters(), lr=lrs[0], weight_decay=0.05, capturable=False)
    step = cuda_graph.GraphedTrainStep(graphed, opt_g, lambda x, y: F.cross_entropy(graphed(x), y), None, 1.0,
                                       warmup=3)
    _FakeGraph.step = step
    losses_g = []
    for lr, (x, y) in zip(lrs, batches):
        opt_g.param_groups[0]["lr"] = lr  # what timm's scheduler does: a float
        loss_sum, n = step(x, y).tolist()
        assert n == len(x)
        losses_g.append(loss_sum / n)

    assert step.graph is not None and step.eager_steps == 1
    assert isinstance(opt_g.param_groups[0]["lr"], float)  # the scheduler and the logs keep seeing floats
    torch.testing.assert_close(torch.tensor(losses_g), torch.tensor(losses_e), rtol=1e-5, atol=1e-6)
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)



@pytest.fixture()
def one_rank_group():
    """A real (gloo, one rank) process group: the DDP code path's all-reduce runs, as a sum over one rank."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_step_warms_up_longer_and_tops_up_short_batches(fake_cuda, one_rank_group):
    """Under DDP every rank must replay at every step: a short batch is filled up with its own first samples (the
    eager reference trains on that same filled batch), and capture waits for PyTorch's 11 DDP warm-up steps."""
    lrs = [1e-2 / (1 + i) for i in range(16)]
    batches = _batches(len(lrs))
    short = 13
    x, y = batches[short]
    batches[short] = (x[:5], y[:5])  # 5 of 8 samples after capture: filled up as samples 0-4, 0-2
    filled = [(torch.cat([x[:5], x[:3]]), torch.cat([y[:5], y[:3]])) if i == short else b for i, b in enumerate(batches)]

    eager, losses_e = _train_eager(lrs, filled)

    graphed = _model()
    opt_g = torch.optim.AdamW(graphed.parameters(), lr=lrs[0])
    step = cuda_graph.GraphedTrainStep(graphed, opt_g, lambda a, b: F.cross_entropy(graphed(a), b), None, None,
                                       warmup=3, distributed=True)
    _FakeGraph.step = step
    losses_g, counts = [], []
    for i, (lr, (bx, by)) in enumerate(zip(lrs, batches)):
        opt_g.param_groups[0]["lr"] = lr
        loss_sum, n = step(bx, by).tolist()
        losses_g.append(loss_sum / n)
        counts.append(n)
        assert (step.graph is None) == (i < cuda_graph.DDP_WARMUP)

    assert step.warmup == cuda_graph.DDP_WARMUP and step.padded_steps == 1 and step.eager_steps == 0
    assert counts == [6.0 if i == 7 else 8.0 for i in range(len(lrs))]  # step 7 (warm-up) is eager; the filled one: 8
    torch.testing.assert_close(torch.tensor(losses_g), torch.tensor(losses_e), rtol=1e-5, atol=1e-6)
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="cannot replay the step captured for 8"):
        step(torch.randn(9, 10), torch.randint(0, 3, (9,)))

    graph = step.graph
    step.release()  # what `sret train` does before destroying the process group
    assert graph.freed and step.graph is None and step.static_inputs is None and step.static_stats is None
