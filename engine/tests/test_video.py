"""Video frames: which frames a planned count takes (the official 'middle' rule), decoded with
PyAV exactly, and a training micro-batch carries them in plan order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tessera_engine.data.loader import Tiling, _PlanSlice
from tessera_engine.data.pixels import PixelError, load_video_frames, tiles_of, video_frame_indices
from train_fixtures import tiny_model, video_colours, write_cache, write_plan, write_video


def official_middle(n: int, vlen: int) -> list[int]:
    # The official get_frame_indices(sample="middle"): linspace edges, the middle of each range.
    edges = np.linspace(0, vlen, num=n + 1).astype(int)
    return [(a + b - 1) // 2 if b > a else a for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("n", [1, 2, 3, 8, 16, 32])
def test_frame_indices_are_segment_middles(n):
    for vlen in [n, n + 1, 2 * n - 1, 30, 97, 1000, 12345]:
        got = video_frame_indices(n, vlen)
        assert got == official_middle(n, vlen), (n, vlen)
        assert got == sorted(got) and all(0 <= i < vlen for i in got)


def test_frame_indices_with_fewer_frames_than_planned():
    assert video_frame_indices(4, 3) == [0, 0, 1, 2]
    with pytest.raises(ValueError):
        video_frame_indices(4, 0)


def test_decodes_exactly_the_planned_frames(tmp_path):
    colours = video_colours(5)
    path = write_video(tmp_path / "v.mkv", colours)  # no frame count in the header: counted
    picks = video_frame_indices(8, len(colours))
    got = load_video_frames(str(path), [6, 0, 3], 8, 28)
    assert got.shape == (3, 3, 28, 28)
    for out, k in zip(got, [6, 0, 3]):
        want = tiles_of(Image.new("RGB", (40, 30), colours[picks[k]]), 1, 1, False, 28)[0]
        np.testing.assert_allclose(out, want, atol=1e-5)


def test_missing_or_broken_video_is_a_clear_error(tmp_path):
    with pytest.raises(PixelError, match="video not found"):
        load_video_frames(str(tmp_path / "nope.mp4"), [0], 1, 28)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(PixelError, match="bad.mp4"):
        load_video_frames(str(bad), [0], 1, 28)


def test_micro_batches_carry_video_frames_in_plan_order(tmp_path):
    model = tiny_model(tmp_path / "model")
    cache = write_cache(tmp_path / "data", model, n_samples=12, image_every=3, video_every=3, video_frames=3)
    plan = write_plan(tmp_path / "plan", cache, steps=3, slots_per_step=2, world_size=1, pack_max_length=64)
    from tessera_engine.data.cache import PreparedCache, TrainingPlan

    pc = PreparedCache(str(cache))
    tp = TrainingPlan(str(plan), cache=pc)
    ds = _PlanSlice(str(cache), str(plan), rank=0, start_global_step=0, tiling=Tiling(tile=28, max_num=4))
    frames_seen = 0
    for k in range(len(ds)):
        item = ds[k]
        if item["empty"]:
            continue
        mb = tp.micro_batch(item["index"])
        expected = []
        for row in mb.rows:
            for s in row.samples.tolist():
                for im in pc.images(s):
                    if im.frame is None:
                        continue  # images are checked by the image tests
                    picks = video_frame_indices(3, 12)
                    i = int(im.path.rsplit("video", 1)[1].split(".")[0])
                    expected.append(tiles_of(Image.new("RGB", (40, 30), video_colours(i)[picks[im.frame]]), 1, 1, False, 28)[0])
        assert sum(item["image_tiles"]) == item["pixel_values"].shape[0] == mb.tiles
        frames = [t for t, im in zip(item["pixel_values"].numpy(), _row_images(pc, mb)) if im.frame is not None]
        assert len(frames) == len(expected)
        for a, b in zip(frames, expected):
            np.testing.assert_allclose(a, b, atol=1e-5)
        frames_seen += len(frames)
    assert frames_seen >= 3


def _row_images(pc, mb):
    """Each tile's image, in the order the loader lays tiles out."""
    for row in mb.rows:
        for s in row.samples.tolist():
            for im in pc.images(s):
                yield from [im] * im.tiles


def test_generation_prompts_take_video_frames_like_training(tmp_path):
    from tessera_engine.jobs.generate import prompt_pixels

    colours = video_colours(2)
    path = str(write_video(tmp_path / "clip.mkv", colours))
    Image.new("RGB", (28, 28), (10, 200, 30)).save(tmp_path / "still.png")
    frame = lambda k: {"path": path, "wh": [0, 0], "cols": 1, "rows": 1, "thumbnail": False, "frame": k, "frames": 3}  # noqa: E731
    still = {"path": str(tmp_path / "still.png"), "wh": [28, 28], "cols": 1, "rows": 1, "thumbnail": False}
    got = prompt_pixels({"input_ids": [], "images": [frame(0), still, frame(1), frame(2)]}, 28, 1, True, "p").numpy()
    picks = video_frame_indices(3, len(colours))
    want = [tiles_of(Image.new("RGB", (40, 30), colours[picks[k]]), 1, 1, False, 28)[0] for k in range(3)]
    np.testing.assert_allclose(got[[0, 2, 3]], np.stack(want), atol=1e-5)
    np.testing.assert_allclose(got[1], tiles_of(Image.open(tmp_path / "still.png"), 1, 1, False, 28)[0], atol=1e-5)
