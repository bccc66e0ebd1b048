"""What a run leaves for people: ``log.csv``, TensorBoard events, ``curves.png`` and the console table.

Everything is rebuilt from the epoch history kept in the checkpoint, so after a kill and ``--resume`` the files
hold each epoch exactly once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from sret.train.checkpoint import atomic_write_text

COLUMNS = (
    "epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "ema_top1", "lr", "img_per_s", "seconds",
    "val_images", "peak_mem_gib",
)  # fmt: skip


def write_csv(history: list[dict[str, Any]], path: Path) -> None:
    """One row per finished epoch (empty cells where a metric does not apply, e.g. ``ema_top1`` without EMA)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    atomic_write_text(buf.getvalue(), path)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss (train and val) and accuracy (top-1, top-5) against epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", ms=3, label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="o", ms=3, label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["val_top1"] for r in history], marker="o", ms=3, label="val top-1")
    ax_acc.plot(epochs, [r["val_top5"] for r in history], marker="o", ms=3, label="val top-5")
    if any(r.get("ema_top1") is not None for r in history):
        ax_acc.plot(epochs, [r.get("ema_top1") for r in history], marker="o", ms=3, label="EMA top-1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The one summary line printed after each epoch."""
    ema = f" ema {row['ema_top1']:.2f}" if row.get("ema_top1") is not None else ""
    return (
        f"epoch {row['epoch']}/{epochs} step {row['step']} | train loss {row['train_loss']:.4f} | "
        f"val top-1 {row['val_top1']:.2f} top-5 {row['val_top5']:.2f} loss {row['val_loss']:.4f}{ema} | "
        f"lr {row['lr']:.2e} | {row['img_per_s']:.0f} img/s | {row['seconds']:.1f} s"
    )


def table(history: list[dict[str, Any]]) -> str:
    """The end-of-run table, one line per epoch."""
    head = f"{'epoch':>5} {'step':>7} {'train loss':>10} {'val loss':>9} {'top-1':>6} {'top-5':>6} {'lr':>9} " \
           f"{'img/s':>7} {'sec':>6}"  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in history:
        lines.append(
            f"{r['epoch']:>5} {r['step']:>7} {r['train_loss']:>10.4f} {r['val_loss']:>9.4f} {r['val_top1']:>6.2f} "
            f"{r['val_top5']:>6.2f} {r['lr']:>9.2e} {r['img_per_s']:>7.0f} {r['seconds']:>6.1f}"
        )
    return "\n".join(lines)


class TensorBoard:
    """Thin wrapper over ``SummaryWriter`` that is a no-op on non-main ranks."""

    def __init__(self, log_dir: Path | None, purge_step: int | None = None) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events logged after the checkpoint a resumed run restarts from
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None:
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
