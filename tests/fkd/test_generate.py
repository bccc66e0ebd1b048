"""Label generation end to end: round trip generate -> replay, determinism, resume of a killed run, CLI errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import NUM_CLASSES, TEACHER_SIZE, label_args, load_teacher, make_image_folder
from sret.cli import main
from sret.errors import SReTError
from sret.fkd import FKDReplayDataset, LabelStore, build_fkd_train_loader, sample_crops
from sret.fkd.dataset import open_image_dataset


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, teacher_ckpt: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gen")
    data = make_image_folder(root / "data")
    assert main(label_args(data, root / "labels", teacher_ckpt)) == 0
    return data, root / "labels"


def test_metadata_describes_the_run(generated: tuple[Path, Path], teacher_ckpt: Path) -> None:
    data, labels = generated
    store = LabelStore(labels)
    m = store.meta
    assert (m.num_samples, m.num_crops, m.top_k, m.num_classes, m.seed) == (12, 6, 3, NUM_CLASSES, 7)
    assert m.teacher == "test_byobnet" and m.teacher_checkpoint == str(teacher_ckpt.resolve())
    assert m.teacher_img_size == (TEACHER_SIZE, TEACHER_SIZE) and m.scale == (0.08, 0.936) and m.flip_p == 0.5
    assert [s.stop - s.start for s in m.shards] == [5, 5, 2]
    assert m.files[0] == ("class_0/img_0.png", (data / "train/class_0/img_0.png").stat().st_size)
    assert m.stats["bytes_per_image"] > 6 * (17 + 4 * 3) and m.stats["images_per_s"] > 0
    assert store.shard(0)["idx"].dtype == np.int16 and store.shard(0)["prob"].dtype == np.float16


def test_boxes_are_the_seeded_draw(generated: tuple[Path, Path]) -> None:
    """Same seed, same crops: stored boxes equal a fresh draw from (seed + index), and other seeds differ."""
    data, labels = generated
    store, base = LabelStore(labels), open_image_dataset(str(data))
    for i in (0, 7, 11):
        image = base[i][0].convert("RGB")
        boxes, flips = sample_crops(image, 6, 7, i)
        np.testing.assert_array_equal(store[i]["box"], boxes)
        np.testing.assert_array_equal(store[i]["flip"], flips)
        again = sample_crops(image, 6, 7, i)
        np.testing.assert_array_equal(again[0], boxes)
        assert not np.array_equal(sample_crops(image, 6, 8, i)[0], boxes)
        i_, j_, h_, w_ = boxes.T
        assert (i_ >= 0).all() and (i_ + h_ <= image.height).all() and (j_ + w_ <= image.width).all()


def test_round_trip_replay_reproduces_teacher(generated: tuple[Path, Path], teacher_ckpt: Path) -> None:
    """Replaying every stored crop at the teacher's size and running the teacher gives the stored top-k back."""
    data, labels = generated
    store = LabelStore(labels)
    m = store.meta
    ds = FKDReplayDataset(open_image_dataset(str(data)), labels, num_crops=6, img_size=TEACHER_SIZE, mean=m.mean,
                          std=m.std, in_chans=3, seed=1)
    teacher = load_teacher(teacher_ckpt)
    worst = 0.0
    for i in range(len(ds)):
        crops, idx, prob = ds[i]
        assert crops.shape == (6, 3, TEACHER_SIZE, TEACHER_SIZE) and idx.shape == prob.shape == (6, 3)
        with torch.no_grad():
            p = torch.softmax(teacher(crops).double() / m.temperature, -1)
        stored = torch.from_numpy(store[i]["prob"].astype(np.float64))
        np.testing.assert_array_equal(idx.numpy(), store[i]["idx"])  # all 6 crops replayed, in stored order
        # the teacher's probabilities at the stored classes equal the stored fp16 values within fp16 rounding
        torch.testing.assert_close(p.gather(1, idx), stored, rtol=2 ** -10, atol=1e-4)
        top = p.topk(3, -1)
        gap_ok = (top.values[:, :-1] - top.values[:, 1:]).min() > 1e-3
        if gap_ok:
            np.testing.assert_array_equal(top.indices.numpy(), idx.numpy())
        worst = max(worst, (p.gather(1, idx) - stored).abs().max().item())
    assert worst < 1e-3


def test_crop_choice_is_reproducible(generated: tuple[Path, Path]) -> None:
    data, labels = generated
    base = open_image_dataset(str(data))
    a = FKDReplayDataset(base, labels, num_crops=2, img_size=16, seed=3, verify="size")
    b = FKDReplayDataset(base, labels, num_crops=2, img_size=16, seed=3, verify="none")
    draws = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        draws.append([tuple(a.crop_choice(i)) for i in range(len(a))])
        assert draws[-1] == [tuple(b.crop_choice(i)) for i in range(len(b))]
        torch.testing.assert_close(a[4][0], b[4][0])
    assert draws[0] != draws[1] != draws[2]
    assert all(len(set(c)) == 2 for c in draws[0])


