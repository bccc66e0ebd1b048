"""The training step as one CUDA graph (``sret train --cuda-graph``): the GPU's speed without the host's per-op cost.

Why: an eager SReT-T training step issues ~9,000 aten ops from Python. On an H100 at batch 256 the eager step takes
2.7x its GPU time (117 against 43.7 ms, ``docs/benchmarks.md`` run 12): the GPU waits for the host. Replaying the
whole step (forward, backward, clipping, optimizer update) as one captured graph removes that cost; PyTorch's
whole-network capture (``torch.cuda.graph``) does the work, this module only keeps a replay the same step:

- the first ``warmup`` steps run eagerly on a side stream (as capture requires); the next one is captured into
  static input buffers, and every later batch is copied into those buffers and replayed;
- gradients are None when capture starts, so the captured backward allocates them in the graph's pool and every
  replay overwrites them (``zero_grad(set_to_none=True)`` semantics);
- the optimizer is capturable (its step counters live on the device) and its learning rate is read from a device
  tensor that is refreshed from the scheduler's value before every replay;
- random ops (SReT's token permutations, drop path, dropout) draw from the CUDA generator, whose offset advances on
  every replay: each step gets fresh draws (checked on an H100, ``benchmarks/check_train_graph.py``);
- a batch of another shape (a short batch after unreadable files) runs eagerly, into the same gradient tensors.

Under DDP (``torchrun``) the captured step holds DDP's gradient all-reduces and one more for the loss statistics, so
a replay is a collective of all ranks, and every rank must replay at the same steps. PyTorch's rules for capturing a
DDP step are followed: DDP is built on the step's side stream (``self.stream``), NCCL's asynchronous error handling
is off (``sret.train.distributed``), and at least ``DDP_WARMUP`` (11) eager steps run before the capture. A rank
cannot run a short batch eagerly while the others replay, so under DDP a short batch (unreadable files dropped from
it) is topped up to the captured size by repeating its own first samples; the loss and the sample count include
those repeats.

Limits, checked by the trainer before anything runs: CUDA, bf16 or float32 (float16 loss scaling reads the overflow
flag on the host), Adam/AdamW. A non-finite loss is seen after the step has been applied; ``last.pth`` on disk is the
last good state either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from sret.errors import SReTError

CAPTURABLE_OPTIMIZERS = ("adam", "adamw")
DDP_WARMUP = 11  # eager DDP steps PyTorch asks for before a capture (DDP settles its buckets over the first steps)


@contextlib.contextmanager
def side_stream(stream: torch.cuda.Stream) -> Iterator[None]:
    """Run the block on ``stream``, after the current stream's queued work and before its later work.

    Capture needs its warm-up work (and, under DDP, DDP's construction) on a stream other than the default one.
    """
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


class GraphedTrainStep:
    """Callable ``(images, targets) -> stats`` that trains one step, replayed from a CUDA graph.

    ``stats`` is a device tensor ``[loss summed over samples, samples]``, summed over all ranks under DDP: reading it
    (``stats.tolist()``) is the step's only host synchronisation, and the mean loss is ``stats[0] / stats[1]``.

    Args:
        model: The model whose parameters ``optimizer`` updates.
        optimizer: Created with ``capturable=True``.
        loss_fn: ``(images, targets) -> loss`` (forward pass and mean loss, autocast applied here).
        amp_dtype: Autocast dtype, or None for float32.
        clip_grad: Max gradient norm, or None.
        warmup: Eager steps before the capture (at least ``DDP_WARMUP`` under DDP).
        distributed: ``loss_fn`` runs a DDP model in an initialised process group.
        stream: The side stream of the warm-up steps and the capture; under DDP, the one DDP was built on.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, Any], torch.Tensor], amp_dtype: Optional[torch.dtype],
                 clip_grad: Optional[float], warmup: int = 3, distributed: bool = False,
                 stream: Optional[torch.cuda.Stream] = None) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.amp_dtype, self.clip_grad, self.distributed = amp_dtype, clip_grad, distributed
        self.warmup = max(warmup, DDP_WARMUP) if distributed else warmup
        self.device = next(model.parameters()).device
        self.stream = stream if stream is not None else torch.cuda.Stream(self.device)
        self.steps = 0
        self.eager_steps = 0  # one process, after capture: batches whose shape differed from the captured one
        self.padded_steps = 0  # DDP, after capture: short batches topped up to the captured size
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_inputs: Any = None
        self.static_stats: Optional[torch.Tensor] = None
        self.lr = [torch.tensor(float(g["lr"]), device=self.device) for g in optimizer.param_groups]

    def _body(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        # Autocast's weight-cast cache must be off inside a capture (PyTorch's CUDA-graph notes).
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            loss = self.loss_fn(images, targets)
        loss.backward()
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()
        count = torch.full((), float(images.shape[0]), device=loss.device)
        stats = torch.stack([loss.detach().float() * count, count])  # [loss sum, samples]
        if self.distributed:
            dist.all_reduce(stats)  # captured too: every replay sums over the ranks without a host round trip
        return stats

    def _eager(self, images: torch.Tensor, targets: Any, set_to_none: bool) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        return self._body(images, targets)

    def _fits(self, images: torch.Tensor, targets: Any) -> bool:
        new, new_spec = tree_flatten((images, targets))
        old, old_spec = tree_flatten(self.static_inputs)
        return new_spec == old_spec and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(new, old))

    def _top_up(self, images: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        """A short DDP batch, filled up to the captured batch size with its own first samples (see module doc)."""
        size, have = self.static_inputs[0].shape[0], images.shape[0]
        if not 0 < have < size:
            raise SReTError(f"--cuda-graph under torchrun: a batch of {have} samples cannot replay the step captured "
                            f"for {size}; every rank must replay together")
        reps = -(-size // have)
        filled = tree_map(lambda t: torch.cat([t] * reps)[:size], (images, targets))
        if not self._fits(*filled):
            raise SReTError("--cuda-graph under torchrun: a batch differs from the captured one in more than its "
                            "size; every rank must replay together")
        return filled

    def _capture(self, images: torch.Tensor, targets: Any) -> None:
        self.static_inputs = tree_map(lambda t: t.clone(), (images, targets))
        self.optimizer.zero_grad(set_to_none=True)
        floats = [g["lr"] for g in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.lr):
            group["lr"] = lr  # the captured update reads the learning rate from this tensor on every replay
        torch.cuda.synchronize(self.device)  # no earlier work (warm-up collectives included) left in flight
        try:
            self.graph = torch.cuda.CUDAGraph()
            # thread-local: CUDA calls of other threads (NCCL's watchdog, a DataLoader's pin-memory thread) must not
            # invalidate the capture; only this thread's are checked
            with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
                self.static_stats = self._body(*self.static_inputs)
        finally:
            for group, value in zip(self.optimizer.param_groups, floats):
                group["lr"] = value  # the scheduler and the logs keep seeing floats

    def release(self) -> None:
        """Free the captured graph. Under DDP this must happen before the process group is destroyed: a live graph
        holding NCCL work makes ``destroy_process_group`` (or the exit) hang (pytorch/pytorch#115388)."""
        if self.graph is not None:
            torch.cuda.synchronize(self.device)
            self.graph.reset()
        self.graph, self.static_inputs, self.static_stats = None, None, None

    def __call__(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        self.steps += 1
        if self.graph is None and self.steps <= self.warmup:
            with side_stream(self.stream):
                return self._eager(images, targets, set_to_none=True)
        if self.graph is None:
            self._capture(images, targets)
        else:
            if not self._fits(images, targets):
                if not self.distributed:
                    self.eager_steps += 1  # zero the graph's gradient tensors in place: the replays keep using them
                    return self._eager(images, targets, set_to_none=False)
                self.padded_steps += 1
                images, targets = self._top_up(images, targets)
            for dst, src in zip(tree_flatten(self.static_inputs)[0], tree_flatten((images, targets))[0]):
                dst.copy_(src, non_blocking=True)
        for group, lr in zip(self.optimizer.param_groups, self.lr):
            lr.fill_(float(group["lr"]))
        self.graph.replay()
        assert self.static_stats is not None
        return self.static_stats
