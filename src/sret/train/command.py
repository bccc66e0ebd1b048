"""``sret train``: from scratch, with soft-label distillation (``--teacher``) or fine-tuning (``--finetune``).

Single process: ``sret train --model sret_t --data fashion-mnist --img-size 64 --output runs/t64``.
Multi-GPU: ``torchrun --nproc_per_node=K -m sret train ...`` (one process per GPU; rank 0 writes the run folder).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from sret.errors import SReTError
from sret.train.config import RUNTIME_KEYS, add_train_arguments, config_from_args, finalize

_PARSER: argparse.ArgumentParser | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    global _PARSER
    _PARSER = parser
    add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sret.train import logbook
    from sret.train.distributed import init_distributed, shutdown_distributed
    from sret.train.trainer import NonFiniteLoss, Trainer, load_resume_state

    device_type = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    # the configuration is settled before the process group exists: --cuda-graph (from the flags, a --config YAML or
    # the resumed run) changes how NCCL is set up
    world = int(os.environ.get("WORLD_SIZE", "1"))
    resume_state = None
    if args.resume:
        resume_state = load_resume_state(Path(args.resume))
        cfg = dict(resume_state["config"])
        if cfg.get("world_size", 1) != world:
            raise SReTError(f"--resume: the run used {cfg.get('world_size', 1)} process(es), this launch has "
                            f"{world}; the batch order would differ")
        for key in RUNTIME_KEYS:
            value = getattr(args, key)
            if value is not None and key != "resume":
                cfg[key] = value
        cfg["output"] = str(Path(args.resume))
    else:
        assert _PARSER is not None
        cfg = finalize(config_from_args(_PARSER, args), world)
        if (Path(cfg["output"]) / "last.pth").exists():
            raise SReTError(f"{cfg['output']} already holds a run (last.pth); continue it with --resume "
                            f"{cfg['output']} or choose another --output")
    dist_info = init_distributed(device_type, graph_capture=bool(cfg.get("cuda_graph")))
    trainer = None
    try:
        trainer = Trainer(cfg, dist_info, resume_state)
        try:
            history = trainer.fit()
        except NonFiniteLoss as err:
            last = Path(cfg["output"]) / "last.pth"
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise SReTError(f"{err} (epoch {trainer.epoch + 1}); training stopped, {kept}") from None
        if dist_info.is_main:
            out = Path(cfg["output"])
            print(logbook.table(history))
            best = max(history, key=lambda r: r["val_top1"]) if history else None
            if best is not None:
                print(f"best val top-1 {best['val_top1']:.2f} (epoch {best['epoch']}), final "
                      f"{history[-1]['val_top1']:.2f}; {trainer.step} steps")
            if len(trainer.bad):
                print(f"note: {trainer.bad.summary()}")
            print(f"run folder: {out}\n  log:        {out / 'log.csv'}\n  plot:       {out / 'curves.png'}\n"
                  f"  checkpoint: {out / 'last.pth'} (best: {out / 'best.pth'})\n  tensorboard: {out / 'tb'}")
            sys.stdout.flush()
        return 0
    finally:
        if trainer is not None and trainer.graphed is not None:
            trainer.graphed.release()  # before the process group goes: a live graph with NCCL work hangs its teardown
        shutdown_distributed()