def test_train_loader(generated: tuple[Path, Path]) -> None:
    data, labels = generated
    fkd = build_fkd_train_loader(open_image_dataset(str(data)), labels, batch_size=8, num_crops=4, img_size=16,
                                 in_chans=1, seed=0, workers=1)
    assert fkd.num_classes == NUM_CLASSES
    fkd.set_epoch(0)
    batches = list(fkd.loader)
    assert len(batches) == 6 and batches[0][0].shape == (8, 1, 16, 16)
    assert batches[0][1].shape == batches[0][2].shape == (8, 3) and batches[0][1].dtype == torch.int64
    fkd.set_epoch(0)
    again = list(fkd.loader)  # persistent workers see the epoch; same epoch, same batches
    torch.testing.assert_close(batches[0][0], again[0][0])
    fkd.set_epoch(1)
    assert not torch.equal(list(fkd.loader)[0][0], batches[0][0])


def test_replay_refuses_changed_dataset(generated: tuple[Path, Path], tmp_path: Path) -> None:
    data, labels = generated
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    Image.new("RGB", (40, 40)).save(copy / "train" / "class_0" / "img_0a.png")
    with pytest.raises(SReTError, match="built for 12 files, dataset has 13; first difference: sample 1: labels "
                                        "have 'class_0/img_1.png'"):
        FKDReplayDataset(open_image_dataset(str(copy)), labels, num_crops=2, img_size=16)
    with pytest.raises(SReTError, match="between 1 and the 6 crops"):
        FKDReplayDataset(open_image_dataset(str(data)), labels, num_crops=7, img_size=16)


def shard_state(labels: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(labels.glob("shard_*"))}


def test_resume_redoes_only_damaged_shards(generated: tuple[Path, Path], teacher_ckpt: Path, tmp_path: Path) -> None:
    data, labels = generated
    partial = tmp_path / "labels"
    shutil.copytree(labels, partial)
    (partial / "metadata.json").unlink()  # as if killed before the end
    (partial / "shard_00001.npy").write_bytes((partial / "shard_00001.npy").read_bytes()[:100])  # torn shard
    (partial / "shard_00002.npy").unlink()
    (partial / "shard_00002.json").unlink()
    before = shard_state(partial)
    assert main(label_args(data, partial, teacher_ckpt)) == 0
    after = shard_state(partial)
    assert after["shard_00000.npy"][:2] == before["shard_00000.npy"][:2]  # finished shard not rewritten
    assert after["shard_00001.npy"][:2] != before["shard_00001.npy"][:2]
    for name, (_, _, content) in shard_state(labels).items():
        assert after[name][2] == content, name  # identical to the uninterrupted run
    LabelStore(partial)


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory, teacher_ckpt: Path) -> tuple[Path, Path, list[str]]:
    """40 images x 60 crops in 8 shards: long enough (a few seconds) to be killed between shards."""
    root = tmp_path_factory.mktemp("larger")
    data = make_image_folder(root / "data", classes=4, per_class=10, seed=1)
    extra = ["--num-crops", "60", "--batch-size", "120"]
    assert main(label_args(data, root / "labels", teacher_ckpt, *extra)) == 0
    return data, root / "labels", extra


