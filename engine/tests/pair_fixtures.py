"""Fixtures for the preference tests: a prepared cache of pairs (pair k = samples 2k, 2k+1: chosen
then rejected, sharing prompt and image) and plans of whole pairs, in the on-disk format the
TypeScript planner writes (docs/cache-format.md)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from tessera_engine.data.pixels import find_grid

from train_fixtures import IGNORE, _col, _special, write_columns

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 210), (230, 220, 40)]


def write_pair_cache(root: Path, model: Path, n_pairs: int = 16, seed: int = 0, image_every: int = 2,
                     tile: int = 28, max_num: int = 4) -> Path:
    """Pair k: a prompt (with an image every `image_every` pairs) whose right answer names the
    image's colour; chosen is the right colour, rejected a wrong one (of another length)."""
    sp = _special(model)
    ctx, img_s, img_e = sp["<IMG_CONTEXT>"], sp["<img>"], sp["</img>"]
    rng = np.random.default_rng(seed)
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    ds = root / "cache" / "ds-pairs-000000000000"
    ds.mkdir(parents=True, exist_ok=True)
    ids_all, labels_all, tok_off, lengths, learned, flags, img_off, lines = [], [], [0], [], [], [], [0], []
    img = {k: [] for k in ("w", "h", "cols", "rows", "tiles", "thumb", "frame", "ctx")}
    paths: list[bytes] = []
    for k in range(n_pairs):
        colour = k % 4
        prompt = [int(x) for x in rng.integers(100, 400, size=int(rng.integers(3, 7)))]
        image = None
        if k % image_every == 0:
            w, h = [(40, 30), (28, 28), (90, 30), (30, 60)][k % 4]
            cols, rows = find_grid(w, h, 1, max_num, tile)
            thumb = cols * rows != 1
            tiles = cols * rows + int(thumb)
            p = media / f"pair{k}.png"
            Image.new("RGB", (w, h), COLOURS[colour]).save(p)
            image = (w, h, cols, rows, tiles, thumb, p)
        wrong = (colour + 1 + k % 3) % 4
        answers = [[500 + colour, 600 + colour, 700], [500 + wrong, 600 + wrong, 700 + k % 3, 710][: 3 + k % 2]]
        for ans in answers:
            ids = list(prompt)
            runs = []
            if image is not None:
                w, h, cols, rows, tiles, thumb, p = image
                ids.append(img_s)
                img["ctx"].append(len(ids))
                runs.append((len(ids), tiles))
                ids += [ctx] * tiles
                ids.append(img_e)
                img["w"].append(w), img["h"].append(h), img["cols"].append(cols), img["rows"].append(rows)
                img["tiles"].append(tiles), img["thumb"].append(int(thumb)), img["frame"].append(-1)
                paths.append(str(p).encode())
            q = len(ids)
            ids += ans
            labels = [IGNORE] * q + ans
            keep = np.ones(len(ids), bool)
            for a, n in runs:
                keep[a:a + n] = False
            ids_all += [x for x, m in zip(ids, keep) if m]
            labels_all += [x for x, m in zip(labels, keep) if m]
            tok_off.append(len(ids_all))
            lengths.append(len(ids))
            learned.append(len(ans))
            flags.append(1 if runs else 0)
            img_off.append(len(img["w"]))
            lines.append(k + 1)
    n = 2 * n_pairs
    cols = write_columns(ds, tok_off, lengths, learned, lines, flags, img_off, ids_all, labels_all, img, paths)
    fp = hashlib.sha256(json.dumps(["pairs", n_pairs, seed, image_every]).encode()).hexdigest()
    (ds / "dataset.json").write_text(json.dumps({"name": "pairs", "fingerprint": fp, "inputs": {}, "samples": n,
                                                 "preference": True, "columns": cols}))
    manifest = {"format": "tessera-cache", "version": 2, "fingerprint": fp, "tokens_per_tile": 1,
                "max_length": 512, "samples": n, "tokens": sum(lengths), "images": len(paths),
                "datasets": [{"name": "pairs", "dir": ds.name, "fingerprint": fp, "first_sample": 0, "samples": n,
                              "tokens": sum(lengths), "stored_tokens": len(ids_all), "images": len(paths),
                              "img_context_id": ctx, "preference": True}]}
    (root / "cache" / "manifest.json").write_text(json.dumps(manifest))
    return root / "cache"


