"""Storage format of FKD label sets and each of its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sret.errors import SReTError
from sret.fkd.storage import (FORMAT_VERSION, METADATA_FILE, LabelMeta, LabelStore, check_file_list,
                              expected_shard_bytes, record_dtype, shard_ranges, write_shard)


def make_meta(num_samples: int = 7, shard_size: int = 3, num_crops: int = 4, top_k: int = 2,
              num_classes: int = 10) -> LabelMeta:
    return LabelMeta(teacher="t", temperature=1.0, num_crops=num_crops, top_k=top_k, num_classes=num_classes,
                     num_samples=num_samples, shard_size=shard_size, seed=0, teacher_img_size=(8, 8), in_chans=3,
                     mean=(0.5,) * 3, std=(0.5,) * 3, files=[(f"c/{i}.png", 100 + i) for i in range(num_samples)])


def write_set(path: Path, meta: LabelMeta) -> dict[int, np.ndarray]:
    """A label set whose records are a known function of the sample index."""
    path.mkdir(parents=True, exist_ok=True)
    truth = {}
    for k, (start, stop) in enumerate(shard_ranges(meta.num_samples, meta.shard_size)):
        rec = np.zeros((stop - start, meta.num_crops), meta.dtype)
        for r, i in enumerate(range(start, stop)):
            rec["box"][r] = [[i, c, 5, 6] for c in range(meta.num_crops)]
            rec["flip"][r] = [(i + c) % 2 for c in range(meta.num_crops)]
            rec["idx"][r] = (np.arange(meta.top_k) + i) % meta.num_classes
            rec["prob"][r] = np.linspace(0.5, 0.1, meta.top_k) / (1 + i)
            truth[i] = rec[r].copy()
        meta.shards.append(write_shard(path, k, rec, start))
    (path / METADATA_FILE).write_bytes(meta.to_json())
    return truth


def test_record_layout_is_fixed_width_and_compact() -> None:
    assert record_dtype(5, 1000).itemsize == 16 + 1 + 2 * 5 + 2 * 5  # box, flip, int16 idx, fp16 prob
    assert record_dtype(5, 32767)["idx"].base == np.int16
    assert record_dtype(5, 32768)["idx"].base == np.int32
    assert record_dtype(5, 1000)["prob"].base == np.float16
    assert shard_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]


def test_round_trip(tmp_path: Path) -> None:
    meta = make_meta()
    truth = write_set(tmp_path / "l", meta)
    store = LabelStore(tmp_path / "l")
    assert len(store) == 7 and store.meta.shards[2].stop == 7
    for i, rec in truth.items():
        np.testing.assert_array_equal(store[i], rec)
    assert store.shard(1)["prob"].shape == (3, 4, 2)  # [samples in shard, crops, k]
    assert store.meta.files == meta.files and store.meta.version == FORMAT_VERSION
    with pytest.raises(IndexError):
        store[7]
    assert not list((tmp_path / "l").glob(".*tmp"))  # atomic writes leave no temp files


def test_store_pickles_without_maps(tmp_path: Path) -> None:
    import pickle

    write_set(tmp_path / "l", make_meta())
    store = LabelStore(tmp_path / "l")
    store[0]
    clone = pickle.loads(pickle.dumps(store))
    assert clone._maps == {}
    np.testing.assert_array_equal(clone[4], store[4])


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SReTError, match="does not exist"):
        LabelStore(tmp_path / "nope")


def test_unfinished_set_says_resume(tmp_path: Path) -> None:
    write_set(tmp_path / "l", make_meta())
    (tmp_path / "l" / METADATA_FILE).unlink()
    with pytest.raises(SReTError, match="did not finish.*resume"):
        LabelStore(tmp_path / "l")


def test_wrong_version(tmp_path: Path) -> None:
    write_set(tmp_path / "l", make_meta())
    meta_path = tmp_path / "l" / METADATA_FILE
    d = json.loads(meta_path.read_text())
    d["version"] = FORMAT_VERSION + 1
    meta_path.write_text(json.dumps(d))
    with pytest.raises(SReTError, match=f"version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        LabelStore(tmp_path / "l")
    d["format"] = "something-else"
    meta_path.write_text(json.dumps(d))
    with pytest.raises(SReTError, match="not an sret FKD label set"):
        LabelStore(tmp_path / "l")


def test_checksum_mismatch(tmp_path: Path) -> None:
    write_set(tmp_path / "l", make_meta())
    shard = tmp_path / "l" / "shard_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    with pytest.raises(SReTError, match="shard_00001.npy.*checksum"):
        LabelStore(tmp_path / "l")
    LabelStore(tmp_path / "l", verify="size")  # size-only verification does not read the data


def test_truncated_shard(tmp_path: Path) -> None:
    meta = make_meta()
    write_set(tmp_path / "l", meta)
    shard = tmp_path / "l" / "shard_00002.npy"
    assert shard.stat().st_size == expected_shard_bytes(1, meta.num_crops, meta.dtype)
    shard.write_bytes(shard.read_bytes()[:-5])
    for verify in ("full", "size"):
        with pytest.raises(SReTError, match="shard_00002.npy.*truncated"):
            LabelStore(tmp_path / "l", verify=verify)


def test_missing_shard(tmp_path: Path) -> None:
    write_set(tmp_path / "l", make_meta())
    (tmp_path / "l" / "shard_00000.npy").unlink()
    with pytest.raises(SReTError, match="shard_00000.npy.*missing"):
        LabelStore(tmp_path / "l")


def test_never_unpickles(tmp_path: Path) -> None:
    """A shard replaced by an object array (which would need pickle) is refused, not executed."""
    meta = make_meta(num_samples=3, shard_size=3)
    write_set(tmp_path / "l", meta)
    np.save(tmp_path / "l" / "shard_00000.npy", np.array([{"evil": 1}] * 12, dtype=object).reshape(3, 4),
            allow_pickle=True)
    store = LabelStore(tmp_path / "l", verify="none")
    with pytest.raises(SReTError, match="cannot read FKD shard"):
        store[0]


def test_file_list_mismatch_message() -> None:
    files = [("a/1.png", 10), ("a/2.png", 20), ("b/3.png", 30)]
    check_file_list(files, list(files))
    with pytest.raises(SReTError, match=r"label set built for 3 files, dataset has 2; first difference: sample 1: "
                                        r"labels have 'a/2.png' \(20 bytes\), dataset has 'b/3.png'"):
        check_file_list(files, [files[0], files[2]])
    with pytest.raises(SReTError, match="built for 3 files, dataset has 3; first difference: sample 2.*31 bytes"):
        check_file_list(files, files[:2] + [("b/3.png", 31)])
    with pytest.raises(SReTError, match=r"built for 3 files, dataset has 4; first difference: sample 3: labels have "
                                        r"<no file>"):
        check_file_list(files, files + [("c/4.png", 1)])
