"""Forward over packed rows: several samples back to back, each attending only within itself.

packed_forward() returns per-token losses at the learned positions only, plus the index of the
sample each belongs to, so every reduction (loss.py) is built on top. Logits are computed only
for learned positions and in chunks (recomputed in backward), so a 150k vocabulary never
materialises a sequence x vocabulary tensor.

Labels are aligned with input_ids (labels[t] = input_ids[t] where learned, -100 elsewhere); the
shift to next-token targets happens here and never crosses a sample boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


@dataclass
class PackedOutput:
    token_losses: torch.Tensor  # [M] float32, one per learned token
    sample_index: torch.Tensor  # [M] long, the sample (0..num_samples-1, row-major) each belongs to
    num_samples: int
    learned_counts: torch.Tensor  # [num_samples] long, learned tokens per sample
    positions: torch.Tensor  # [M, 2] long, (row, t) of the hidden state predicting each token
    logits: torch.Tensor | None = None  # [M, V] only when asked for (tests, eval)


@dataclass
class Segments:
    sample_id: torch.Tensor  # [B, T] long: global sample index, -1 on padding after a row's last sample
    group_id: torch.Tensor  # [B, T] long: attention group (samples, and each row's padding tail as its own)
    position_ids: torch.Tensor  # [B, T] long: restarts at 0 per sample
    flat_cu: torch.Tensor  # [G+1] int32: group boundaries over the flattened B*T tokens (flash varlen)
    max_len: int
    num_samples: int


def segments_from_cu_seqlens(cu_seqlens, batch: int, length: int, device) -> Segments:
    """cu_seqlens: a 1-D tensor (one row) or one 1-D tensor/list per row, each [0, e1, ..., ek] with ek <= T."""
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.ndim == 1:
        rows: Sequence = [cu_seqlens]
    elif isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.ndim == 2:
        rows = list(cu_seqlens)
    else:
        rows = list(cu_seqlens)
    if len(rows) != batch:
        raise ValueError(f"cu_seqlens has {len(rows)} row(s), input_ids has {batch}")
    sample_id = torch.full((batch, length), -1, dtype=torch.long)
    group_id = torch.empty((batch, length), dtype=torch.long)
    pos = torch.empty((batch, length), dtype=torch.long)
    flat = [0]
    n = 0
    g = 0
    max_len = 0
    for b, row in enumerate(rows):
        cu = [int(x) for x in (row.tolist() if isinstance(row, torch.Tensor) else row)]
        if not cu or cu[0] != 0 or any(e <= s for s, e in zip(cu, cu[1:])) or cu[-1] > length:
            raise ValueError(f"row {b}: cu_seqlens {cu} must start at 0, increase strictly and end <= {length}")
        bounds = cu + ([length] if cu[-1] < length else [])
        for i, (s, e) in enumerate(zip(bounds, bounds[1:])):
            if i < len(cu) - 1:
                sample_id[b, s:e] = n
                n += 1
            group_id[b, s:e] = g
            g += 1
            pos[b, s:e] = torch.arange(e - s)
            flat.append(b * length + e)
            max_len = max(max_len, e - s)
    return Segments(sample_id.to(device), group_id.to(device), pos.to(device),
                    torch.tensor(flat, dtype=torch.int32, device=device), max_len, n)


def document_causal_mask_mod(group_id: torch.Tensor):
    """FlexAttention mask_mod: a query attends to earlier-or-same keys of its own sample."""

    def doc_causal(b, h, q, kv):
        return (group_id[b, q] == group_id[b, kv]) & (q >= kv)

    return doc_causal


def attention_inputs(impl: str, seg: Segments, dtype: torch.dtype) -> tuple[object, dict]:
    """The mask (or varlen kwargs) that confines attention to each sample, for the model's attention path."""
    if impl.startswith("flash_attention"):
        return None, {"cu_seq_lens_q": seg.flat_cu, "cu_seq_lens_k": seg.flat_cu,
                      "max_length_q": seg.max_len, "max_length_k": seg.max_len}
    gid = seg.group_id
    if impl == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        B, T = gid.shape
        return create_block_mask(document_causal_mask_mod(gid), B, None, T, T, device=gid.device), {}
    T = gid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=gid.device).tril()
    allowed = (gid[:, :, None] == gid[:, None, :]) & causal  # [B, T, T]
    allowed = allowed[:, None]
    if impl == "sdpa":
        return allowed, {}
    # eager and anything else that adds the mask to the scores
    return torch.zeros(allowed.shape, dtype=dtype, device=gid.device).masked_fill(~allowed, torch.finfo(dtype).min), {}


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[N, tokens_per_tile, H] projected features of N tiles."""
    out = model.model.get_image_features(pixel_values=pixel_values)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def embed_with_images(model, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                      image_token_id: int | None = None,
                      image_spans: Sequence[tuple[int, int, int]] | None = None) -> torch.Tensor:
    """Text embeddings with image features scattered at the <IMG_CONTEXT> positions, tile by tile.

    image_spans: one (tiles, lo, hi) per image of pixel_values, in order, when a row holds only
    features [lo, hi) of an image's tiles x tokens-per-tile (concat packing cut it)."""
    img_id = model.config.image_token_id if image_token_id is None else image_token_id
    embeds = model.get_input_embeddings()(input_ids)
    slots = input_ids == img_id
    n_slots = int(slots.sum())
    per_tile = int(model.config.image_seq_length)
    n_tiles = 0 if pixel_values is None else int(pixel_values.shape[0])
    if image_spans is not None:
        if sum(t for t, _, _ in image_spans) != n_tiles:
            raise ValueError(f"image_spans cover {sum(t for t, _, _ in image_spans)} tiles, pixel_values has {n_tiles}")
        used = sum(hi - lo for _, lo, hi in image_spans)
        if n_slots != used:
            raise ValueError(f"{n_slots} <IMG_CONTEXT> tokens but the image spans use {used} features")
        if n_tiles == 0:
            return embeds
        feats = image_features(model, pixel_values.to(embeds.dtype))
        parts, at = [], 0
        for tiles, lo, hi in image_spans:
            parts.append(feats[at:at + tiles].reshape(-1, feats.shape[-1])[lo:hi])
            at += tiles
        return embeds.masked_scatter(slots[..., None], torch.cat(parts).to(embeds.dtype))
    if n_slots != n_tiles * per_tile:
        raise ValueError(f"{n_slots} <IMG_CONTEXT> tokens but {n_tiles} tile(s) x {per_tile} tokens per tile "
                         f"= {n_tiles * per_tile}")
    if n_tiles == 0:
        return embeds
    feats = image_features(model, pixel_values.to(embeds.dtype))
    if feats.shape[1] != per_tile:
        raise ValueError(f"vision tower gives {feats.shape[1]} tokens per tile, config says {per_tile}")
    feats = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
    return embeds.masked_scatter(slots[..., None], feats)


