"""Pixels follow the spec: the tiling rule's worked examples, tiles row by row, thumbnail last,
bicubic resize, /255 and ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tessera_engine.data.pixels import IMAGENET_MEAN, IMAGENET_STD, PixelError, check_grid, find_grid, load_tiles, tiles_of


@pytest.mark.parametrize(
    "w,h,max_num,grid",
    [
        (1695, 2025, 12, (3, 4)),
        (1695, 2025, 6, (2, 2)),
        (448, 448, 12, (1, 1)),
        (1000, 200, 12, (5, 1)),
        (1000, 200, 6, (5, 1)),
        (640, 480, 12, (4, 3)),
        (640, 480, 6, (3, 2)),
        (1280, 720, 12, (4, 2)),
        (1280, 720, 6, (2, 1)),
    ],
)
def test_grid_matches_the_worked_examples(w, h, max_num, grid):
    assert find_grid(w, h, 1, max_num, 448) == grid


def test_tiles_row_by_row_then_thumbnail():
    tile = 8
    # A 3×2 grid whose cells each have one flat colour, so every tile is identifiable.
    colours = [(10 * k, 255 - 20 * k, 5 * k) for k in range(6)]
    img = Image.new("RGB", (3 * tile, 2 * tile))
    for k, c in enumerate(colours):
        x, y = (k % 3) * tile, (k // 3) * tile
        img.paste(c, (x, y, x + tile, y + tile))
    out = tiles_of(img, 3, 2, True, tile)
    assert out.shape == (7, 3, tile, tile) and out.dtype == np.float32
    for k, c in enumerate(colours):
        # Centre pixel: bicubic at an identity size keeps flat regions exact.
        want = (np.array(c, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        assert np.allclose(out[k, :, tile // 2, tile // 2], want, atol=1e-6), k
    thumb = np.asarray(img.resize((tile, tile), Image.Resampling.BICUBIC), np.float32) / 255.0
    assert np.allclose(out[6], ((thumb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1), atol=1e-6)


def test_resize_is_bicubic_to_the_grid():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    out = tiles_of(img, 2, 1, False, 16)
    big = np.asarray(img.resize((32, 16), Image.Resampling.BICUBIC), np.float32) / 255.0
    big = (big - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(out[1], big[:, 16:].transpose(2, 0, 1), atol=1e-6)


def test_plan_is_checked(tmp_path):
    check_grid((1280, 720), 4, 2, True, 9, tile=448, min_num=1, max_num=12, use_thumbnail=True, where="x")
    with pytest.raises(PixelError, match="tiling rule gives 4×2"):
        check_grid((1280, 720), 2, 1, True, 3, tile=448, min_num=1, max_num=12, use_thumbnail=True, where="x")
    with pytest.raises(PixelError, match="thumbnail"):
        check_grid((448, 448), 1, 1, True, 2, tile=448, min_num=1, max_num=12, use_thumbnail=True, where="x")
    p = tmp_path / "a.png"
    Image.new("RGB", (20, 10)).save(p)
    with pytest.raises(PixelError, match="image_wh says 10×20"):
        load_tiles(str(p), (10, 20), 1, 1, False, 8)
