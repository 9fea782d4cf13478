"""Readers of the prepared cache and of the training plan (docs/cache-format.md).

TypeScript writes both; this module only maps the arrays (numpy.memmap), slices them and puts
back each image's run of context tokens, which the cache leaves out. It never re-tokenizes or
re-plans.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np

from .. import integrity
from ..errors import FileProblem

IGNORE_INDEX = -100
FLAG_MULTIMODAL = 1
FLAG_TRUNCATED = 2
CACHE_VERSION = 2


class CacheFormatError(FileProblem):
    """The files on disk do not match what their manifest says."""


class _Columns(Mapping):
    """A folder's columns: sizes checked up front, each file mapped on first use.

    Mapping lazily keeps open files (each map holds a descriptor) to the columns actually
    read, which matters for mixtures of many datasets.
    """

    def __init__(self, folder: str, columns: dict, check: str | None = None, need_sums: bool = False):
        """`check`: None (sizes only), "fast" (sha256 of files whose size or mtime changed, and
        of small files) or "full" (every file hashed). `need_sums`: refuse columns without one."""
        self._specs: dict[str, tuple[str, np.dtype, int]] = {}
        self._maps: dict[str, np.ndarray] = {}
        for name, col in columns.items():
            path = os.path.join(folder, col["file"])
            dtype = np.dtype(col["dtype"])
            count = int(col["count"])
            size = os.path.getsize(path)
            if size != count * dtype.itemsize:
                raise CacheFormatError(
                    f"{path}: {size} bytes, manifest says {count} × {dtype.itemsize} = {count * dtype.itemsize}"
                )
            if check is not None:
                if "sha256" in col:
                    try:
                        integrity.check(path, col, verify=check == "full")
                    except integrity.IntegrityError as e:
                        raise CacheFormatError(f"{e} (run `tessera data prepare` again)") from None
                elif need_sums:
                    raise CacheFormatError(f"{path}: no checksum recorded (prepared by an older tessera): "
                                           "run `tessera data prepare` again")
            self._specs[name] = (path, dtype, count)

    def __getitem__(self, name: str) -> np.ndarray:
        a = self._maps.get(name)
        if a is None:
            path, dtype, count = self._specs[name]
            # np.memmap refuses empty files; an empty column is an empty array.
            a = np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
            self._maps[name] = a
        return a

    def __iter__(self):
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def count(self, name: str) -> int:
        return self._specs[name][2]


def _map_columns(folder: str, columns: dict, check: str | None = None, need_sums: bool = False) -> _Columns:
    return _Columns(folder, columns, check, need_sums)


@dataclass(frozen=True)
class ImageRef:
    """One image (or video frame) of a sample, as the planner tiled it."""

    path: str
    wh: tuple[int, int]
    cols: int
    rows: int
    thumbnail: bool
    tiles: int
    frame: int | None
    #: index in the sample's tokens of the first <IMG_CONTEXT>; tiles × tokens_per_tile follow
    context_start: int


@dataclass
class Sample:
    index: int
    input_ids: np.ndarray  # int32, context runs put back
    labels: np.ndarray  # int32
    images: list[ImageRef]
    context_starts: np.ndarray
    length: int
    learned: int
    multimodal: bool
    truncated: bool
    dataset: str
    line: int


class _Dataset:
    def __init__(self, root: str, entry: dict, check: str | None = None):
        self.name: str = entry["name"]
        #: the annotation file the samples came from (absent in older caches)
        self.annotation: str | None = entry.get("annotation")
        self.first: int = int(entry["first_sample"])
        self.count: int = int(entry["samples"])
        self.folder = os.path.join(root, entry["dir"])
        with open(os.path.join(self.folder, "dataset.json"), encoding="utf-8") as f:
            self.info = json.load(f)
        if self.info["fingerprint"] != entry["fingerprint"]:
            raise CacheFormatError(f"{self.folder}: fingerprint differs from manifest.json")
        self.cols = _map_columns(self.folder, self.info["columns"], check, need_sums=True)
        #: the id of the image context runs the stored tokens leave out (-1: no image)
        self.context_id: int = int(entry["img_context_id"])
        #: the tile budget this dataset's grids were planned with (its own max_dynamic_patch in
        #: the meta file, else the run's); None in a cache that does not record it
        budget = (self.info.get("inputs") or {}).get("tiling", {}).get("max_dynamic_patch")
        self.max_dynamic_patch: int | None = None if budget is None else int(budget)
        if self.cols.count("length") != self.count:
            raise CacheFormatError(f"{self.folder}: {self.cols.count('length')} samples, manifest says {self.count}")


class PreparedCache:
    """Random access by global sample index to what `tessera data prepare` wrote."""

    def __init__(self, path: str, check: str | None = None):
        """`check`: compare every column file with the checksum recorded when it was written
        ("fast": files whose size or mtime changed, and small files; "full": all), naming a
        file that differs. None checks sizes only (a process re-opening a checked cache)."""
        self.path = os.path.abspath(path)
        with open(os.path.join(self.path, "manifest.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != "tessera-cache" or self.manifest.get("version") != CACHE_VERSION:
            raise CacheFormatError(
                f"{self.path}: not a tessera cache of version {CACHE_VERSION}; run `tessera data prepare` again"
            )
        self.fingerprint: str = self.manifest["fingerprint"]
        self.tokens_per_tile: int = int(self.manifest["tokens_per_tile"])
        self.max_length: int = int(self.manifest["max_length"])
        self.datasets = [_Dataset(self.path, d, check) for d in self.manifest["datasets"]]
        self._firsts = np.array([d.first for d in self.datasets], dtype=np.int64)
        self._total = int(self.manifest["samples"])

    def __len__(self) -> int:
        return self._total

    def _locate(self, i: int) -> tuple[_Dataset, int]:
        if not 0 <= i < self._total:
            raise IndexError(f"sample {i} out of range [0, {self._total})")
        k = int(np.searchsorted(self._firsts, i, side="right")) - 1
        ds = self.datasets[k]
        return ds, i - ds.first

    def dataset_of(self, i: int) -> "_Dataset":
        """The dataset sample i belongs to."""
        return self._locate(i)[0]

    def origin(self, i: int) -> dict:
        """Where sample i came from: its dataset, annotation file and 1-based line."""
        ds, k = self._locate(i)
        return {"sample": int(i), "dataset": ds.name, "file": ds.annotation, "line": int(ds.cols["line"][k])}
    def dataset_index(self, i: int) -> int:
        """Which of the manifest's datasets sample i comes from."""
        self._locate(i)
        return int(np.searchsorted(self._firsts, i, side="right")) - 1

    def _column(self, name: str) -> np.ndarray:
        parts = [d.cols[name] for d in self.datasets]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Every sample's length, in global order (a copy: n × 4 bytes)."""
        return self._column("length")

    @cached_property
    def learned(self) -> np.ndarray:
        return self._column("learned")

    @cached_property
    def flags(self) -> np.ndarray:
        return self._column("flags")

    def tokens(self, i: int, start: int = 0, end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of sample i, tokens [start, end), context runs put back."""
        ds, k = self._locate(i)
        c = ds.cols
        length = int(c["length"][k])
        end = length if end is None else min(end, length)
        start = max(0, min(start, end))
        off = c["tok_offset"]
        lo, hi = int(off[k]), int(off[k + 1])
        stored_ids, stored_labels = c["input_ids"][lo:hi], c["labels"][lo:hi]
        ids = np.empty(end - start, dtype=np.int32)
        labels = np.empty(end - start, dtype=np.int32)
        # Walk the sample: stored stretches between the images' context runs.
        tpt = self.tokens_per_tile
        pos = 0  # position in the sample
        at = 0  # position in the stored values
        img_lo, img_hi = int(c["img_offset"][k]), int(c["img_offset"][k + 1])
        runs = [(int(c["img_context_start"][j]), int(c["img_tiles"][j]) * tpt) for j in range(img_lo, img_hi)]
        for run_at, run_len in runs + [(length, 0)]:
            n = run_at - pos  # stored values before this run
            a, b = max(pos, start), min(run_at, end)
            if a < b:
                ids[a - start : b - start] = stored_ids[at + a - pos : at + b - pos]
                labels[a - start : b - start] = stored_labels[at + a - pos : at + b - pos]
            at += n
            pos = run_at
            a, b = max(pos, start), min(pos + run_len, end)
            if a < b:
                ids[a - start : b - start] = ds.context_id
                labels[a - start : b - start] = IGNORE_INDEX
            pos += run_len
        if at != hi - lo:
            raise CacheFormatError(f"{ds.folder}: sample {k} stores {hi - lo} tokens, its images leave {at}")
        return ids, labels

    def images(self, i: int) -> list[ImageRef]:
        ds, k = self._locate(i)
        c = ds.cols
        lo, hi = int(c["img_offset"][k]), int(c["img_offset"][k + 1])
        out = []
        paths = c["img_paths"]
        poff = c["img_path_offset"]
        for j in range(lo, hi):
            frame = int(c["img_frame"][j])
            out.append(
                ImageRef(
                    path=bytes(paths[int(poff[j]) : int(poff[j + 1])]).decode("utf-8"),
                    wh=(int(c["img_w"][j]), int(c["img_h"][j])),
                    cols=int(c["img_cols"][j]),
                    rows=int(c["img_rows"][j]),
                    thumbnail=bool(c["img_thumbnail"][j]),
                    tiles=int(c["img_tiles"][j]),
                    frame=None if frame < 0 else frame,
                    context_start=int(c["img_context_start"][j]),
                )
            )
        return out

    def sample(self, i: int) -> Sample:
        ds, k = self._locate(i)
        c = ds.cols
        ids, labels = self.tokens(i)
        images = self.images(i)
        flags = int(c["flags"][k])
        return Sample(
            index=i,
            input_ids=ids,
            labels=labels,
            images=images,
            context_starts=np.array([im.context_start for im in images], dtype=np.int32),
            length=int(c["length"][k]),
            learned=int(c["learned"][k]),
            multimodal=bool(flags & FLAG_MULTIMODAL),
            truncated=bool(flags & FLAG_TRUNCATED),
            dataset=ds.name,
            line=int(c["line"][k]),
        )

    def pack(self, row: "Row") -> "PackedRow":
        """Concatenate a row's pieces into one packed sequence (copies the tokens once)."""
        n = row.tokens
        ids = np.empty(n, dtype=np.int32)
        labels = np.empty(n, dtype=np.int32)
        pos = np.empty(n, dtype=np.int32)
        images: list[PackedImage] = []
        at = 0
        for s, start, length in zip(row.samples.tolist(), row.starts.tolist(), row.lengths.tolist()):
            a, b = self.tokens(s, start, start + length)
            ids[at : at + length] = a
            labels[at : at + length] = b
            pos[at : at + length] = np.arange(length, dtype=np.int32)
            for im in self.images(s):
                # Context tokens of this image, clipped to the piece [start, start+length).
                lo = max(im.context_start, start)
                hi = min(im.context_start + im.tiles * self.tokens_per_tile, start + length)
                if lo < hi:
                    images.append(
                        PackedImage(
                            image=im,
                            sample=s,
                            row_start=at + lo - start,
                            token_lo=lo - im.context_start,
                            token_hi=hi - im.context_start,
                        )
                    )
            at += length
        return PackedRow(input_ids=ids, labels=labels, position_ids=pos, cu_seqlens=row.cu_seqlens, images=images)


@dataclass(frozen=True)
class PackedImage:
    image: ImageRef
    sample: int
    #: where in the packed row this image's first used context token sits
    row_start: int
    #: which of the image's tiles × tokens_per_tile context tokens the row uses: [token_lo, token_hi)
    #: (all of them unless concat packing split the sample inside the image)
    token_lo: int
    token_hi: int


@dataclass
class PackedRow:
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    cu_seqlens: np.ndarray
    images: list[PackedImage]


@dataclass
class Row:
    """One row of a micro-batch: with packing a packed sequence of pieces, without one sample."""

    index: int
    samples: np.ndarray  # global sample indices, in order
    starts: np.ndarray  # token offset of each piece within its sample (0 unless split)
    lengths: np.ndarray  # tokens of each piece
    learned: np.ndarray  # learned tokens of each piece
    tokens: int
    tiles: int

    @property
    def cu_seqlens(self) -> np.ndarray:
        cu = np.zeros(len(self.lengths) + 1, dtype=np.int32)
        np.cumsum(self.lengths, out=cu[1:])
        return cu

    @property
    def learned_tokens(self) -> int:
        return int(self.learned.sum())


@dataclass
class MicroBatch:
    """One micro-batch of one rank: `micro_batch_size` rows (fewer only in a short last step)."""

    index: int
    rows: list[Row]
    tokens: int
    tiles: int
    learned_tokens: int

    @property
    def empty(self) -> bool:
        return not self.rows

    @property
    def samples(self) -> np.ndarray:
        """Sample indices of every piece of every row, in order."""
        return np.concatenate([r.samples for r in self.rows]) if self.rows else np.zeros(0, np.int32)


@dataclass(frozen=True)
class RowShards:
    """A row cut into equal shards: shard k holds tokens [k·S, (k+1)·S), S = padded / shards."""

    padded: int
    tokens: list[int]  # real tokens per shard (the padding is at the row's end)
    learned: list[int]  # targets predicted from each shard's positions
    tiles: list[int]  # tiles each shard's rank runs

    @property
    def shard_len(self) -> int:
        return self.padded // len(self.tokens)


@dataclass(frozen=True)
class StepTotals:
    """Totals over all ranks and micro-batches of one step: loss denominators."""

    tokens: int
    learned_tokens: int  # `token` reduction
    samples: int
    learned_samples: int  # `sample` reduction: pieces with ≥ 1 learned token
    sqrt_learned: float  # `square` reduction: Σ √n over pieces

    def square_weight(self, n_learned: int) -> float:
        """Weight of each learned token of a piece with n learned tokens (weights sum to 1)."""
        return 0.0 if n_learned == 0 or self.sqrt_learned == 0 else 1.0 / (math.sqrt(n_learned) * self.sqrt_learned)


class TrainingPlan:
    """The micro-batches of every (epoch, step, rank), as `writePlan` wrote them."""

    def __init__(self, path: str, cache: PreparedCache | None = None):
        self.path = os.path.abspath(path)
        with open(os.path.join(self.path, "plan.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        m = self.manifest
        if m.get("format") != "tessera-plan" or m.get("version") != 1:
            raise CacheFormatError(f"{self.path}: not a tessera plan of version 1")
        if cache is not None and cache.fingerprint != m["cache_fingerprint"]:
            raise CacheFormatError(
                f"{self.path}: planned for cache {m['cache_fingerprint'][:12]}, "
                f"but the cache is {cache.fingerprint[:12]}: run `tessera data plan` again"
            )
        self.fingerprint: str = m["fingerprint"]
        self.cache_fingerprint: str = m["cache_fingerprint"]
        self.world_size: int = int(m["world_size"])
        self.micro_batches_per_step: int = int(m["micro_batches_per_step"])
        self.epochs: int = int(m["epochs"])
        self.epoch_steps: list[int] = [int(x) for x in m["epoch_steps"]]
        self.epoch_first_step: list[int] = [int(x) for x in m["epoch_first_step"]]
        self.total_steps: int = int(m["total_steps"])
        self.options: dict = m["options"]
        self.pack_max_length: int | None = self.options.get("pack_max_length")
        self.stats: dict = m.get("stats", {})
        self.cols = _map_columns(self.path, m["columns"])
        # Sequence parallelism: each row is cut over sp_size × ring_size ranks (cp_size), so rows
        # are dealt to world_size / cp_size data-parallel ranks.
        self.sp_size: int = int(self.options.get("sp_size") or 1)
        self.ring_size: int = int(self.options.get("ring_size") or 1)
        self.cp_size: int = self.sp_size * self.ring_size
        if self.world_size % self.cp_size:
            raise CacheFormatError(f"{self.path}: sp_size × ring_size = {self.cp_size} does not divide "
                                   f"world_size {self.world_size}")
        self.dp_size: int = self.world_size // self.cp_size
        if self.cp_size > 1 and "shard_tokens" not in self.cols:
            raise CacheFormatError(f"{self.path}: planned with sequence parallelism but has no shard columns")
        expect = self.total_steps * self.dp_size * self.micro_batches_per_step + 1
        if self.cols.count("mb_offset") != expect:
            raise CacheFormatError(f"{self.path}: mb_offset has {self.cols.count('mb_offset')} entries, expected {expect}")

    _HEADER_KEYS = (
        "format", "version", "cache_fingerprint", "world_size", "micro_batches_per_step", "epochs",
        "epoch_steps", "epoch_first_step", "total_steps", "options",
    )

    def compute_fingerprint(self) -> str:
        """Recompute the fingerprint from the files, exactly as the planner computed it."""
        h = hashlib.sha256()
        header = {k: self.manifest[k] for k in self._HEADER_KEYS}
        h.update(json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        for name, col in self.manifest["columns"].items():
            h.update(name.encode("utf-8"))
            with open(os.path.join(self.path, col["file"]), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
        return h.hexdigest()

    def verify(self) -> str:
        """Check that the files are the plan plan.json names; returns its fingerprint.

        Each rank calls this, then compares fingerprints with the others (all ranks must agree).
        """
        got = self.compute_fingerprint()
        if got != self.fingerprint:
            raise CacheFormatError(f"{self.path}: files hash to {got[:12]}, plan.json says {self.fingerprint[:12]}")
        return got

    @property
    def gradient_accumulation(self) -> int:
        return self.micro_batches_per_step

    @property
    def steps_per_epoch(self) -> list[int]:
        return self.epoch_steps

    def global_step(self, epoch: int, step: int) -> int:
        if not 0 <= epoch < self.epochs or not 0 <= step < self.epoch_steps[epoch]:
            raise IndexError(f"(epoch {epoch}, step {step}) is not in the plan")
        return self.epoch_first_step[epoch] + step

    def position(self, g: int) -> tuple[int, int]:
        """(epoch, step) of global step g."""
        if not 0 <= g < self.total_steps:
            raise IndexError(f"global step {g} out of range [0, {self.total_steps})")
        e = int(np.searchsorted(np.asarray(self.epoch_first_step), g, side="right")) - 1
        return e, g - self.epoch_first_step[e]

    def row(self, index: int) -> Row:
        c = self.cols
        lo, hi = int(c["row_offset"][index]), int(c["row_offset"][index + 1])
        return Row(
            index=index,
            samples=np.asarray(c["piece_sample"][lo:hi]),
            starts=np.asarray(c["piece_start"][lo:hi]),
            lengths=np.asarray(c["piece_length"][lo:hi]),
            learned=np.asarray(c["piece_learned"][lo:hi]),
            tokens=int(c["row_tokens"][index]),
            tiles=int(c["row_tiles"][index]),
        )

    def micro_batch(self, index: int) -> MicroBatch:
        c = self.cols
        lo, hi = int(c["mb_offset"][index]), int(c["mb_offset"][index + 1])
        return MicroBatch(
            index=index,
            rows=[self.row(k) for k in range(lo, hi)],
            tokens=int(c["mb_tokens"][index]),
            tiles=int(c["mb_tiles"][index]),
            learned_tokens=int(c["mb_learned"][index]),
        )

    def row_shards(self, index: int) -> RowShards:
        """How row `index` is cut over the cp_size ranks of its group (sequence parallelism)."""
        c, n = self.cols, self.cp_size
        return RowShards(
            padded=int(c["row_padded"][index]),
            tokens=[int(x) for x in c["shard_tokens"][index * n:(index + 1) * n]],
            learned=[int(x) for x in c["shard_learned"][index * n:(index + 1) * n]],
            tiles=[int(x) for x in c["shard_tiles"][index * n:(index + 1) * n]],
        )

    def micro_batches(self, rank: int, epoch: int, step: int) -> list[MicroBatch]:
        """`rank` is the data-parallel rank (the rank itself without sequence parallelism)."""
        if not 0 <= rank < self.dp_size:
            raise IndexError(f"data-parallel rank {rank} out of range [0, {self.dp_size})")
        g = self.global_step(epoch, step)
        a = self.micro_batches_per_step
        base = (g * self.dp_size + rank) * a
        return [self.micro_batch(base + k) for k in range(a)]

    def step_totals(self, epoch: int, step: int) -> StepTotals:
        g = self.global_step(epoch, step)
        c = self.cols
        return StepTotals(
            tokens=int(c["step_tokens"][g]),
            learned_tokens=int(c["step_learned"][g]),
            samples=int(c["step_samples"][g]),
            learned_samples=int(c["step_learned_samples"][g]),
            sqrt_learned=float(c["step_sqrt_learned"][g]),
        )

    def iter_steps(
        self, rank: int, start_epoch: int = 0, start_step: int = 0
    ) -> Iterator[tuple[int, int, list[MicroBatch]]]:
        """(epoch, step, micro-batches of `rank`) from (start_epoch, start_step) to the end."""
        g0 = self.global_step(start_epoch, start_step) if self.total_steps else 0
        for g in range(g0, self.total_steps):
            e, s = self.position(g)
            yield e, s, self.micro_batches(rank, e, s)
