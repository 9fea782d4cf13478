"""One rank's shard of a row, for sequence parallelism (docs/sequence-parallel.md).

The plan cut the row into equal shards (padding only at its end) and says what each holds;
this builds shard k: its tokens and positions, the whole row's labels and sample bounds (every
rank needs them to mask attention across the ring and to shift targets over the cut), and
the tiles whose context tokens the shard holds, with the share of their features it uses.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .cache import CacheFormatError, MicroBatch, PreparedCache, TrainingPlan


def shard_item(cache: PreparedCache, plan: TrainingPlan, mb: MicroBatch, k: int,
               tiles_of: Callable[[object, int], np.ndarray]) -> dict:
    """tiles_of(image, sample) -> (tiles, 3, S, S): all tiles of one planned image or frame."""
    if len(mb.rows) != 1:
        raise CacheFormatError(f"micro-batch {mb.index}: sequence parallelism needs one row per micro-batch, "
                               f"the plan has {len(mb.rows)}")
    row = mb.rows[0]
    sh = plan.row_shards(row.index)
    packed = cache.pack(row)
    L, P, n = len(packed.input_ids), sh.padded, plan.cp_size
    if P < L or P % n or sum(sh.tokens) != L:
        raise CacheFormatError(f"row {row.index}: {L} tokens, the plan pads it to {P} in {n} shards "
                               f"holding {sum(sh.tokens)}: run `tessera data plan` again")
    S = P // n
    ids = np.zeros(P, np.int64)
    labels = np.full(P, -100, np.int64)
    pos = np.empty(P, np.int64)
    ids[:L], labels[:L], pos[:L] = packed.input_ids, packed.labels, packed.position_ids
    pos[L:] = np.arange(P - L)  # the padding is one group of its own, learned nowhere
    a, b = k * S, (k + 1) * S
    tpt = cache.tokens_per_tile
    pixels, spans = [], []
    for pim in packed.images:
        r0 = pim.row_start
        lo, hi = max(r0, a), min(r0 + pim.token_hi - pim.token_lo, b)
        if lo >= hi:
            continue
        # the image's features [f_lo, f_hi) fall in this shard: run only the tiles that make them
        f_lo, f_hi = pim.token_lo + lo - r0, pim.token_lo + hi - r0
        t0, t1 = f_lo // tpt, -(-f_hi // tpt)
        pixels.append(tiles_of(pim.image, pim.sample)[t0:t1])
        spans.append((t1 - t0, f_lo - t0 * tpt, f_hi - t0 * tpt))
    tiles = sum(t for t, _, _ in spans)
    if tiles != sh.tiles[k]:
        raise CacheFormatError(f"row {row.index} shard {k}: its context tokens need {tiles} tiles, "
                               f"the plan says {sh.tiles[k]}: run `tessera data plan` again")
    tile = pixels[0].shape[-1] if pixels else 0
    return dict(
        input_ids=torch.from_numpy(ids[a:b])[None],
        position_ids=torch.from_numpy(pos[a:b])[None],
        labels=torch.from_numpy(labels)[None],  # the whole row: targets cross the cut
        cu_seqlens=[torch.from_numpy(row.cu_seqlens.astype(np.int32))],
        row_length=P,
        shard=(k, S),
        pixel_values=torch.from_numpy(np.concatenate(pixels)) if pixels else torch.zeros(0, 3, tile, tile),
        image_spans=spans,
        tokens=sh.tokens[k],
        learned=sh.learned[k],
        # a row's pieces and the row itself are counted by its first shard only
        pieces=int(len(row.samples)) if k == 0 else 0,
        rows=1 if k == 0 else 0,
    )
