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

Limits, checked by the trainer before anything runs: CUDA, one process (no DDP), bf16 or float32 (float16 loss
scaling reads the overflow flag on the host), Adam/AdamW. A non-finite loss is seen after the step has been applied;
``last.pth`` on disk is the last good state either way.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

CAPTURABLE_OPTIMIZERS = ("adam", "adamw")


class GraphedTrainStep:
    """Callable ``(images, targets) -> loss`` (a device scalar) that trains one step, replayed from a CUDA graph.

    Args:
        model: The model whose parameters ``optimizer`` updates.
        optimizer: Created with ``capturable=True``.
        loss_fn: ``(images, targets) -> loss`` (forward pass and loss, autocast applied here).
        amp_dtype: Autocast dtype, or None for float32.
        clip_grad: Max gradient norm, or None.
        warmup: Eager steps before the capture.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, Any], torch.Tensor], amp_dtype: Optional[torch.dtype],
                 clip_grad: Optional[float], warmup: int = 3) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.amp_dtype, self.clip_grad, self.warmup = amp_dtype, clip_grad, warmup
        self.device = next(model.parameters()).device
        self.steps = 0
        self.eager_steps = 0  # after capture: batches whose shape differed from the captured one
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_inputs: Any = None
        self.static_loss: Optional[torch.Tensor] = None
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
        return loss.detach()

    def _eager(self, images: torch.Tensor, targets: Any, set_to_none: bool) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        return self._body(images, targets)

    def _fits(self, images: torch.Tensor, targets: Any) -> bool:
        new, new_spec = tree_flatten((images, targets))
        old, old_spec = tree_flatten(self.static_inputs)
        return new_spec == old_spec and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(new, old))

    def _capture(self, images: torch.Tensor, targets: Any) -> None:
        self.static_inputs = tree_map(lambda t: t.clone(), (images, targets))
        self.optimizer.zero_grad(set_to_none=True)
        floats = [g["lr"] for g in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.lr):
            group["lr"] = lr  # the captured update reads the learning rate from this tensor on every replay
        try:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_loss = self._body(*self.static_inputs)
        finally:
            for group, value in zip(self.optimizer.param_groups, floats):
                group["lr"] = value  # the scheduler and the logs keep seeing floats

    def __call__(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        self.steps += 1
        if self.graph is None and self.steps <= self.warmup:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                loss = self._eager(images, targets, set_to_none=True)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return loss
        if self.graph is None:
            self._capture(images, targets)
        elif not self._fits(images, targets):
            self.eager_steps += 1  # zero the graph's gradient tensors in place: the replays keep using them
            return self._eager(images, targets, set_to_none=False)
        else:
            for dst, src in zip(tree_flatten(self.static_inputs)[0], tree_flatten((images, targets))[0]):
                dst.copy_(src, non_blocking=True)
        for group, lr in zip(self.optimizer.param_groups, self.lr):
            lr.fill_(float(group["lr"]))
        self.graph.replay()
        assert self.static_loss is not None
        return self.static_loss
