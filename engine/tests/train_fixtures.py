"""Fixtures for the training tests: a tiny model and a small prepared cache and plan,
written in the on-disk format of docs/cache-format.md (what TypeScript writes)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tessera_engine.data.pixels import find_grid

IGNORE = -100


def small_tokenizer(path: Path, size: int = 1000) -> Path:
    """A word-level tokenizer of `size` plain tokens: a small vocabulary keeps the tiny model fast."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size)}
    vocab["<|endoftext|>"] = size
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def tiny_model(out: Path, **kw) -> Path:
    from tessera_engine.model.tiny import build_tiny

    if not (out / "config.json").exists():
        tok = small_tokenizer(out.parent / "small-tokenizer.json")
        build_tiny(out, llm="qwen2", tokenizer_json=tok, tile_size=28, vision_hidden=16, vision_layers=1, vision_heads=2,
                   vision_intermediate=32, llm_hidden=32, llm_layers=2, llm_heads=4, llm_kv_heads=2,
                   llm_intermediate=64, max_dynamic_patch=4, **kw)
    return out


def _special(model: Path) -> dict[str, int]:
    from tessera_engine.model.load import read_special_tokens

    return read_special_tokens(model)


def _col(folder: Path, name: str, arr: np.ndarray, ext: str) -> dict:
    arr = np.ascontiguousarray(arr)
    (folder / f"{name}.{ext}").write_bytes(arr.tobytes())
    from tessera_engine import integrity

    # as the TypeScript writer records it: size, mtime (a decimal string) and sha256
    rec = integrity.record(str(folder / f"{name}.{ext}"))
    return {"file": f"{name}.{ext}", "dtype": arr.dtype.str, "count": int(arr.size),
            **rec, "mtime_ns": str(rec["mtime_ns"])}


def write_columns(ds: Path, tok_off, lengths, learned, lines, flags, img_off, ids_all, labels_all,
                  img: dict, paths: list[bytes]) -> dict:
    """Write a dataset's cache columns (docs/cache-format.md) and return the manifest's column entries."""
    path_off = np.zeros(len(paths) + 1, dtype="<i8")
    path_off[1:] = np.cumsum([len(p) for p in paths])
    return {
        "tok_offset": _col(ds, "tok_offset", np.array(tok_off, "<i8"), "i64"),
        "length": _col(ds, "length", np.array(lengths, "<i4"), "i32"),
        "learned": _col(ds, "learned", np.array(learned, "<i4"), "i32"),
        "line": _col(ds, "line", np.array(lines, "<i4"), "i32"),
        "flags": _col(ds, "flags", np.array(flags, "|u1"), "u8"),
        "img_offset": _col(ds, "img_offset", np.array(img_off, "<i8"), "i64"),
        "input_ids": _col(ds, "input_ids", np.array(ids_all, "<i4"), "i32"),
        "labels": _col(ds, "labels", np.array(labels_all, "<i4"), "i32"),
        "img_w": _col(ds, "img_w", np.array(img["w"], "<i4"), "i32"),
        "img_h": _col(ds, "img_h", np.array(img["h"], "<i4"), "i32"),
        "img_cols": _col(ds, "img_cols", np.array(img["cols"], "<i4"), "i32"),
        "img_rows": _col(ds, "img_rows", np.array(img["rows"], "<i4"), "i32"),
        "img_tiles": _col(ds, "img_tiles", np.array(img["tiles"], "<i4"), "i32"),
        "img_thumbnail": _col(ds, "img_thumbnail", np.array(img["thumb"], "|u1"), "u8"),
        "img_frame": _col(ds, "img_frame", np.array(img["frame"], "<i4"), "i32"),
        "img_context_start": _col(ds, "img_context_start", np.array(img["ctx"], "<i4"), "i32"),
        "img_path_offset": _col(ds, "img_path_offset", path_off, "i64"),
        "img_paths": _col(ds, "img_paths", np.frombuffer(b"".join(paths), dtype="|u1"), "utf8"),
    }


