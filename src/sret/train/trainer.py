"""The training loop: one object that owns model, optimiser, schedule, EMA, teacher and data for one process.

It is built from a resolved configuration (see :mod:`sret.train.config`), either fresh or from ``last.pth``; every
piece of state that decides what happens next is in the checkpoint, so a resumed run takes the same steps (same
batch order, same learning rates) and ends at the same step count as an uninterrupted one.

FKD (``--fkd-labels``) is a data/criterion branch of the same loop: the train loader replays stored crops with their
top-k teacher labels (:mod:`sret.fkd`) and the loss is :class:`sret.fkd.FKDSoftTargetCrossEntropy`, evaluated on the
device. The loop's unit is then a *pass* over the data, worth ``num_crops`` epochs (``self.epoch`` and the
checkpoint's ``epoch`` count passes; log.csv's ``epoch`` column and the LR schedule count epochs-equivalent). Crop
choice is a function of ``(seed, pass, sample)`` and the sample order comes from the same :class:`ResumableSampler`,
so an FKD run resumes mid-pass exactly like a plain one.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from sret.data import (
    AugmentConfig, BadSampleLog, ResumableSampler, ShardSampler, TransformedView, build_transform, make_loader,
    open_source,
)  # fmt: skip
from sret.errors import SReTError
from sret.fkd import (
    FKDReplayDataset, FKDSoftTargetCrossEntropy, LabelStore, fkd_collate, fkd_passes, mix_fkd_batch,
)  # fmt: skip
from sret.train import logbook
from sret.train.checkpoint import (
    atomic_save, atomic_write_text, capture_rng, load_checkpoint, load_model_checkpoint, read_metadata, restore_rng,
)  # fmt: skip
from sret.train.config import dump_yaml
from sret.train.cuda_graph import GraphedTrainStep, side_stream
from sret.train.distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier
from sret.train.evaluate import autocast, evaluate
from sret.train.factory import build_model, default_drop_path
from sret.train.losses import KDLoss, build_train_loss


class _FKDBatch:
    """An FKD loader batch in the shape the loop expects: ``images``, ``targets`` = ``(topk_idx, topk_prob)``."""

    bad: list = []  # unreadable images were dropped by fkd_collate (and zero-labelled at generation)

    def __init__(self, images: torch.Tensor, topk_idx: torch.Tensor, topk_prob: torch.Tensor) -> None:
        self.images, self.targets = images, (topk_idx, topk_prob)

    def __len__(self) -> int:
        return len(self.images)


class _FKDBatches:
    """Iterable over the FKD DataLoader yielding :class:`_FKDBatch` (a fresh iterator per pass, like a DataLoader)."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader = loader

    def __iter__(self):
        return (_FKDBatch(*batch) for batch in self.loader)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; carries the step so the user can be told where."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss became {value} at step {step}")
        self.step = step
        self.value = value


