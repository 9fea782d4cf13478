"""Draw synthetic images from scene descriptions (the demo's data).

TypeScript decides every scene: size, background, each shape's kind, colour and box, each
word's text, position, size and colour. This job only draws them with Pillow and saves PNGs.

Job fields:
  scenes: [{path, size: [w, h], background: [r, g, b],
            shapes: [{shape: circle|square|triangle, fill: [r, g, b], box: [x0, y0, x1, y1]}],
            texts: [{text, xy: [x, y], size, fill: [r, g, b]}]}]
Result: {written: n}
"""

from __future__ import annotations

import os

from ..protocol import emit

SHAPES = ("circle", "square", "triangle")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing: the fixed bitmap font
        return ImageFont.load_default()


def draw_scene(scene: dict):
    """The PIL image of one scene."""
    from PIL import Image, ImageDraw

    w, h = (int(v) for v in scene["size"])
    if w <= 0 or h <= 0:
        raise ValueError(f"{scene.get('path')}: size must be positive, got {w}x{h}")
    img = Image.new("RGB", (w, h), tuple(scene.get("background", (255, 255, 255))))
    d = ImageDraw.Draw(img)
    for s in scene.get("shapes", []):
        kind = s["shape"]
        fill = tuple(s["fill"])
        x0, y0, x1, y1 = (int(v) for v in s["box"])
        if kind == "circle":
            d.ellipse([x0, y0, x1, y1], fill=fill)
        elif kind == "square":
            d.rectangle([x0, y0, x1, y1], fill=fill)
        elif kind == "triangle":
            d.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:
            raise ValueError(f"{scene.get('path')}: unknown shape {kind!r}; known: {list(SHAPES)}")
    for t in scene.get("texts", []):
        d.text(tuple(t["xy"]), str(t["text"]), fill=tuple(t.get("fill", (0, 0, 0))), font=_font(int(t.get("size", 10))))
    return img


def run(job: dict) -> dict:
    scenes = job.get("scenes") or []
    every = max(1, len(scenes) // 20)
    for i, scene in enumerate(scenes):
        path = scene["path"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}.png"
        draw_scene(scene).save(tmp, format="PNG")
        os.replace(tmp, path)  # readers never see half an image
        if (i + 1) % every == 0 or i + 1 == len(scenes):
            emit("progress", stage="render", done=i + 1, total=len(scenes))
    return {"written": len(scenes)}