def write_video(path: Path, colours: list[tuple[int, int, int]], size: tuple[int, int] = (40, 30)) -> Path:
    """A lossless video (FFV1 in Matroska, which records no frame count): one colour per frame."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = size[0], size[1], "bgr0"
        for rgb in colours:
            a = np.empty((size[1], size[0], 3), np.uint8)
            a[...] = rgb
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def video_colours(i: int, n: int = 12) -> list[tuple[int, int, int]]:
    return [((37 * i + 20 * k) % 256, (200 - 15 * k) % 256, (90 + 7 * i) % 256) for k in range(n)]


def write_cache(root: Path, model: Path, n_samples: int = 32, seed: int = 0, image_every: int = 2,
                tile: int = 28, tokens_per_tile: int = 1, max_num: int = 4, video_every: int = 0,
                video_frames: int = 3, budget: int | None = None) -> Path:
    """Samples: a short 'question' (not learned) and an answer that depends on the image's colour.
    With `video_every`, every such sample without an image is a video of `video_frames` planned
    frames instead (12 frames on disk, colours from video_colours). `budget` is recorded as the
    dataset's planned max_dynamic_patch, as prepare records it."""
    sp = _special(model)
    ctx, img_s, img_e = sp["<IMG_CONTEXT>"], sp["<img>"], sp["</img>"]
    rng = np.random.default_rng(seed)
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    ds = root / "cache" / "ds-synthetic-000000000000"
    ds.mkdir(parents=True, exist_ok=True)
    ids_all, labels_all, tok_off, lengths, learned, flags, img_off = [], [], [0], [], [], [], [0]
    img = {k: [] for k in ("w", "h", "cols", "rows", "tiles", "thumb", "frame", "ctx")}
    paths: list[bytes] = []
    for i in range(n_samples):
        colour = i % 4
        ids = [int(x) for x in rng.integers(100, 400, size=int(rng.integers(4, 9)))]
        has_image = i % image_every == 0
        if has_image:
            w, h = [(40, 30), (28, 28), (90, 30), (30, 60)][i % 4]
            cols, rows = find_grid(w, h, 1, max_num, tile)
            thumb = cols * rows != 1
            tiles = cols * rows + int(thumb)
            p = media / f"img{i}.png"
            rgb = [(220, 30, 30), (30, 200, 40), (40, 40, 210), (230, 220, 40)][colour]
            Image.new("RGB", (w, h), rgb).save(p)
            ids.append(img_s)
            img["ctx"].append(len(ids))
            ids += [ctx] * (tiles * tokens_per_tile)
            ids.append(img_e)
            img["w"].append(w), img["h"].append(h), img["cols"].append(cols), img["rows"].append(rows)
            img["tiles"].append(tiles), img["thumb"].append(int(thumb)), img["frame"].append(-1)
            paths.append(str(p).encode())
        runs = [(img["ctx"][-1], tiles * tokens_per_tile)] if has_image else []
        if not has_image and video_every and i % video_every == 1:
            p = write_video(media / f"video{i}.mkv", video_colours(i))
            for k in range(video_frames):
                ids += [900 + k, 901]  # "Frame k: "
                ids.append(img_s)
                img["ctx"].append(len(ids))
                runs.append((len(ids), tokens_per_tile))
                ids += [ctx] * tokens_per_tile
                ids.append(img_e)
                img["w"].append(0), img["h"].append(0), img["cols"].append(1), img["rows"].append(1)
                img["tiles"].append(1), img["thumb"].append(0), img["frame"].append(k)
                paths.append(str(p).encode())
        q = len(ids)
        answer = [500 + colour, 600 + colour, 700 + (i % 3)]
        ids += answer
        labels = [IGNORE] * q + answer
        # The cache stores the sample without its context runs.
        keep = np.ones(len(ids), bool)
        for a, n in runs:
            keep[a : a + n] = False
        ids_all += [x for x, k in zip(ids, keep) if k]
        labels_all += [x for x, k in zip(labels, keep) if k]
        tok_off.append(len(ids_all))
        lengths.append(len(ids))
        learned.append(len(answer))
        flags.append(1 if runs else 0)
        img_off.append(len(img["w"]))
    cols = write_columns(ds, tok_off, lengths, learned, np.arange(1, n_samples + 1), flags, img_off, ids_all,
                         labels_all, img, paths)
    fp = hashlib.sha256(json.dumps([n_samples, seed, image_every, video_every, video_frames]).encode()).hexdigest()
    (ds / "dataset.json").write_text(json.dumps({"name": "synthetic", "fingerprint": fp,
                                                 "inputs": {"tiling": {"max_dynamic_patch": budget}} if budget else {},
                                                 "samples": n_samples, "columns": cols}))
    manifest = {"format": "tessera-cache", "version": 2, "fingerprint": fp, "tokens_per_tile": tokens_per_tile,
                "max_length": 512, "samples": n_samples, "tokens": sum(lengths), "images": len(paths),
                "datasets": [{"name": "synthetic", "dir": ds.name, "fingerprint": fp, "first_sample": 0,
                              "samples": n_samples, "tokens": sum(lengths), "stored_tokens": len(ids_all),
                              "images": len(paths), "img_context_id": ctx}]}
    (root / "cache" / "manifest.json").write_text(json.dumps(manifest))
    return root / "cache"