def resolve_device(name: str, dist_info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SReTError("--device cuda asked for, but no CUDA GPU is visible")
        return torch.device("cuda", dist_info.local_rank)
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs (the recipe's default), full precision on CPUs unless asked."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Owns one process's share of a run.

    Args:
        cfg: the resolved configuration (``config.finalize``).
        dist_info: rank / world size.
        resume_state: the loaded ``last.pth`` when resuming, else None.
    """

    def __init__(self, cfg: dict[str, Any], dist_info: DistInfo, resume_state: dict[str, Any] | None = None):
        self.cfg = cfg
        self.dist = dist_info
        self.out = Path(cfg["output"])
        self.device = resolve_device(cfg["device"], dist_info)
        self.amp_dtype = resolve_amp(cfg["amp"], self.device)
        seed_everything(cfg["seed"] + dist_info.rank)

        # data
        self.source = open_source(str(cfg["data"]))
        self.class_names = self.source.class_names
        cfg.setdefault("in_chans", None)
        if cfg["in_chans"] is None:
            cfg["in_chans"] = self.source.in_chans
        self._check_model_name(cfg["model"])
        if cfg["img_size"] is None:
            cfg["img_size"] = self.source.img_size or self._model_default_size(cfg["model"])
        if cfg["drop_path"] is None:
            cfg["drop_path"] = default_drop_path(cfg["model"])
        # how images were fed, so `sret predict` can preprocess without the data set at hand
        cfg["data_mean"], cfg["data_std"] = list(self.source.mean), list(self.source.std)
        crop = self.source.crop_pct
        cfg["crop_pct"] = crop if crop is not None else self._model_crop_pct(cfg["model"])
        aug = AugmentConfig(auto_augment=cfg["aa"] or None, re_prob=cfg["reprob"], scale=tuple(cfg["scale"]),
                            hflip=cfg["hflip"], color_jitter=cfg["color_jitter"])
        train_base = full_train = self.source.split("train")
        val_base = self.source.split("val")
        if cfg.get("train_subset"):
            train_base = Subset(train_base, range(min(cfg["train_subset"], len(train_base))))
        if cfg.get("val_subset"):
            val_base = Subset(val_base, range(min(cfg["val_subset"], len(val_base))))
        size, chans = cfg["img_size"], cfg["in_chans"]
        # FKD: a loop "epoch" is one pass worth num_crops epochs; batches count crops, num_crops per image
        self.fkd_labels = cfg.get("fkd_labels")
        self.epochs_per_loop = cfg["num_crops"] if self.fkd_labels else 1
        if self.fkd_labels:
            self.train_set = train_base  # the sampler draws from the (subset's) indices; images come from fkd_set
        else:
            self.train_set = TransformedView(train_base, build_transform(self.source, size, chans, True, aug))
        self.val_set = TransformedView(val_base, build_transform(self.source, size, chans, False,
                                                                 crop_pct=cfg["crop_pct"]))
        bs, world = cfg["batch_size"], dist_info.world_size
        images_per_step = bs // self.epochs_per_loop
        if images_per_step * world > len(self.train_set):
            what = f"{images_per_step} images ({bs} crops)" if self.fkd_labels else str(bs)
            raise SReTError(f"--batch-size {what} x {world} process(es) is larger than the training set "
                            f"({len(self.train_set)} images)")
        self.mixup_active = cfg["mixup"] > 0 or cfg["cutmix"] > 0
        if self.mixup_active and bs % 2:
            raise SReTError(f"mixup/cutmix need an even --batch-size (got {bs}); or set --mixup 0 --cutmix 0")
        self.sampler = ResumableSampler(self.train_set, images_per_step, world, dist_info.rank, seed=cfg["seed"])
        if self.fkd_labels:
            self.train_loader = self._build_fkd_loader(full_train, images_per_step)
        else:
            self.train_loader = make_loader(self.train_set, self.sampler, bs, cfg["workers"], drop_last=True,
                                            seed=cfg["seed"] + dist_info.rank)
        self.val_loader = make_loader(self.val_set, ShardSampler(self.val_set, world, dist_info.rank), bs,
                                      cfg["workers"], drop_last=False)
        self.steps_per_epoch = self.sampler.batches_per_epoch  # per pass with FKD
        self.num_loops = fkd_passes(cfg["epochs"], cfg["num_crops"]) if self.fkd_labels else cfg["epochs"]
        self.total_steps = self.steps_per_epoch * self.num_loops

        # model, optimisation
        self.model = build_model(cfg["model"], self.source.num_classes, chans, size, cfg["drop_path"], cfg["drop"],
                                 model_kwargs=cfg.get("model_kwargs"))
        if cfg.get("finetune") and resume_state is None:
            from sret.models.weights import load_weights

            load_weights(self.model, Path(cfg["finetune"]).expanduser(), strict=True)
        if cfg["grad_checkpointing"]:
            self.model.set_grad_checkpointing(True)
        self.model.to(self.device)
        graphed = bool(cfg.get("cuda_graph"))
        if graphed and self.device.type != "cuda":
            raise SReTError(f"--cuda-graph needs CUDA; this run is on {self.device}")
        if graphed and self.amp_dtype == torch.float16:
            raise SReTError("--cuda-graph needs bf16 or no autocast (this GPU resolved --amp auto to fp16, whose loss "
                            "scaling checks for overflow on the host); pass --amp none")
        self.optimizer = create_optimizer_v2(self.model, opt=cfg["opt"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                             **({"capturable": True} if graphed else {}))
        # per-step cosine over all loops; warm-up given in epochs(-equivalent), i.e. warmup / num_crops passes with FKD
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched="cosine", num_epochs=self.num_loops,
            warmup_epochs=cfg["warmup_epochs"] / self.epochs_per_loop,
            warmup_lr=cfg["warmup_lr"], min_lr=cfg["min_lr"], step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch,
        )  # fmt: skip
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEmaV3(self.model, decay=cfg["ema_decay"]) if cfg["ema"] else None
        self.ddp_model: nn.Module = self.model
        graph_stream = torch.cuda.Stream(self.device) if graphed else None
        if dist_info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # a DDP step is captured on the stream DDP was built on (PyTorch's rule)
            with side_stream(graph_stream) if graph_stream is not None else contextlib.nullcontext():
                self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

        self.mixup = None
        if self.mixup_active:
            self.mixup = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], prob=cfg["mixup_prob"],
                               switch_prob=cfg["mixup_switch_prob"], label_smoothing=cfg["smoothing"],
                               num_classes=self.source.num_classes)
        self.criterion = (FKDSoftTargetCrossEntropy(cfg["soft_label"]) if self.fkd_labels
                          else build_train_loss(self.mixup_active, cfg["smoothing"]))
        self.teacher = self._build_teacher() if cfg.get("teacher") else None
        self.kd_loss = KDLoss(cfg["kd_temperature"]) if self.teacher is not None else None
        self.graphed = GraphedTrainStep(self.model, self.optimizer, self._loss, self.amp_dtype, cfg["clip_grad"],
                                        distributed=dist_info.distributed, stream=graph_stream) if graphed else None

        # progress state
        self.epoch = 0
        self.epoch_step = 0
        self.step = 0
        self.epoch_state = {"loss_sum": 0.0, "samples": 0.0, "seconds": 0.0}
        self.history: list[dict[str, Any]] = []
        self.best_top1 = -1.0
        self.bad = BadSampleLog()
        if resume_state is not None:
            self._restore(resume_state)

    # ---------------------------------------------------------------- construction helpers
    @staticmethod
    def _check_model_name(name: str) -> None:
        from sret.train.factory import check_model_name

        check_model_name(name)

    @staticmethod
    def _model_default_size(name: str) -> int:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        return int(cfg.input_size[-1]) if cfg is not None else 224

    @staticmethod
    def _model_crop_pct(name: str) -> float | None:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        return getattr(cfg, "crop_pct", None) if cfg is not None else None

    def _build_fkd_loader(self, full_train, images_per_step: int) -> _FKDBatches:
        """Replay loader over the stored crops: ``images_per_step`` images x ``num_crops`` crops per batch.

        The replay dataset wraps the whole training split, so the label set's file list is checked against the data
        set it was generated for; ``--train-subset N`` (a prefix) only restricts the sampler to indices ``< N``.
        The loader gets its own generator (as ``make_loader``) so resuming does not shift the global RNG.
        """
        cfg = self.cfg
        store = LabelStore(cfg["fkd_labels"])  # checks every shard's checksum once, before workers start
        meta = store.meta
        if meta.num_classes != self.source.num_classes:
            raise SReTError(f"--fkd-labels {cfg['fkd_labels']}: the labels have {meta.num_classes} classes (teacher "
                            f"{meta.teacher}), {cfg['data']} has {self.source.num_classes}, and the model is built "
                            f"with the data set's classes; generate the labels with a {self.source.num_classes}-class "
                            "teacher (one trained on this data, or `sret fkd-label --num-classes`)")
        # raises SReTError (exit code 2) when the label set's file list does not match the training split
        self.fkd_set = FKDReplayDataset(full_train, store, num_crops=cfg["num_crops"], img_size=cfg["img_size"],
                                        mean=self.source.mean, std=self.source.std, in_chans=cfg["in_chans"],
                                        seed=cfg["seed"])
        loader = torch.utils.data.DataLoader(
            self.fkd_set, batch_size=images_per_step, sampler=self.sampler, num_workers=cfg["workers"],
            collate_fn=fkd_collate, drop_last=True, pin_memory=False, persistent_workers=cfg["workers"] > 0,
            generator=torch.Generator().manual_seed(cfg["seed"] + self.dist.rank))
        return _FKDBatches(loader)

    def _build_teacher(self) -> nn.Module:
        """Teacher from an sret checkpoint (its config names the model) or a model name (+ weights)."""
        spec, ckpt = str(self.cfg["teacher"]), self.cfg.get("teacher_checkpoint")
        path = Path(spec).expanduser()
        if path.is_file():
            meta = read_metadata(path)
            name = (meta.get("config") or {}).get("model")
            if not name:
                raise SReTError(f"--teacher {spec}: not an sret training checkpoint (no config.model); pass the model "
                                f"name as --teacher and the file as --teacher-checkpoint")
            ckpt, tcfg = path, meta["config"]
            size, chans = tcfg.get("img_size", self.cfg["img_size"]), tcfg.get("in_chans", self.cfg["in_chans"])
        else:
            name, size, chans = spec, self.cfg["img_size"], self.cfg["in_chans"]
        if chans != self.cfg["in_chans"]:
            raise SReTError(f"teacher {name} takes {chans}-channel images, the student {self.cfg['in_chans']}")
        if ckpt:
            kwargs = (tcfg.get("model_kwargs") if path.is_file() else None) or {}
            teacher = build_model(name, self.source.num_classes, chans, size, model_kwargs=kwargs)
            load_model_checkpoint(teacher, Path(ckpt).expanduser(), self.source.num_classes)
        else:
            try:
                teacher = build_model(name, self.source.num_classes, chans, size, pretrained=True)
            except Exception as err:  # noqa: BLE001 (hub errors vary: offline, no weights, ...)
                raise SReTError(f"teacher {name}: no pretrained weights could be loaded ({err}); pass "
                                f"--teacher-checkpoint FILE") from err
        teacher.to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "step": self.step,
            "epoch_state": dict(self.epoch_state),
            "history": list(self.history),
            "best_top1": self.best_top1,
            "rng": capture_rng(),
            "config": self.cfg,
            "class_names": list(self.class_names),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.epoch_step, self.step = state["epoch"], state["epoch_step"], state["step"]
        self.epoch_state = dict(state["epoch_state"])
        self.history = list(state["history"])
        self.best_top1 = state["best_top1"]
        if self.dist.rank == 0:
            restore_rng(state["rng"])  # other ranks keep their rank-offset seeds: their states were not saved

    def save_last(self) -> None:
        if self.dist.is_main:
            atomic_save(self.state_dict(), self.out / "last.pth")
        barrier()

    # ---------------------------------------------------------------- loop
    def fit(self) -> list[dict[str, Any]]:
        cfg, main = self.cfg, self.dist.is_main
        tb = logbook.TensorBoard(self.out / "tb" if main else None, purge_step=self.step or None)
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".last.pth.*.tmp"):  # left by a kill during a checkpoint write
                stale.unlink(missing_ok=True)
            atomic_write_text(dump_yaml(cfg), self.out / "config.yaml")
            n_params = sum(p.numel() for p in self.model.parameters())
            print(f"sret train: {cfg['model']} ({n_params / 1e6:.2f}M params) on {cfg['data']} "
                  f"({len(self.train_set)} train / {len(self.val_set)} val, {self.source.num_classes} classes) at "
                  f"{cfg['img_size']} px, {cfg['in_chans']} ch | {self.dist.world_size} x {self.device} "
                  f"{self.amp_dtype or 'fp32'} | {self._schedule_text()}, global batch "
                  f"{cfg['batch_size'] * self.dist.world_size}, lr {cfg['lr']:.2e}"
                  + (f" | resuming at {self._loop_name()} {self.epoch + 1}, step {self.step}" if self.step else ""),
                  flush=True)
        try:
            while self.epoch < self.num_loops:
                # Per-epoch peaks, except once a CUDA graph holds its memory pool: its activations were allocated at
                # capture, so a reset would leave them out of every later epoch's figure.
                if self.device.type == "cuda" and (self.graphed is None or self.graphed.graph is None):
                    torch.cuda.reset_peak_memory_stats(self.device)
                train_loss, lr, img_s, seconds = self._train_epoch(tb)
                peak_gib = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
                metrics, bad = evaluate(self.model, self.val_loader, self.device, self.amp_dtype)
                self._note_bad(bad)
                ema_top1 = None
                if self.ema is not None:
                    ema_metrics, _ = evaluate(self.ema.module, self.val_loader, self.device, self.amp_dtype)
                    ema_top1 = ema_metrics["top1"]
                self.epoch += 1
                self.epoch_step = 0
                self.epoch_state = {"loss_sum": 0.0, "samples": 0.0, "seconds": 0.0}
                # log.csv counts epochs(-equivalent): an FKD pass adds num_crops
                row = {"epoch": self.epoch * self.epochs_per_loop, "step": self.step, "train_loss": train_loss,
                       "val_loss": metrics["loss"],
                       "val_top1": metrics["top1"], "val_top5": metrics["top5"], "ema_top1": ema_top1, "lr": lr,
                       "val_images": metrics["count"],
                       "img_per_s": img_s, "seconds": seconds, "peak_mem_gib": peak_gib}
                self.history.append(row)
                is_best = metrics["top1"] > self.best_top1
                self.best_top1 = max(self.best_top1, metrics["top1"])
                if main:
                    if is_best:
                        atomic_save({"model": self.model.state_dict(), "config": cfg, "class_names": self.class_names,
                                     "epoch": row["epoch"], "metrics": metrics}, self.out / "best.pth")
                    logbook.write_csv(self.history, self.out / "log.csv")
                    logbook.plot_curves(self.history, self.out / "curves.png", title=f"{cfg['model']} on {cfg['data']}")
                    tb.scalars({"epoch/train_loss": train_loss, "epoch/val_loss": metrics["loss"],
                                "epoch/val_top1": metrics["top1"], "epoch/val_top5": metrics["top5"],
                                "epoch/ema_top1": ema_top1, "epoch/img_per_s": img_s}, row["epoch"])
                    print(logbook.epoch_line(row, self.num_loops * self.epochs_per_loop), flush=True)
                self.save_last()
        finally:
            tb.close()
        if main and len(self.bad):
            print(f"sret train: {self.bad.summary()}", file=sys.stderr)
        return self.history

    def _loop_name(self) -> str:
        return "pass" if self.fkd_labels else "epoch"

    def _schedule_text(self) -> str:
        if not self.fkd_labels:
            return f"{self.cfg['epochs']} epochs x {self.steps_per_epoch} steps"
        k, passes = self.cfg["num_crops"], self.num_loops
        rounded = f" (--epochs {self.cfg['epochs']} rounded up)" if passes * k != self.cfg["epochs"] else ""
        return (f"FKD {self.cfg['fkd_labels']}: {passes} passes x {self.steps_per_epoch} steps = {passes * k} "
                f"epochs-equivalent{rounded}, {k} crops/image, {self.cfg['soft_label']} soft labels")

    def _note_bad(self, bad) -> None:
        gathered = all_gather_objects([(b.index, b.path, b.reason) for b in bad])
        from sret.data.folder import BadSample

        before = len(self.bad)
        self.bad.add([BadSample(*b) for rank_bad in gathered for b in rank_bad])
        if self.dist.is_main and len(self.bad) > before:
            print(f"sret train: warning: {self.bad.summary()}", file=sys.stderr, flush=True)

    def _train_epoch(self, tb: logbook.TensorBoard) -> tuple[float, float, float, float]:
        """Train the rest of epoch (FKD: pass) ``self.epoch``; returns (mean loss, last lr, img/s, seconds).

        With FKD, img/s and the loss average count crops (the images the model sees).
        """
        from tqdm import tqdm

        cfg = self.cfg
        self.ddp_model.train()
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start_batch(self.epoch_step)
        if self.fkd_labels:
            self.fkd_set.set_epoch(self.epoch)  # the crop draw of this pass: a function of (seed, pass, index)
        bar = tqdm(total=self.steps_per_epoch, initial=self.epoch_step,
                   desc=f"{self._loop_name()} {self.epoch + 1}/{self.num_loops}",
                   disable=None if self.dist.is_main else True, dynamic_ncols=True, leave=False)
        t0 = time.perf_counter()
        seconds_before = self.epoch_state["seconds"]
        bad = []
        lr = self.optimizer.param_groups[0]["lr"]
        for batch in self.train_loader:
            bad.extend(batch.bad)
            loss_value, n = self._train_step(batch)
            if loss_value is not None:
                self.epoch_state["loss_sum"] += loss_value * n
                self.epoch_state["samples"] += n
            self.step += 1
            self.epoch_step += 1
            self.scheduler.step_update(num_updates=self.step)
            lr = self.optimizer.param_groups[0]["lr"]
            elapsed = seconds_before + time.perf_counter() - t0
            self.epoch_state["seconds"] = elapsed
            img_s = self.epoch_state["samples"] / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{loss_value or 0.0:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.0f}", refresh=False)
            bar.update(1)
            if self.step % max(cfg["log_every"], 1) == 0 and loss_value is not None:
                tb.scalars({"step/train_loss": loss_value, "step/lr": lr}, self.step)
            every = cfg["checkpoint_every_steps"]
            if every and self.step % every == 0 and self.epoch_step < self.steps_per_epoch:
                self.save_last()
        bar.close()
        self._note_bad(bad)
        seconds = seconds_before + time.perf_counter() - t0
        train_loss = self.epoch_state["loss_sum"] / max(self.epoch_state["samples"], 1.0)
        return train_loss, lr, self.epoch_state["samples"] / max(seconds, 1e-9), seconds

    def _loss(self, images: torch.Tensor, targets) -> torch.Tensor:
        """Forward pass and training loss of one batch (under the caller's autocast)."""
        logits = self.ddp_model(images)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            return self.kd_loss(logits, teacher_logits)
        return self.criterion(logits, targets)

    def _train_step(self, batch) -> tuple[float | None, float]:
        """One optimiser step on a batch; returns (mean loss over all ranks' samples, samples over all ranks).

        The loss is None when no step was possible. One host synchronisation per step: the loss is read (and, under
        DDP, summed over the ranks together with the sample count in one all-reduce) before the update.

        Raises:
            NonFiniteLoss: before the weights are touched, so ``last.pth`` still holds the last good state.
        """
        images = batch.images.to(self.device, non_blocking=True)
        fkd = isinstance(batch.targets, tuple)  # FKD: (topk_idx, topk_prob), expanded on the device by the loss
        targets = batch.targets
        targets = tuple(t.to(self.device, non_blocking=True) for t in targets) if fkd else targets.to(self.device,
                                                                                                    non_blocking=True)
        if self.mixup is not None and len(images) % 2:
            # an unreadable file left an odd batch; timm's Mixup pairs images, so drop one image
            images = images[:-1]
            targets = tuple(t[:-1] for t in targets) if fkd else targets[:-1]
        have_data = len(images) > 0
        if not have_data and not self.dist.distributed:
            return None, 0.0  # every file of this batch was unreadable
        if self.mixup is not None and have_data:
            if fkd:  # same lambda and pairing for the soft labels; dense [B, C] target built on the device
                images, targets = mix_fkd_batch(self.mixup, images, *targets, self.source.num_classes,
                                                self.cfg["soft_label"])
            else:
                images, targets = self.mixup(images, targets)
        if self.graphed is not None and (have_data or self.dist.distributed):
            # forward, backward and update replayed as one CUDA graph (its stats are summed over ranks in the graph)
            loss_sum, n = self.graphed(images, targets).tolist()
            loss_value = loss_sum / max(n, 1.0)
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(self.step + 1, loss_value)  # the step is applied; last.pth is the last good state
            if self.ema is not None:
                self.ema.update(self.model, step=self.step + 1)
            return loss_value, n
        with autocast(self.device, self.amp_dtype):
            if have_data:
                loss = self._loss(images, targets)
            else:
                # DDP ranks must all join the gradient all-reduce: a zero-gradient pass over every parameter
                loss = sum(p.sum() for p in self.ddp_model.parameters()) * 0.0
        n = float(len(images))
        loss_value = loss.item()
        if self.dist.distributed:  # every rank sees the same value, so a non-finite loss stops all of them
            loss_sum, n = all_reduce_sum([loss_value * n, n], self.device)
            loss_value = loss_sum / max(n, 1.0)
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(self.step + 1, loss_value)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg["clip_grad"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["clip_grad"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, step=self.step + 1)
        return loss_value, n


def load_resume_state(run_dir: Path) -> dict[str, Any]:
    """``DIR/last.pth`` of an earlier run, with a message that says what is wrong if it cannot be used."""
    if not run_dir.is_dir():
        raise SReTError(f"--resume {run_dir}: no such run folder")
    state = load_checkpoint(run_dir / "last.pth")
    missing = [k for k in ("model", "optimizer", "scheduler", "step", "config") if k not in state]
    if missing:
        raise SReTError(f"{run_dir / 'last.pth'} is not an sret training checkpoint (missing {', '.join(missing)})")
    return state
