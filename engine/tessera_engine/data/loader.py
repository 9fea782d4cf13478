"""The training data loader: one rank's micro-batches, in plan order, with their pixels.

Worker processes read the prepared cache (memory-mapped) and make each micro-batch's
packed row and tiles. Order is the plan's: a DataLoader keeps it whatever the number of
workers, so a resumed run sees exactly the micro-batches an unbroken run would have.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .cache import PreparedCache, TrainingPlan
from .pixels import PixelError, check_grid, load_tiles, load_video_frames


@dataclass(frozen=True)
class Tiling:
    """The model's tiling settings (from its config): used to make and to check tiles."""

    tile: int
    min_num: int = 1
    max_num: int = 12
    use_thumbnail: bool = True


class _PlanSlice(Dataset):
    """Micro-batch k of this rank, counted from the resume position."""

    def __init__(self, cache_dir: str, plan_dir: str, rank: int, start_global_step: int, tiling: Tiling,
                 shard: int | None = None, skip: frozenset[tuple[int, str]] | None = None):
        self.cache_dir, self.plan_dir = cache_dir, plan_dir
        #: (sample, media path) pairs of the run's skip list: not loaded, their pieces masked.
        #: None: the caller does not mask (a bad sample raises BadSampleError).
        self.masking = skip is not None
        self.skip = skip or frozenset()
        self.rank, self.g0, self.tiling = rank, start_global_step, tiling
        plan = TrainingPlan(plan_dir)
        self.per_step = plan.micro_batches_per_step
        # rows are dealt to data-parallel ranks; with sequence parallelism `shard` says which
        # part of each row this rank holds
        self.world = plan.dp_size
        self.shard = shard
        self.n = (plan.total_steps - start_global_step) * self.per_step
        self._cache: PreparedCache | None = None
        self._plan: TrainingPlan | None = None

    def __len__(self) -> int:
        return self.n

    def _open(self) -> tuple[PreparedCache, TrainingPlan]:
        # Opened lazily in each worker: memory maps are per process.
        if self._cache is None:
            self._cache = PreparedCache(self.cache_dir)
            self._plan = TrainingPlan(self.plan_dir, cache=self._cache)
        return self._cache, self._plan  # type: ignore[return-value]

    def __getitem__(self, k: int) -> dict:
        cache, plan = self._open()
        g = self.g0 + k // self.per_step
        slot = k % self.per_step
        epoch, step = plan.position(g)
        mb = plan.micro_batch((g * self.world + self.rank) * self.per_step + slot)
        item = {"epoch": epoch, "step": step, "global_step": g, "slot": slot, "index": mb.index, "empty": mb.empty}
        if mb.empty:
            return item
        if self.shard is not None:
            from .shards import shard_item

            videos: dict = {}

            def tiles_of(im, s):
                # Sharded rows cannot mask one sample: a bad sample stops the run.
                try:
                    return self._tiles(cache, s, im, videos)
                except PixelError:
                    raise
                except Exception as e:
                    raise BadSampleError(describe_bad({**cache.origin(s), "path": im.path, "reason": _reason(e)})) from e

            item.update(shard_item(cache, plan, mb, self.shard, tiles_of))
            return item
        # Rows of different lengths are padded into one [rows, longest] batch; padding is
        # learned nowhere and attends only to itself (packed_forward's segments).
        packed = [cache.pack(r) for r in mb.rows]
        width = max(len(p.input_ids) for p in packed)
        n = len(packed)
        ids = torch.zeros(n, width, dtype=torch.int64)
        labels = torch.full((n, width), -100, dtype=torch.int64)
        pos = torch.arange(width, dtype=torch.int64).repeat(n, 1)
        cu = []
        t = self.tiling
        pixels, tiles, spans, owners = [], [], [], []
        videos: dict[tuple[int, str], dict[int, np.ndarray]] = {}
        # A piece with an image that cannot be loaded (or that the skip list names) is masked:
        # its tiles are zeros and none of its tokens is learned; the batch keeps its planned
        # shape. Decided per image, so a resumed run masks exactly the pieces an unbroken one did.
        bad: dict[tuple[int, str], dict] = {}
        masked: set[tuple[int, int]] = set()  # (row, sample)
        cut = False
        for b, row in enumerate(packed):
            L = len(row.input_ids)
            ids[b, :L] = torch.from_numpy(row.input_ids.astype(np.int64))
            labels[b, :L] = torch.from_numpy(row.labels.astype(np.int64))
            pos[b, :L] = torch.from_numpy(row.position_ids.astype(np.int64))
            pos[b, L:] = torch.arange(width - L)
            cu.append(torch.from_numpy(row.cu_seqlens.astype(np.int32)))
            for pim in row.images:
                im = pim.image
                # Concat packing may cut a sample inside an image: the row then uses only
                # features [token_lo, token_hi) of the image's tiles (all tiles still run).
                spans.append((im.tiles, pim.token_lo, pim.token_hi))
                cut = cut or pim.token_lo != 0 or pim.token_hi != im.tiles * cache.tokens_per_tile
                px = None
                key = (pim.sample, im.path)
                if key not in self.skip and key not in bad:
                    self._check(cache, pim.sample, im)
                    try:
                        px = self._load(cache, pim.sample, im, videos)
                    except Exception as e:  # the file: missing, truncated, undecodable, another size
                        bad[key] = {**cache.origin(pim.sample), "path": im.path, "reason": _reason(e)}
                        if not self.masking:
                            raise BadSampleError(f"a sample cannot be loaded: {describe_bad(bad[key])}") from e
                if px is None:
                    masked.add((b, pim.sample))
                pixels.append(px)
                owners.append((b, pim.sample))
                tiles.append(im.tiles)
        masked_learned = 0
        if masked:
            for k, (b, s) in enumerate(owners):
                if (b, s) in masked:
                    pixels[k] = np.zeros((tiles[k], 3, t.tile, t.tile), dtype=np.float32)
            for b, r in enumerate(mb.rows):
                at = 0
                for s, length, learned in zip(r.samples.tolist(), r.lengths.tolist(), r.learned.tolist()):
                    if (b, s) in masked:
                        labels[b, at : at + length] = -100
                        masked_learned += int(learned)
                    at += length
        item.update(
            input_ids=ids,
            labels=labels,
            position_ids=pos,
            cu_seqlens=cu,
            pixel_values=torch.from_numpy(np.concatenate(pixels)) if pixels else torch.zeros(0, 3, t.tile, t.tile),
            image_tiles=tiles,
            image_spans=spans if cut else None,
            tokens=mb.tokens,
            learned=mb.learned_tokens,
            pieces=int(sum(len(r.samples) for r in mb.rows)),
            # the dataset of each piece, in the packed forward's sample order (per-dataset loss)
            piece_dataset=torch.tensor([cache.dataset_index(int(x)) for r in mb.rows for x in r.samples],
                                       dtype=torch.int64),
            datasets=len(cache.datasets),
            rows=n,
            bad=list(bad.values()),
            masked_learned=masked_learned,
        )
        return item


    def _tiles(self, cache: PreparedCache, sample: int, im, videos: dict) -> np.ndarray:
        """(tiles, 3, tile, tile): an image's tiles (checked against the plan) or a video frame."""
        self._check(cache, sample, im)
        return self._load(cache, sample, im, videos)

    def _load(self, cache: PreparedCache, sample: int, im, videos: dict) -> np.ndarray:
        if im.frame is not None:
            return self._frame(cache, sample, im, videos)
        t = self.tiling
        return load_tiles(im.path, im.wh, im.cols, im.rows, im.thumbnail, t.tile)

    def _check(self, cache: PreparedCache, sample: int, im) -> None:
        """The plan's grid against the tiling rule (a disagreement is the plan's fault: it stops the run)."""
        if im.frame is not None:
            if im.tiles != 1 or im.thumbnail:
                raise PixelError(f"sample {sample} video {im.path}: a frame is one tile, the plan says {im.tiles}")
            return
        t = self.tiling
        n_images = len(cache.images(sample))
        # The grid is the plan's; it is checked against the budget the planner used for
        # this sample's dataset (its own max_dynamic_patch), never re-decided here.
        budget = cache.dataset_of(sample).max_dynamic_patch or t.max_num
        check_grid(
            im.wh, im.cols, im.rows, im.thumbnail, im.tiles, tile=t.tile, min_num=t.min_num,
            max_num=max(1, budget // n_images), use_thumbnail=t.use_thumbnail,
            where=f"sample {sample} image {im.path}",
        )

    def _frame(self, cache: PreparedCache, sample: int, im, videos: dict) -> np.ndarray:
        """(1, 3, tile, tile): planned frame `im.frame` of its video; all of a sample's frames
        of one video are decoded in one pass, once per micro-batch."""
        if im.tiles != 1 or im.thumbnail:
            raise PixelError(f"sample {sample} video {im.path}: a frame is one tile, the plan says {im.tiles}")
        key = (sample, im.path)
        if key not in videos:
            frames = [x.frame for x in cache.images(sample) if x.path == im.path and x.frame is not None]
            decoded = load_video_frames(im.path, frames, len(frames), self.tiling.tile)
            videos[key] = dict(zip(frames, decoded))
        return videos[key][im.frame][None]


class BadSampleError(RuntimeError):
    """A sample whose media cannot be loaded, when the run stops on one."""


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, PixelError) else f"{type(e).__name__}: {e}"