def concat_pieces(cache, order: list[int], cap: int) -> list[list[tuple[int, int, int]]]:
    """Concatenate samples in order and cut every `cap` tokens: rows of (sample, start, length)."""
    rows, cur, used = [], [], 0
    for i in order:
        n, start = int(cache.lengths[i]), 0
        while start < n:
            take = min(n - start, cap - used)
            cur.append((i, start, take))
            used += take
            start += take
            if used == cap:
                rows.append(cur)
                cur, used = [], 0
    if cur:
        rows.append(cur)
    return rows


def write_plan(out: Path, cache_dir: Path, steps: int, slots_per_step: int, world_size: int,
               pack_max_length: int = 64, seed: int = 0, concat: bool = False) -> Path:
    """Greedy packs in a seeded order, epoch after epoch, `slots_per_step` packs per step in all.

    The packs of step g are micro-batches g·slots … (g+1)·slots − 1 whatever the world size,
    so a 1-rank plan with 2 accumulation slots and a 2-rank plan with 1 hold the same packs.
    """
    from tessera_engine.data.cache import PreparedCache

    cache = PreparedCache(str(cache_dir))
    n = len(cache)
    lengths = cache.lengths
    learned = cache.learned
    if concat:
        return _write_concat_plan(out, cache, steps, slots_per_step, world_size, pack_max_length, seed)
    packs: list[list[int]] = []
    epoch = 0
    while len(packs) < steps * slots_per_step:
        order = np.random.default_rng(seed + epoch).permutation(n)
        cur: list[int] = []
        for i in order.tolist():
            if cur and sum(lengths[j] for j in cur) + lengths[i] > pack_max_length:
                packs.append(cur)
                cur = []
            cur.append(i)
        if cur:
            packs.append(cur)
        epoch += 1
    packs = packs[: steps * slots_per_step]
    if slots_per_step % world_size:
        raise ValueError("slots per step must divide by the world size")
    per_rank = slots_per_step // world_size
    row_offset, pieces = [0], []
    for p in packs:
        pieces += p
        row_offset.append(len(pieces))
    out.mkdir(parents=True, exist_ok=True)
    sample = np.array(pieces, "<i4")
    plen = lengths[sample].astype("<i4")
    plearn = learned[sample].astype("<i4")
    mb_tokens = np.array([int(lengths[p].sum()) for p in packs], "<i4")
    mb_learned = np.array([int(learned[p].sum()) for p in packs], "<i4")
    mb_tiles = np.array([sum(im.tiles for j in p for im in cache.images(j)) for p in packs], "<i4")
    st_tokens, st_learned, st_samples, st_ls, st_sqrt = [], [], [], [], []
    for g in range(steps):
        ps = [j for p in packs[g * slots_per_step:(g + 1) * slots_per_step] for j in p]
        st_tokens.append(int(lengths[ps].sum()))
        st_learned.append(int(learned[ps].sum()))
        st_samples.append(len(ps))
        st_ls.append(int((learned[ps] > 0).sum()))
        st_sqrt.append(float(sum(math.sqrt(learned[j]) for j in ps)))
    cols = {
        "mb_offset": _col(out, "mb_offset", np.arange(len(packs) + 1, dtype="<i8"), "i64"),
        "row_offset": _col(out, "row_offset", np.array(row_offset, "<i8"), "i64"),
        "row_tokens": _col(out, "row_tokens", mb_tokens, "i32"),
        "row_tiles": _col(out, "row_tiles", mb_tiles, "i32"),
        "mb_tokens": _col(out, "mb_tokens", mb_tokens, "i32"),
        "mb_tiles": _col(out, "mb_tiles", mb_tiles, "i32"),
        "mb_learned": _col(out, "mb_learned", mb_learned, "i32"),
        "piece_sample": _col(out, "piece_sample", sample, "i32"),
        "piece_start": _col(out, "piece_start", np.zeros(len(sample), "<i4"), "i32"),
        "piece_length": _col(out, "piece_length", plen, "i32"),
        "piece_learned": _col(out, "piece_learned", plearn, "i32"),
        "step_tokens": _col(out, "step_tokens", np.array(st_tokens, "<i8"), "i64"),
        "step_learned": _col(out, "step_learned", np.array(st_learned, "<i8"), "i64"),
        "step_samples": _col(out, "step_samples", np.array(st_samples, "<i4"), "i32"),
        "step_learned_samples": _col(out, "step_learned_samples", np.array(st_ls, "<i4"), "i32"),
        "step_sqrt_learned": _col(out, "step_sqrt_learned", np.array(st_sqrt, "<f8"), "f64"),
    }
    fp = hashlib.sha256(json.dumps([steps, slots_per_step, pack_max_length, seed]).encode()).hexdigest()
    plan = {"format": "tessera-plan", "version": 1, "fingerprint": fp, "cache_fingerprint": cache.fingerprint,
            "cache_dir": str(cache_dir), "world_size": world_size, "micro_batches_per_step": per_rank,
            "epochs": 1, "epoch_steps": [steps], "epoch_first_step": [0], "total_steps": steps,
            "micro_batches": len(packs), "rows": len(packs), "pieces": len(pieces),
            "options": {"packing": "soft", "pack_max_length": pack_max_length, "seed": seed},
            "stats": {}, "columns": cols}
    (out / "plan.json").write_text(json.dumps(plan))
    return out