def write_pair_plan(out: Path, cache_dir: Path, steps: int, slots_per_step: int, world_size: int,
                    pairs_per_row: int = 2, seed: int = 0) -> Path:
    """Rows of `pairs_per_row` whole pairs (chosen, rejected, chosen, ...) in a seeded order;
    step g holds rows g·slots … (g+1)·slots − 1 whatever the world size, so a 1-rank plan with
    2 slots and a 2-rank plan with 1 hold the same pairs."""
    from tessera_engine.data.cache import PreparedCache

    cache = PreparedCache(str(cache_dir))
    lengths, learned = cache.lengths, cache.learned
    n_pairs = len(cache) // 2
    rows: list[list[int]] = []
    epoch = 0
    while len(rows) < steps * slots_per_step:
        order = np.random.default_rng(seed + epoch).permutation(n_pairs).tolist()
        for a in range(0, len(order) - pairs_per_row + 1, pairs_per_row):
            rows.append([s for u in order[a:a + pairs_per_row] for s in (2 * u, 2 * u + 1)])
        epoch += 1
    rows = rows[: steps * slots_per_step]
    if slots_per_step % world_size:
        raise ValueError("slots per step must divide by the world size")
    pieces = [s for r in rows for s in r]
    row_offset = np.zeros(len(rows) + 1, "<i8")
    row_offset[1:] = np.cumsum([len(r) for r in rows])
    sample = np.array(pieces, "<i4")
    row_tokens = np.array([int(lengths[r].sum()) for r in rows], "<i4")
    row_learned = np.array([int(learned[r].sum()) for r in rows], "<i4")
    row_tiles = np.array([sum(im.tiles for j in r for im in cache.images(j)) for r in rows], "<i4")
    st = {k: [] for k in ("tokens", "learned", "samples", "ls", "sqrt", "pairs", "chosen")}
    for g in range(steps):
        ps = [s for r in rows[g * slots_per_step:(g + 1) * slots_per_step] for s in r]
        st["tokens"].append(int(lengths[ps].sum()))
        st["learned"].append(int(learned[ps].sum()))
        st["samples"].append(len(ps))
        st["ls"].append(int((learned[ps] > 0).sum()))
        st["sqrt"].append(float(sum(math.sqrt(learned[j]) for j in ps)))
        st["pairs"].append(len(ps) // 2)
        st["chosen"].append(int(learned[ps[0::2]].sum()))
    out.mkdir(parents=True, exist_ok=True)
    cols = {
        "mb_offset": _col(out, "mb_offset", np.arange(len(rows) + 1, dtype="<i8"), "i64"),
        "row_offset": _col(out, "row_offset", row_offset, "i64"),
        "row_tokens": _col(out, "row_tokens", row_tokens, "i32"),
        "row_tiles": _col(out, "row_tiles", row_tiles, "i32"),
        "piece_sample": _col(out, "piece_sample", sample, "i32"),
        "piece_start": _col(out, "piece_start", np.zeros(len(sample), "<i4"), "i32"),
        "piece_length": _col(out, "piece_length", lengths[sample].astype("<i4"), "i32"),
        "piece_learned": _col(out, "piece_learned", learned[sample].astype("<i4"), "i32"),
        "mb_tokens": _col(out, "mb_tokens", row_tokens, "i32"),
        "mb_tiles": _col(out, "mb_tiles", row_tiles, "i32"),
        "mb_learned": _col(out, "mb_learned", row_learned, "i32"),
        "step_tokens": _col(out, "step_tokens", np.array(st["tokens"], "<i8"), "i64"),
        "step_learned": _col(out, "step_learned", np.array(st["learned"], "<i8"), "i64"),
        "step_samples": _col(out, "step_samples", np.array(st["samples"], "<i4"), "i32"),
        "step_learned_samples": _col(out, "step_learned_samples", np.array(st["ls"], "<i4"), "i32"),
        "step_sqrt_learned": _col(out, "step_sqrt_learned", np.array(st["sqrt"], "<f8"), "f64"),
        "step_pairs": _col(out, "step_pairs", np.array(st["pairs"], "<i4"), "i32"),
        "step_chosen_learned": _col(out, "step_chosen_learned", np.array(st["chosen"], "<i8"), "i64"),
    }
    fp = hashlib.sha256(json.dumps(["pairs", steps, slots_per_step, pairs_per_row, seed]).encode()).hexdigest()
    plan = {"format": "tessera-plan", "version": 1, "fingerprint": fp, "cache_fingerprint": cache.fingerprint,
            "cache_dir": str(cache_dir), "world_size": world_size, "micro_batches_per_step": slots_per_step // world_size,
            "epochs": 1, "epoch_steps": [steps], "epoch_first_step": [0], "total_steps": steps,
            "micro_batches": len(rows), "rows": len(rows), "pieces": len(pieces),
            "options": {"packing": "soft", "pack_max_length": int(row_tokens.max()), "seed": seed,
                        "preference": True},
            "stats": {}, "columns": cols}
    (out / "plan.json").write_text(json.dumps(plan))
    return out
