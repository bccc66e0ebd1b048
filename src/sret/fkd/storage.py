"""On-disk format of an FKD label set: fixed-width sharded numpy arrays plus one metadata JSON.

Why this layout: FKD stores hundreds of crops per training image (500 in the published recipe), so one pickle per
image (the original release) means a million small files, slow listing, and arbitrary code execution on load. Here
every crop is a fixed-width record, so a shard is one flat ``.npy`` file that can be memory-mapped and indexed by
sample without parsing anything, and loading uses ``np.load(allow_pickle=False)`` only.

Layout of a label directory::

    LABELS/
      metadata.json           format version, teacher, temperature, crop params, top-k, dataset file list, shards
      shard_00000.npy         samples [start, stop) of shard 0, structured array of shape [n, num_crops]
      shard_00000.json        sidecar written after the shard (its sha256); lets a killed run resume
      ...

Each shard is a structured numpy array of shape ``[num_samples_in_shard, num_crops]`` with the fields

- ``box``  ``int32[4]``: crop ``(i, j, h, w)`` (top, left, height, width) in original-image pixels,
- ``flip`` ``uint8``: 1 when the crop was horizontally flipped,
- ``idx``  ``int16[k]`` (``int32[k]`` when ``num_classes > 32767``): teacher top-k class indices, most likely first,
- ``prob`` ``float16[k]``: the matching teacher probabilities ``softmax(logits / T)``.

so ``shard["prob"]`` is the ``[n, num_crops, k]`` fp16 array etc. With k = 5 a crop takes 37 bytes; 500 crops per
image ~18.5 kB per image (ImageNet-1k: ~24 GB).

Writes are atomic (temp file in the same directory, fsync, ``os.replace``), so a shard or the metadata is either the
old complete file or the new complete file, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sret.errors import SReTError

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "METADATA_FILE", "LabelMeta", "ShardInfo", "LabelStore", "record_dtype",
    "shard_name", "shard_ranges", "atomic_write_bytes", "write_shard", "sha256_file", "expected_shard_bytes",
    "check_file_list",
]

FORMAT_NAME = "sret-fkd-labels"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
INT16_MAX_CLASSES = 32767


def record_dtype(top_k: int, num_classes: int) -> np.dtype:
    """The fixed-width record of one crop. Packed (no padding) so a crop costs exactly 17 + 4k bytes at k <= 32767."""
    idx_type = "<i2" if num_classes <= INT16_MAX_CLASSES else "<i4"
    return np.dtype([("box", "<i4", (4,)), ("flip", "u1"), ("idx", idx_type, (top_k,)), ("prob", "<f2", (top_k,))])


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.npy"


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` sample ranges; the last shard may be shorter."""
    if shard_size < 1:
        raise SReTError(f"shard size must be >= 1, got {shard_size}")
    return [(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


def _npy_header_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Size of the ``.npy`` header numpy writes for this array (computed, not guessed, via numpy's own writer)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                               "shape": shape})
    return buf.tell()


def expected_shard_bytes(num_samples: int, num_crops: int, dtype: np.dtype) -> int:
    """Exact file size of a complete shard; a shorter file is a truncated one."""
    return _npy_header_bytes(dtype, (num_samples, num_crops)) + num_samples * num_crops * dtype.itemsize


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers (and a resumed run) never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_shard(directory: str | os.PathLike, index: int, records: np.ndarray, start: int) -> "ShardInfo":
    """Atomically write shard ``index`` (samples ``[start, start + len(records))``) and its sidecar JSON.

    The sidecar is written after the shard, so "sidecar present and checksum matches" means the shard is finished.
    """
    directory = Path(directory)
    path = directory / shard_name(index)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array(f, np.ascontiguousarray(records), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    info = ShardInfo(file=path.name, start=start, stop=start + len(records), sha256=digest,
                     bytes=path.stat().st_size)
    atomic_write_bytes(directory / (path.stem + ".json"), json.dumps(asdict(info)).encode())
    return info


@dataclass
class ShardInfo:
    """Where one shard lives, which samples it holds, and its checksum."""

    file: str
    start: int
    stop: int
    sha256: str
    bytes: int


@dataclass
class LabelMeta:
    """Everything needed to interpret (and to refuse) a label set. Serialised as ``metadata.json``."""

    teacher: str
    temperature: float
    num_crops: int
    top_k: int
    num_classes: int
    num_samples: int
    shard_size: int
    seed: int
    teacher_img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    scale: tuple[float, float] = (0.08, 0.936)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    teacher_checkpoint: str | None = None
    files: list[tuple[str, int]] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def dtype(self) -> np.dtype:
        return record_dtype(self.top_k, self.num_classes)

    def generation_key(self) -> dict[str, Any]:
        """The fields that must match for a resumed run to continue this one (everything that changes the labels)."""
        d = self.to_dict()
        for k in ("shards", "stats"):
            d.pop(k)
        return d

    def to_json(self) -> bytes:
        """One top-level key per line, values compact: readable, and small even with a million-entry file list."""
        d = self.to_dict()
        lines = [f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in d.items()]
        return ("{\n" + ",\n".join(lines) + "\n}\n").encode()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["teacher_img_size"] = list(self.teacher_img_size)
        d["files"] = [[str(n), int(s)] for n, s in self.files]
        return json.loads(json.dumps(d))  # normalise tuples -> lists so comparisons with loaded JSON are exact

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "metadata") -> "LabelMeta":
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            found = d.get("format") if isinstance(d, dict) else None
            raise SReTError(f"{where} is not an sret FKD label set (format {found!r}, expected {FORMAT_NAME!r})")
        if d.get("version") != FORMAT_VERSION:
            raise SReTError(f"{where} has FKD label format version {d.get('version')!r}; this sret reads version "
                            f"{FORMAT_VERSION}. Regenerate the labels with `sret fkd-label` or use a matching sret.")
        d = dict(d)
        try:
            d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
            d["files"] = [(str(n), int(s)) for n, s in d.get("files", [])]
            for k in ("teacher_img_size", "mean", "std", "scale", "ratio"):
                d[k] = tuple(d[k])
            return cls(**d)
        except (TypeError, KeyError, ValueError) as err:
            raise SReTError(f"{where} is malformed: {err}") from None


def check_file_list(expected: Sequence[tuple[str, int]], actual: Sequence[tuple[str, int]]) -> None:
    """Refuse a label set whose file list (relative path, size in bytes) no longer matches the dataset.

    Labels are indexed by sample position, so one added, removed or renamed file silently shifts every following
    label onto the wrong image; this check is what makes that impossible.
    """
    expected = [(str(n), int(s)) for n, s in expected]
    actual = [(str(n), int(s)) for n, s in actual]
    if expected == actual:
        return
    first = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))

    def show(lst: Sequence[tuple[str, int]]) -> str:
        return f"{lst[first][0]!r} ({lst[first][1]} bytes)" if first < len(lst) else "<no file>"

    raise SReTError(f"label set built for {len(expected)} files, dataset has {len(actual)}; first difference: "
                    f"sample {first}: labels have {show(expected)}, dataset has {show(actual)}. "
                    "Regenerate the labels for this dataset with `sret fkd-label`.")


class LabelStore:
    """Read-only access to a finished label set: ``store[i]`` is the ``[num_crops]`` record array of sample ``i``.

    Shards are memory-mapped lazily (on first access in each process), so the store is cheap to pickle into
    DataLoader workers: only paths and metadata travel, each worker opens its own maps.

    Args:
        path: the label directory written by ``sret fkd-label``.
        verify: ``"full"`` checks every shard's sha256 (reads the whole set once; done in the main process before
            workers fork), ``"size"`` only checks exact file sizes (catches truncation, instant), ``"none"`` nothing.
    """

    def __init__(self, path: str | os.PathLike, verify: str = "full") -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise SReTError(f"FKD label directory {str(self.path)!r} does not exist; create it with `sret fkd-label`")
        meta_path = self.path / METADATA_FILE
        if not meta_path.is_file():
            sidecars = sorted(self.path.glob("shard_*.json"))
            hint = (f" ({len(sidecars)} finished shards found: generation did not finish; rerun the same "
                    "`sret fkd-label` command to resume)") if sidecars else ""
            raise SReTError(f"{str(meta_path)!r} is missing: not a finished FKD label set{hint}")
        try:
            raw = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SReTError(f"cannot read {str(meta_path)!r}: {err}") from None
        self.meta = LabelMeta.from_dict(raw, where=str(meta_path))
        self.dtype = self.meta.dtype
        self._starts = np.array([s.start for s in self.meta.shards], dtype=np.int64)
        covered = sum(s.stop - s.start for s in self.meta.shards)
        if covered != self.meta.num_samples:
            raise SReTError(f"{str(meta_path)!r} is malformed: shards cover {covered} samples, expected "
                            f"{self.meta.num_samples}")
        self._maps: dict[int, np.ndarray] = {}
        if verify not in ("full", "size", "none"):
            raise ValueError(f"verify must be 'full', 'size' or 'none', got {verify!r}")
        if verify != "none":
            for k in range(len(self.meta.shards)):
                self.check_shard(k, checksum=verify == "full")

    def __len__(self) -> int:
        return self.meta.num_samples

    def check_shard(self, k: int, checksum: bool = True) -> None:
        """Raise :class:`SReTError` if shard ``k`` is missing, truncated or does not match its recorded checksum."""
        info = self.meta.shards[k]
        path = self.path / info.file
        if not path.is_file():
            raise SReTError(f"FKD shard {str(path)!r} is missing (samples {info.start}-{info.stop - 1})")
        expected = expected_shard_bytes(info.stop - info.start, self.meta.num_crops, self.dtype)
        size = path.stat().st_size
        if size != expected:
            raise SReTError(f"FKD shard {str(path)!r} is truncated or damaged: {size} bytes, expected {expected}; "
                            "regenerate it (rerun `sret fkd-label` on the same output resumes)")
        if checksum and sha256_file(path) != info.sha256:
            raise SReTError(f"FKD shard {str(path)!r} fails its checksum (sha256 differs from metadata.json): the file "
                            "was modified or corrupted; delete it and rerun `sret fkd-label` on the same output")

    def shard(self, k: int) -> np.ndarray:
        """Memory-mapped structured array ``[n, num_crops]`` of shard ``k``; loaded without pickle."""
        arr = self._maps.get(k)
        if arr is None:
            info = self.meta.shards[k]
            try:
                arr = np.load(self.path / info.file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise SReTError(f"cannot read FKD shard {str(self.path / info.file)!r}: {err}") from None
            if arr.dtype != self.dtype or arr.shape != (info.stop - info.start, self.meta.num_crops):
                raise SReTError(f"FKD shard {str(self.path / info.file)!r} has dtype/shape {arr.dtype}/{arr.shape}, "
                                f"expected {self.dtype}/{(info.stop - info.start, self.meta.num_crops)}")
            self._maps[k] = arr
        return arr

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.meta.num_samples:
            raise IndexError(f"sample {index} out of range for {self.meta.num_samples} labelled samples")
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        return np.array(self.shard(k)[index - self.meta.shards[k].start])  # copy out of the map

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are per process
        return state