def test_killed_run_resumes_to_the_same_labels(larger: tuple[Path, Path, list[str]], teacher_ckpt: Path,
                                               tmp_path: Path) -> None:
    """SIGKILL a real generation after its first shard, rerun, and get byte-identical shards."""
    data, labels, extra = larger
    out = tmp_path / "labels"
    args = label_args(data, out, teacher_ckpt, *extra)
    proc = subprocess.Popen([sys.executable, "-m", "sret", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while not (out / "shard_00000.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metadata.json").exists(), "run finished before it could be killed"
    done_before = sorted(p.name for p in out.glob("shard_*.json"))
    assert done_before, proc.stderr.read().decode()
    assert len(done_before) < 8
    kept = {n: (out / n.replace(".json", ".npy")).stat().st_mtime_ns for n in done_before}
    assert main(args) == 0
    for n, mtime in kept.items():
        assert (out / n.replace(".json", ".npy")).stat().st_mtime_ns == mtime, f"{n} was redone"
    for name, (_, _, content) in shard_state(labels).items():
        assert (out / name).read_bytes() == content, name
    assert LabelStore(out).meta.shards == LabelStore(labels).meta.shards


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(larger: tuple[Path, Path, list[str]], teacher_ckpt: Path,
                                                 tmp_path: Path) -> None:
    """Two gloo ranks split the shards (r, r + W, ...) and produce the single-process label set byte for byte."""
    data, labels, extra = larger
    out = tmp_path / "labels"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sret",
           *label_args(data, out, teacher_ckpt, *extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 rank(s)" in res.stdout and "bytes/image" in res.stdout
    for name, (_, _, content) in shard_state(labels).items():
        assert (out / name).read_bytes() == content, name
    assert LabelStore(out).meta.shards == LabelStore(labels).meta.shards


def test_other_settings_refused(generated: tuple[Path, Path], teacher_ckpt: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    data, labels = generated
    out = tmp_path / "labels"
    shutil.copytree(labels, out)
    assert main(label_args(data, out, teacher_ckpt, "--top-k", "2")) == 2
    assert "other settings (top_k: 3 there vs 2 now)" in capsys.readouterr().err
    assert main(label_args(data, out, teacher_ckpt)) == 0  # same settings: nothing to do
    assert "nothing left to do" in capsys.readouterr().out


@pytest.mark.parametrize("change,message", [
    (["--teacher", "no_such_model_xyz"], "unknown teacher model"),
    (["--teacher-model", ""], "give its architecture with --teacher-model"),
    (["--data", "/nonexistent/data"], "data folder not found"),
    (["--top-k", "11"], "exceeds the teacher's 10 classes"),
    (["--num-crops", "0"], "--num-crops must be >= 1"),
    (["--teacher", "/nonexistent/ckpt.pth"], "does not exist"),
])
def test_cli_errors(image_folder: Path, teacher_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    change: list[str], message: str) -> None:
    assert main(label_args(image_folder, tmp_path / "l", teacher_ckpt, *change)) == 2
    assert message in capsys.readouterr().err


def test_grey_teacher_and_named_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "grey", classes=2, per_class=2, grey=True)
    args = ["fkd-label", "--teacher", "test_byobnet", "--no-pretrained", "--num-classes", "4", "--in-chans", "1",
            "--data", str(data), "--output", str(tmp_path / "l"), "--num-crops", "3", "--top-k", "2",
            "--teacher-img-size", "24", "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "bytes/image" in out and "images/s" in out
    m = LabelStore(tmp_path / "l").meta
    assert m.in_chans == 1 and len(m.mean) == 1 and m.num_classes == 4 and m.teacher_checkpoint is None
    ds = FKDReplayDataset(open_image_dataset(str(data)), tmp_path / "l", num_crops=2, img_size=20, in_chans=1)
    assert ds[0][0].shape == (2, 1, 20, 20)


def test_unreadable_image_gets_no_labels_and_is_skipped(tmp_path: Path, teacher_ckpt: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=2)
    (data / "train" / "class_1" / "img_0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(label_args(data, tmp_path / "l", teacher_ckpt)) == 0
    assert "1 unreadable image(s)" in capsys.readouterr().out
    store = LabelStore(tmp_path / "l")
    assert not store[2]["prob"].any() and store[0]["prob"].any()
    fkd = build_fkd_train_loader(open_image_dataset(str(data)), tmp_path / "l", batch_size=8, num_crops=2,
                                 img_size=16, workers=0, drop_last=False)
    fkd.set_epoch(0)
    rows = sum(x.shape[0] for x, _, _ in fkd.loader)
    assert rows == 3 * 2  # 4 images, one dropped, 2 crops each


def test_in_memory_dataset_file_list() -> None:
    from sret.fkd.dataset import dataset_file_list

    ds = open_image_dataset("sample")
    files = dataset_file_list(ds)
    assert len(files) == len(ds) and files[3] == ("#3", 28 * 28)


def test_training_checkpoint_teacher_keeps_its_size_and_normalisation(tmp_path: Path) -> None:
    """An `sret train` checkpoint trained at 64 px is fed 64 px crops, not its architecture's default 224."""
    from sret.fkd.teacher import build_teacher, teacher_data_config
    from sret.models import create_model
    from sret.train.checkpoint import atomic_save

    model = create_model("sret_t", num_classes=NUM_CLASSES, in_chans=1, img_size=64)
    config = {"img_size": 64, "in_chans": 1, "data_mean": [0.25], "data_std": [0.5], "model": "sret_t"}
    path = tmp_path / "best.pth"
    atomic_save({"model": model.state_dict(), "config": config}, path)
    teacher, name, _ = build_teacher(str(path), "sret_t")
    cfg = teacher_data_config(teacher)
    assert name == "sret_t" and cfg.img_size == (64, 64) and cfg.in_chans == 1
    assert cfg.mean == (0.25,) and cfg.std == (0.5,)
    with torch.no_grad():
        assert teacher(torch.zeros(1, 1, *cfg.img_size)).shape == (1, NUM_CLASSES)