def _write_concat_plan(out: Path, cache, steps: int, slots: int, world_size: int, cap: int, seed: int) -> Path:
    order: list[int] = []
    while True:
        rows = concat_pieces(cache, order, cap)
        if len(rows) > steps * slots:
            break
        order += np.random.default_rng(seed + len(order)).permutation(len(cache)).tolist()
    rows = rows[: steps * slots]
    labels = {i: cache.tokens(i)[1] for i in {p[0] for r in rows for p in r}}

    def learned(i, start, length):
        # the piece's first token is predicted from nothing in its row: not learned
        return int((labels[i][start + 1:start + length] != IGNORE).sum())

    def tiles(i, start, length):
        tpt = cache.tokens_per_tile
        return sum(im.tiles for im in cache.images(i)
                   if im.context_start < start + length and im.context_start + im.tiles * tpt > start)

    pieces = [p for r in rows for p in r]
    row_offset = np.zeros(len(rows) + 1, "<i8")
    row_offset[1:] = np.cumsum([len(r) for r in rows])
    row_tokens = np.array([sum(p[2] for p in r) for r in rows], "<i4")
    row_tiles = np.array([sum(tiles(*p) for p in r) for r in rows], "<i4")
    row_learned = np.array([sum(learned(*p) for p in r) for r in rows], "<i4")
    plearn = np.array([learned(*p) for p in pieces], "<i4")
    st = {"tokens": [], "learned": [], "samples": [], "ls": [], "sqrt": []}
    for g in range(steps):
        ps = [p for r in rows[g * slots:(g + 1) * slots] for p in r]
        ls = [learned(*p) for p in ps]
        st["tokens"].append(sum(p[2] for p in ps))
        st["learned"].append(sum(ls))
        st["samples"].append(len(ps))
        st["ls"].append(sum(1 for x in ls if x > 0))
        st["sqrt"].append(float(sum(math.sqrt(x) for x in ls)))
    out.mkdir(parents=True, exist_ok=True)
    cols = {
        "mb_offset": _col(out, "mb_offset", np.arange(len(rows) + 1, dtype="<i8"), "i64"),
        "row_offset": _col(out, "row_offset", row_offset, "i64"),
        "row_tokens": _col(out, "row_tokens", row_tokens, "i32"),
        "row_tiles": _col(out, "row_tiles", row_tiles, "i32"),
        "mb_tokens": _col(out, "mb_tokens", row_tokens, "i32"),
        "mb_tiles": _col(out, "mb_tiles", row_tiles, "i32"),
        "mb_learned": _col(out, "mb_learned", row_learned, "i32"),
        "piece_sample": _col(out, "piece_sample", np.array([p[0] for p in pieces], "<i4"), "i32"),
        "piece_start": _col(out, "piece_start", np.array([p[1] for p in pieces], "<i4"), "i32"),
        "piece_length": _col(out, "piece_length", np.array([p[2] for p in pieces], "<i4"), "i32"),
        "piece_learned": _col(out, "piece_learned", plearn, "i32"),
        "step_tokens": _col(out, "step_tokens", np.array(st["tokens"], "<i8"), "i64"),
        "step_learned": _col(out, "step_learned", np.array(st["learned"], "<i8"), "i64"),
        "step_samples": _col(out, "step_samples", np.array(st["samples"], "<i4"), "i32"),
        "step_learned_samples": _col(out, "step_learned_samples", np.array(st["ls"], "<i4"), "i32"),
        "step_sqrt_learned": _col(out, "step_sqrt_learned", np.array(st["sqrt"], "<f8"), "f64"),
    }
    fp = hashlib.sha256(json.dumps(["concat", steps, slots, cap, seed]).encode()).hexdigest()
    plan = {"format": "tessera-plan", "version": 1, "fingerprint": fp, "cache_fingerprint": cache.fingerprint,
            "cache_dir": cache.path, "world_size": world_size, "micro_batches_per_step": slots // world_size,
            "epochs": 1, "epoch_steps": [steps], "epoch_first_step": [0], "total_steps": steps,
            "micro_batches": len(rows), "rows": len(rows), "pieces": len(pieces),
            "options": {"packing": "concat", "pack_max_length": cap, "seed": seed}, "stats": {}, "columns": cols}
    (out / "plan.json").write_text(json.dumps(plan))
    return out


def job(model: Path, cache: Path, plan: Path, work: Path, **config) -> dict:
    cfg = {"lr": 1e-3, "min_lr": 0.0, "weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0,
           "loss_reduction": "token", "seed": 0, "freeze_vit": False, "gradient_checkpointing": False,
           "num_workers": 0, "checkpoint_interval": 0, "checkpoint_keep": 2, "export": "none", "device": "cpu"}
    cfg.update(config)
    return {"kind": "train", "protocol": 1, "model": str(model), "cache_dir": str(cache), "plan_dir": str(plan),
            "work_dir": str(work), "config": cfg}


def env_with_engine() -> dict:
    env = dict(os.environ)
    engine = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (engine, env.get("PYTHONPATH")) if p)
    return env
