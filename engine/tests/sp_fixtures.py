"""Sequence-parallel plans for the tests: a plan of the fixtures' kind with each row cut into
sp × ring shards, the columns written token by token (what `buildPlan` computes)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from train_fixtures import _col


def shard_plan(src: Path, out: Path, sp: int, ring: int) -> Path:
    from tessera_engine.data.cache import PreparedCache, TrainingPlan

    meta = json.loads((src / "plan.json").read_text())
    cache = PreparedCache(meta["cache_dir"])
    plan = TrainingPlan(str(src), cache=cache)
    n = sp * ring
    tpt = cache.tokens_per_tile
    rows = int(plan.cols.count("row_tokens"))
    padded = np.zeros(rows, "<i4")
    tokens, learned, tiles = (np.zeros(rows * n, "<i4") for _ in range(3))
    for r in range(rows):
        row = plan.row(r)
        packed = cache.pack(row)
        L = len(packed.input_ids)
        S = -(-L // n)
        padded[r] = S * n
        piece_end = np.repeat(row.cu_seqlens[1:], row.lengths)  # end of each position's piece
        for q in range(L):
            k = q // S
            tokens[r * n + k] += 1
            if q + 1 < piece_end[q] and packed.labels[q + 1] != -100:
                learned[r * n + k] += 1
        for k in range(n):
            seen = set()
            for j, pim in enumerate(packed.images):
                for q in range(max(pim.row_start, k * S), min(pim.row_start + pim.token_hi - pim.token_lo, (k + 1) * S)):
                    seen.add((j, (pim.token_lo + q - pim.row_start) // tpt))
            tiles[r * n + k] = len(seen)
    out.mkdir(parents=True, exist_ok=True)
    for name, col in meta["columns"].items():
        shutil.copy2(src / col["file"], out / col["file"])
    meta["columns"].update(
        row_padded=_col(out, "row_padded", padded, "i32"),
        shard_tokens=_col(out, "shard_tokens", tokens, "i32"),
        shard_learned=_col(out, "shard_learned", learned, "i32"),
        shard_tiles=_col(out, "shard_tiles", tiles, "i32"),
    )
    meta["world_size"] = plan.world_size * n
    meta["options"] = dict(meta["options"], sp_size=sp, ring_size=ring)
    meta["fingerprint"] = hashlib.sha256((meta["fingerprint"] + f"sp{sp}ring{ring}").encode()).hexdigest()
    (out / "plan.json").write_text(json.dumps(meta))
    return out


def straddling_images(plan_dir: Path, rows: int) -> int:
    """Images of the first `rows` rows whose context tokens lie on both sides of a shard cut."""
    from tessera_engine.data.cache import PreparedCache, TrainingPlan

    meta = json.loads((plan_dir / "plan.json").read_text())
    cache = PreparedCache(meta["cache_dir"])
    plan = TrainingPlan(str(plan_dir), cache=cache)
    count = 0
    for r in range(rows):
        S = plan.row_shards(r).shard_len
        for pim in cache.pack(plan.row(r)).images:
            a, b = pim.row_start, pim.row_start + pim.token_hi - pim.token_lo - 1
            count += a // S != b // S
    return count