def next_token_targets(labels: torch.Tensor, seg: Segments) -> torch.Tensor:
    """targets[t] = labels[t+1] when t+1 is in the same sample, else -100."""
    sid = seg.sample_id
    if bool(((labels != IGNORE) & (sid < 0)).any()):
        raise ValueError("labels are learned on padding after the last sample of a row")
    tgt = torch.full_like(labels, IGNORE)
    same = (sid[:, 1:] == sid[:, :-1]) & (sid[:, 1:] >= 0)
    tgt[:, :-1] = torch.where(same, labels[:, 1:], torch.full_like(labels[:, 1:], IGNORE))
    return tgt


def _chunk_ce(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight).float()
    return F.cross_entropy(logits, target, reduction="none")


def chunked_token_losses(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         chunk_size: int = 2048) -> torch.Tensor:
    """Cross-entropy per row of hidden [M, H] against target [M]; at most chunk_size x V logits alive,
    recomputed in backward rather than kept."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0.0 * weight.sum()
    parts = []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for s in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[s:s + chunk_size], target[s:s + chunk_size]
        parts.append(checkpoint(_chunk_ce, h, weight, t, use_reentrant=False) if grad else _chunk_ce(h, weight, t))
    return torch.cat(parts)


def packed_forward(
    model,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    cu_seqlens=None,
    pixel_values: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    image_token_id: int | None = None,
    chunk_size: int = 2048,
    return_logits: bool = False,
    image_spans: Sequence[tuple[int, int, int]] | None = None,
) -> PackedOutput:
    """Forward a packed batch. input_ids [T] or [B, T]; cu_seqlens per row (see segments_from_cu_seqlens);
    position_ids default to restarting at 0 per sample; pixel_values [N, 3, S, S] for all tiles of the
    batch in order of their <IMG_CONTEXT> runs. labels aligned with input_ids (-100 = not learned)."""
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
        labels = None if labels is None else labels[None]
        position_ids = None if position_ids is None else position_ids[None]
    B, T = input_ids.shape
    device = input_ids.device
    if cu_seqlens is None:
        cu_seqlens = [torch.tensor([0, T])] * B
    seg = segments_from_cu_seqlens(cu_seqlens, B, T, device)
    if position_ids is None:
        position_ids = seg.position_ids
    elif position_ids.shape != input_ids.shape:
        raise ValueError(f"position_ids {tuple(position_ids.shape)} != input_ids {tuple(input_ids.shape)}")
    if labels is None:
        labels = input_ids.masked_fill(seg.sample_id < 0, IGNORE)

    embeds = embed_with_images(model, input_ids, pixel_values, image_token_id, image_spans)
    impl = model.config.text_config._attn_implementation or "sdpa"
    mask, extra = attention_inputs(impl, seg, embeds.dtype)
    out = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                     use_cache=False, **extra)
    hidden = out.last_hidden_state

    target = next_token_targets(labels.to(device), seg)
    learned = target != IGNORE
    positions = learned.nonzero()
    h = hidden[learned]
    t = target[learned]
    weight = model.get_output_embeddings().weight
    losses = chunked_token_losses(h, weight, t, chunk_size)
    sample_index = seg.sample_id[learned]
    counts = torch.bincount(sample_index, minlength=seg.num_samples)
    logits = None
    if return_logits:
        logits = torch.cat([F.linear(h[s:s + chunk_size], weight).float() for s in range(0, h.shape[0], chunk_size)]) \
            if h.shape[0] else h.new_zeros(0, weight.shape[0], dtype=torch.float32)
    return PackedOutput(losses, sample_index, seg.num_samples, counts, positions, logits)


# ---------------------------------------------------------------- generation


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    pixel_values: Sequence[torch.Tensor | None] | None = None,
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_ids: Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """Continue one or several tokenised prompts (each with its own tiles, or None). Greedy by default.

    Returns the new tokens of each prompt, stopped before the first end-of-sequence token."""
    device = model.get_input_embeddings().weight.device
    eos = list(eos_token_ids or [])
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, so every prompt ends where generation starts
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        attn[i, width - len(p):] = 1
    tiles = [pv for pv in (pixel_values or []) if pv is not None and pv.shape[0] > 0]
    pv = torch.cat(tiles).to(device=device, dtype=model.dtype) if tiles else None
    n_slots = int((ids == model.config.image_token_id).sum())
    n_tiles = 0 if pv is None else pv.shape[0]
    if n_slots != n_tiles * model.config.image_seq_length:
        raise ValueError(f"{n_slots} <IMG_CONTEXT> tokens but {n_tiles} tile(s) x {model.config.image_seq_length}")
    if seed is not None:
        torch.manual_seed(seed)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad,
              eos_token_id=eos or None)
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p, top_k=top_k)
    if pv is not None:  # an explicit pixel_values=None makes generate() run the vision tower on None
        kw["pixel_values"] = pv
    out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kw)
    result = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result