def describe_bad(b: dict) -> str:
    """`dataset d, file:line, path: reason`: how a bad sample is named in messages."""
    where = f"{b['file']}:{b['line']}" if b.get("file") else f"line {b['line']}"
    return f"dataset {b['dataset']}, {where}, {b['path']}: {b['reason']}"


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides how to stop, and
    # workers dying on it would break the checkpoint it is about to write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def micro_batches(
    cache_dir: str, plan_dir: str, rank: int, start_global_step: int, tiling: Tiling, num_workers: int = 2, seed: int = 0,
    shard: int | None = None, skip: frozenset[tuple[int, str]] | None = None,
) -> DataLoader:
    """This rank's micro-batches from `start_global_step` on, in plan order. `rank` is the
    data-parallel rank; with sequence parallelism, `shard` is this rank's shard of each row.
    `skip` (the training loop's skip list, possibly empty) makes a sample whose media cannot be
    loaded masked and reported in the item's `bad`; without it such a sample raises."""
    ds = _PlanSlice(cache_dir, plan_dir, rank, start_global_step, tiling, shard, skip)
    return DataLoader(
        ds,
        batch_size=None,  # a micro-batch is already one packed row
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_worker_init if num_workers else None,
        pin_memory=torch.cuda.is_available(),
    )
