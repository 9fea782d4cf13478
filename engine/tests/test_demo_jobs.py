"""The demo's engine jobs: render draws what the scene says; generate answers tokenized prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tessera_engine.jobs import generate as generate_job
from tessera_engine.jobs import render


def test_render_draws_each_shape_in_its_box_and_colour(tmp_path):
    scenes = [{
        "path": str(tmp_path / "a" / "s.png"),
        "size": [90, 40],
        "background": [240, 240, 240],
        "shapes": [
            {"shape": "square", "fill": [220, 40, 40], "box": [2, 2, 21, 21]},
            {"shape": "circle", "fill": [40, 80, 220], "box": [40, 5, 69, 34]},
            {"shape": "triangle", "fill": [40, 170, 60], "box": [70, 10, 89, 39]},
        ],
        "texts": [],
    }]
    assert render.run({"scenes": scenes}) == {"written": 1}
    img = np.asarray(Image.open(scenes[0]["path"]).convert("RGB"))
    assert img.shape == (40, 90, 3)
    assert tuple(img[10, 10]) == (220, 40, 40)  # inside the square
    assert tuple(img[20, 55]) == (40, 80, 220)  # centre of the circle
    assert tuple(img[6, 41]) == (240, 240, 240)  # circle's box corner is background
    assert tuple(img[37, 80]) == (40, 170, 60)  # triangle's base
    assert tuple(img[12, 71]) == (240, 240, 240)  # outside the triangle's slope
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "a").iterdir())


def test_render_writes_words_and_rejects_unknown_shapes(tmp_path):
    scene = {"path": str(tmp_path / "w.png"), "size": [80, 30], "background": [255, 255, 255], "shapes": [],
             "texts": [{"text": "cat", "xy": [5, 5], "size": 18, "fill": [0, 0, 0]}]}
    render.run({"scenes": [scene]})
    img = np.asarray(Image.open(scene["path"]).convert("L"))
    dark = np.argwhere(img < 100)
    assert len(dark) > 30
    assert dark[:, 1].min() >= 5 and dark[:, 0].min() >= 5  # drawn from the given corner
    bad = dict(scene, path=str(tmp_path / "x.png"), shapes=[{"shape": "star", "fill": [0, 0, 0], "box": [0, 0, 5, 5]}])
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        render.run({"scenes": [bad]})


def test_prompt_pixels_follow_the_plan_and_check_it(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (112, 56), (255, 0, 0)).save(path)
    im = {"path": str(path), "wh": [112, 56], "cols": 2, "rows": 1, "thumbnail": True, "max_num": 6}
    px = generate_job.prompt_pixels({"input_ids": [1], "images": [im, dict(im, max_num=None)]}, 56, 1, True, "p")
    assert tuple(px.shape) == (6, 3, 56, 56)
    assert px.dtype == torch.float32
    # red normalised with ImageNet statistics
    assert abs(float(px[0, 0, 0, 0]) - (1 - 0.485) / 0.229) < 1e-4
    from tessera_engine.data.pixels import PixelError

    with pytest.raises(PixelError, match="plan says 1×1"):
        generate_job.prompt_pixels({"images": [dict(im, cols=1, thumbnail=False)]}, 56, 1, True, "p")
    assert generate_job.prompt_pixels({"input_ids": [1], "images": []}, 56, 1, True, "p") is None


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tessera_engine.model.tiny import build_tiny, small_tokenizer_json

    d = tmp_path_factory.mktemp("tiny")
    tok = small_tokenizer_json(d / "tok" / "tokenizer.json")
    return build_tiny(d / "model", tokenizer_json=tok, tile_size=28, vision_hidden=16, vision_layers=1,
                      vision_intermediate=32, llm_hidden=32, llm_layers=1, llm_intermediate=64, seed=3)


def test_generate_batched_equals_one_at_a_time(tiny_model, tmp_path):
    from tessera_engine.model.load import read_special_tokens

    special = read_special_tokens(tiny_model)
    ctx, start, end = special["<IMG_CONTEXT>"], special["<img>"], special["</img>"]
    path = tmp_path / "i.png"
    Image.new("RGB", (84, 28), (0, 128, 255)).save(path)
    image = {"path": str(path), "wh": [84, 28], "cols": 3, "rows": 1, "thumbnail": True, "max_num": 6}
    # 28 px tiles of 14 px patches: 1 token per tile; 3 tiles + thumbnail = 4 context tokens
    prompts = [
        {"input_ids": [5, 6, start] + [ctx] * 4 + [end, 7], "images": [image]},
        {"input_ids": [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], "images": []},
        {"input_ids": [20, start] + [ctx] * 4 + [end], "images": [image]},
    ]
    job = {"model": str(tiny_model), "prompts": prompts, "max_new_tokens": 5, "threads": 1}
    batched = generate_job.run(dict(job, batch_size=3))["outputs"]
    single = generate_job.run(dict(job, batch_size=1))["outputs"]
    assert batched == single
    assert len(batched) == 3 and all(len(o) <= 5 for o in batched)
    assert any(len(o) > 0 for o in batched)
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        generate_job.run(dict(job, prompts=[dict(prompts[0], images=[])]))
