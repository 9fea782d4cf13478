"""Batched generation: prompts already tokenized and tiled by TypeScript, new token ids back.

Used by `tessera eval` and `tessera chat`. TypeScript builds each prompt (template, image
placeholders expanded to <img> + <IMG_CONTEXT>×tiles + </img>), decides each image's tile grid
and the order of the prompts (batches are consecutive runs of `batch_size`); this job makes the
pixels, runs the model's generation helper and returns the ids.

Job fields:
  model: an original InternVL2 folder
  prompts: [{input_ids: [int], images: [{path, wh: [w, h], cols, rows, thumbnail, max_num?}
                                    | {path, frame, frames, cols: 1, rows: 1, thumbnail: false}]}]
  (a video frame: frame k of the `frames` planned for that video, data/pixels.py's choice)
  max_new_tokens (16), batch_size (8), do_sample (false), temperature (1), top_p (1), top_k (0),
  seed (0), device ("auto"), threads (optional: torch CPU threads)
  adapter (optional): a PEFT adapter folder, merged into the model after loading
  serve (optional): keep the model loaded and answer requests from stdin (see serve())
Result: {outputs: [[int]], tokens_per_s, seconds}  (each stopped before the end-of-turn token)
"""

from __future__ import annotations

import json
import time

from ..protocol import emit


def prompt_pixels(prompt: dict, tile: int, min_num: int, use_thumbnail: bool, where: str):
    """The tiles of one prompt's images, in order ([N, 3, tile, tile] float32), or None."""
    import numpy as np
    import torch

    from ..data.pixels import check_grid, load_tiles, load_video_frames

    parts = []
    videos: dict[str, dict[int, np.ndarray]] = {}
    for k, im in enumerate(prompt.get("images") or []):
        if im.get("frame") is not None:
            path = im["path"]
            if path not in videos:  # every frame of a video in one pass
                frames = [int(x["frame"]) for x in prompt["images"] if x["path"] == path and x.get("frame") is not None]
                videos[path] = dict(zip(frames, load_video_frames(path, frames, int(im["frames"]), tile)))
            parts.append(videos[path][int(im["frame"])][None])
            continue
        wh = tuple(int(v) for v in im["wh"])
        cols, rows, thumb = int(im["cols"]), int(im["rows"]), bool(im["thumbnail"])
        if im.get("max_num") is not None:
            check_grid(wh, cols, rows, thumb, cols * rows + int(thumb), tile=tile, min_num=min_num,
                       max_num=int(im["max_num"]), use_thumbnail=use_thumbnail, where=f"{where} image {k + 1}")
        parts.append(load_tiles(im["path"], wh, cols, rows, thumb, tile))
    if not parts:
        return None
    return torch.from_numpy(np.concatenate(parts))


def load_model(job: dict):
    """The job's model (an original InternVL2 folder), with `adapter` (a PEFT adapter folder) merged in."""
    import torch

    from ..model.load import load_internvl

    device = job.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    loaded = load_internvl(job["model"], dtype=dtype, device=device)
    if job.get("adapter"):
        from peft import PeftModel

        # The adapter names the native classes' modules, which is what the loader builds.
        loaded.model = PeftModel.from_pretrained(loaded.model, job["adapter"]).merge_and_unload()
    loaded.model.eval()
    return loaded


def answer(model, info, prompts: list[dict], params: dict) -> tuple[list[list[int]], int]:
    """New token ids of each prompt, in batches of `batch_size`; and the count of new tokens."""
    from ..model.packed import generate

    batch = max(1, int(params.get("batch_size", 8)))
    kw = dict(
        max_new_tokens=int(params.get("max_new_tokens", 16)),
        do_sample=bool(params.get("do_sample", False)),
        temperature=float(params.get("temperature", 1.0)),
        top_p=float(params.get("top_p", 1.0)),
        top_k=int(params.get("top_k", 0)),
        eos_token_ids=info.eos_token_ids,
        pad_token_id=info.pad_token_id,
    )
    seed = int(params.get("seed", 0))
    outputs: list[list[int]] = []
    new_tokens = 0
    for b, start in enumerate(range(0, len(prompts), batch)):
        chunk = prompts[start:start + batch]
        pixels = [prompt_pixels(p, info.tile_size, info.min_dynamic_patch, info.use_thumbnail, f"prompt {start + i}")
                  for i, p in enumerate(chunk)]
        # Seeded per batch: sampled outputs do not depend on what ran before.
        out = generate(model, [p["input_ids"] for p in chunk], pixels, seed=seed + b, **kw)
        outputs.extend(out)
        new_tokens += sum(len(o) for o in out)
        emit("progress", stage="generate", done=len(outputs), total=len(prompts))
    return outputs, new_tokens


def serve(model, info, job: dict) -> dict:
    """Requests as JSON lines on stdin ({id, prompts, and any generation field}), one `answer`
    event each ({id, outputs} or {id, error}), until stdin closes: the model stays loaded."""
    import sys

    emit("ready")
    served = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            outputs, _ = answer(model, info, req.get("prompts") or [], {**job, **req})
            emit("answer", id=req.get("id"), outputs=outputs)
        except (ValueError, OSError) as e:  # a bad image or prompt: say so, keep serving
            emit("answer", id=req.get("id"), error=f"{type(e).__name__}: {e}")
        served += 1
    return {"served": served}


def run(job: dict) -> dict:
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    loaded = load_model(job)
    model, info = loaded.model, loaded.info
    if job.get("serve"):
        return serve(model, info, job)
    prompts = job.get("prompts") or []
    t0 = time.perf_counter()
    outputs, new_tokens = answer(model, info, prompts, job)
    seconds = time.perf_counter() - t0
    return {"outputs": outputs, "seconds": seconds, "tokens_per_s": new_tokens / seconds if seconds > 0 else None}
