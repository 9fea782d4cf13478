"""Pixels of an image, following the plan's tile grid (spec: internvl2.md, dynamic tiling).

The planner chose each image's grid from image_wh; here we only make the pixels:
bicubic resize to (cols·tile, rows·tile), tiles row by row, the thumbnail last, /255,
ImageNet normalisation. The grid is recomputed from (w, h) only to check the plan.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class PixelError(ValueError):
    """An image disagrees with what the plan says about it."""


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    # Built exactly as the reference code builds it (a set, then a stable sort by area), so
    # grids of equal area keep the same relative order as there: CPython's iteration order
    # of a set of small int tuples is fixed, and it decides the one tie the rule leaves open.
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(grids, key=lambda g: g[0] * g[1])


def find_grid(w: int, h: int, min_num: int, max_num: int, tile: int) -> tuple[int, int]:
    """(cols, rows) the dynamic tiling rule picks for a w×h image."""
    aspect = w / h
    best_diff = float("inf")
    best = (1, 1)
    area = w * h
    for i, j in candidate_grids(min_num, max_num):
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best_diff, best = diff, (i, j)
        elif diff == best_diff and area > 0.5 * tile * tile * i * j:
            best = (i, j)
    return best


def check_grid(
    wh: tuple[int, int], cols: int, rows: int, thumbnail: bool, tiles: int,
    *, tile: int, min_num: int, max_num: int, use_thumbnail: bool, where: str,
) -> None:
    """Raise PixelError when the plan's grid is not what the rule gives for wh."""
    expect = find_grid(wh[0], wh[1], min_num, max_num, tile)
    if (cols, rows) != expect:
        raise PixelError(f"{where}: plan says {cols}×{rows} tiles for {wh[0]}×{wh[1]}, the tiling rule gives {expect[0]}×{expect[1]}")
    want_thumb = use_thumbnail and cols * rows != 1
    if thumbnail != want_thumb or tiles != cols * rows + int(thumbnail):
        raise PixelError(f"{where}: plan says {tiles} tiles (thumbnail {thumbnail}) for a {cols}×{rows} grid")


def _normalise(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    a = (a - IMAGENET_MEAN) / IMAGENET_STD
    return a.transpose(2, 0, 1)  # (3, H, W)


def tiles_of(img: Image.Image, cols: int, rows: int, thumbnail: bool, tile: int) -> np.ndarray:
    """(cols·rows [+1], 3, tile, tile) float32: the grid's tiles row by row, thumbnail last."""
    img = img.convert("RGB")
    big = img.resize((cols * tile, rows * tile), Image.Resampling.BICUBIC)
    out = np.empty((cols * rows + int(thumbnail), 3, tile, tile), dtype=np.float32)
    for k in range(cols * rows):
        x, y = (k % cols) * tile, (k // cols) * tile
        out[k] = _normalise(big.crop((x, y, x + tile, y + tile)))
    if thumbnail:
        out[-1] = _normalise(img.resize((tile, tile), Image.Resampling.BICUBIC))
    return out


def decode_problem(path: str) -> str | None:
    """Why training could not decode the image at `path` (None: it decodes). Opens and fully
    decodes it with Pillow, as the loader does: a truncated file, a corrupt stream or a
    decompression bomb are found here rather than hours into a run."""
    try:
        with warnings.catch_warnings():
            # Above MAX_IMAGE_PIXELS Pillow only warns (it refuses above twice that): refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
    except FileNotFoundError:
        return "image not found"
    except Exception as e:  # any decoder failure is the answer, named with its type
        return f"{type(e).__name__}: {e}"
    return None


def load_tiles(path: str, wh: tuple[int, int], cols: int, rows: int, thumbnail: bool, tile: int) -> np.ndarray:
    """Open an image and cut it as planned; its real size must be the planned wh."""
    try:
        with Image.open(path) as im:
            if tuple(im.size) != tuple(wh):
                raise PixelError(
                    f"{path}: the image is {im.size[0]}×{im.size[1]} but image_wh says {wh[0]}×{wh[1]}; "
                    "fix image_wh (tessera data fill-wh) and prepare the cache again"
                )
            return tiles_of(im, cols, rows, thumbnail, tile)
    except FileNotFoundError:
        raise PixelError(f"{path}: image not found") from None


def video_frame_indices(n: int, vlen: int) -> list[int]:
    """Which of a video's `vlen` frames are its `n` planned frames: the middle of each of n
    equal segments (the official 'middle' sampling). The count is the planner's; where they
    sit needs the video, so it is decided here, the same way on every rank and every visit."""
    if vlen < 1:
        raise ValueError("the video has no frames")
    edges = [k * vlen // n for k in range(n + 1)]
    return [min(vlen - 1, (edges[k] + max(edges[k], edges[k + 1] - 1)) // 2) for k in range(n)]


def load_video_frames(path: str, frames: list[int], n: int, tile: int) -> np.ndarray:
    """(len(frames), 3, tile, tile) float32: planned frames `frames` (of `n`) of a video, one
    tile each (resized whole, no thumbnail), decoded with PyAV in one pass."""
    try:
        import av
    except ImportError:  # pragma: no cover - av is an engine dependency
        raise PixelError("decoding video needs PyAV (pip install av)") from None
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise PixelError(f"{path}: no video stream")
            stream = c.streams.video[0]
            vlen = stream.frames or sum(1 for p in c.demux(stream) if p.size)
        picks = video_frame_indices(n, vlen)
        want: dict[int, list[int]] = {}
        for k in frames:
            want.setdefault(picks[k], []).append(k)
        out = np.empty((len(frames), 3, tile, tile), dtype=np.float32)
        slot = {k: i for i, k in enumerate(frames)}
        last = max(want)
        got = 0
        with av.open(path) as c:
            for i, frame in enumerate(c.decode(c.streams.video[0])):
                if i in want:
                    pixels = tiles_of(frame.to_image(), 1, 1, False, tile)[0]
                    for k in want[i]:
                        out[slot[k]] = pixels
                        got += 1
                if i >= last:
                    break
        if got != len(frames):
            raise PixelError(f"{path}: decoded fewer frames than its header says ({vlen})")
        return out
    except FileNotFoundError:
        raise PixelError(f"{path}: video not found") from None
    except av.error.FFmpegError as e:
        raise PixelError(f"{path}: cannot decode the video: {e}") from None
