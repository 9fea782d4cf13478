"""Sequence parallelism: one long packed row cut over sp_size × ring_size ranks.

The plan cut every row into cp = sp × ring equal shards (data/shards.py builds this rank's).
Ranks form a DeviceMesh ("dp", "ring", "sp"); rank (ring r, sp s) of a row's group holds
shard r·sp + s. Around every language-model attention:

1. Ulysses (sp): an all-to-all turns [all heads, own shard] into [heads/sp, the sp group's
   shards] = one contiguous chunk r of the row (sp·S tokens). Key/value heads are split the
   same way when they divide by sp; otherwise they are repeated up to the query heads first
   (grouped-query attention).
2. Ring (ring): each rank attends its chunk's queries to every chunk's keys/values, passing
   the key/value blocks round the ring group (ring − 1 shifts), and merges the blocks' partial
   results by their log-sum-exp (online softmax). Masks come from the whole row's sample
   bounds, known to every rank: a token attends only to earlier tokens of its own sample,
   whichever chunk they are in.
3. The reverse all-to-all gives back [all heads, own shard].

Both collectives are autograd functions whose backward is the reverse exchange, so the
gradients are those of the unsplit row. With ring_size 1 the chunk is the whole row and the
model's own attention (sdpa with the row's mask, or flash varlen with its cu_seqlens) runs on
it. The loss: each rank takes the targets predicted from its own positions (the last position
of a shard predicts the next shard's first token) and weighs them with the plan's global
totals and the whole row's per-sample counts, so the ranks' losses add up to the row's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..model.loss import MODES, GlobalNorm
from ..model.packed import IGNORE, attention_inputs, chunked_token_losses, embed_with_images, \
    next_token_targets, segments_from_cu_seqlens

ATTN_NAME = "tessera_sequence_parallel"
_NEG = -1e30  # a masked score: finite, so a query with no key in a block gives no NaN
_Q_CHUNK = 1024  # queries per block piece: bounds the scores alive at once


# ------------------------------------------------------------------ differentiable collectives


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over equal chunks of dim 0; the backward is the same exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        g = g.contiguous()
        out = torch.empty_like(g)
        dist.all_to_all_single(out, g, group=ctx.group)
        return out, None


def _shift(x: torch.Tensor, group, to: int, frm: int) -> torch.Tensor:
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, dist.get_global_rank(group, to), group),
           dist.P2POp(dist.irecv, out, dist.get_global_rank(group, frm), group)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    return out


def seq_to_heads(x: torch.Tensor, group, n: int) -> torch.Tensor:
    """[B, H, S, D] (own shard, all heads) -> [B, H/n, n·S, D] (the group's shards, own heads)."""
    if n == 1:
        return x
    B, H, S, D = x.shape
    y = x.reshape(B, n, H // n, S, D).transpose(0, 1)  # [n, B, H/n, S, D]: chunk j goes to rank j
    y = _AllToAll.apply(y, group)  # chunk j now came from rank j: its shard, our heads
    return y.permute(1, 2, 0, 3, 4).reshape(B, H // n, n * S, D)


def heads_to_seq(x: torch.Tensor, group, n: int) -> torch.Tensor:
    """[B, H/n, n·S, D] -> [B, H, S, D]: the inverse of seq_to_heads."""
    if n == 1:
        return x
    B, h, T, D = x.shape
    y = x.reshape(B, h, n, T // n, D).permute(2, 0, 1, 3, 4)  # [n, B, h, S, D]: shard j goes to rank j
    y = _AllToAll.apply(y, group)  # chunk j: our shard, rank j's heads
    return y.transpose(0, 1).reshape(B, n * h, T // n, D)


# ------------------------------------------------------------------ the mesh


@dataclass
class SequenceParallel:
    sp: int
    ring: int
    dp: int
    sp_rank: int
    ring_rank: int
    dp_rank: int
    sp_group: object = None
    ring_group: object = None
    mesh: object = None
    base_impl: str = "sdpa"

    @property
    def cp(self) -> int:
        return self.sp * self.ring

    @property
    def shard(self) -> int:
        """Which shard of each row this rank holds."""
        return self.ring_rank * self.sp + self.sp_rank


def setup(world, sp: int, ring: int) -> SequenceParallel | None:
    """The ("dp", "ring", "sp") mesh over the world (sp innermost: neighbouring ranks, the fastest
    links, do the all-to-all). None without sequence parallelism."""
    cp = sp * ring
    if cp == 1:
        return None
    if world.size % cp:
        raise RuntimeError(f"sp_size × ring_size = {sp} × {ring} does not divide the {world.size} ranks")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(world.device.type, (world.size // cp, ring, sp), mesh_dim_names=("dp", "ring", "sp"))
    return SequenceParallel(
        sp=sp, ring=ring, dp=world.size // cp,
        sp_rank=mesh.get_local_rank("sp"), ring_rank=mesh.get_local_rank("ring"), dp_rank=mesh.get_local_rank("dp"),
        sp_group=mesh.get_group("sp"), ring_group=mesh.get_group("ring"), mesh=mesh,
    )


def prepare_model(model, spc: SequenceParallel) -> None:
    """Check the language model's heads against sp_size and route its attention through here."""
    from transformers import AttentionInterface

    cfg = model.config.text_config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if heads % spc.sp:
        raise RuntimeError(f"sp_size {spc.sp}: the language model has {heads} attention heads, which do not "
                           f"divide by sp_size; choose an sp_size that divides {heads} (and use ring_size for the rest)")
    impl = cfg._attn_implementation or "sdpa"
    if impl != ATTN_NAME:
        if impl not in ("sdpa", "eager") and not impl.startswith("flash_attention"):
            raise RuntimeError(f"sequence parallelism runs with sdpa, eager or flash attention, "
                               f"the model uses {impl!r}")
        spc.base_impl = impl
    spc.kv_heads = kv  # type: ignore[attr-defined]
    AttentionInterface.register(ATTN_NAME, _attention)
    cfg._attn_implementation = ATTN_NAME


# ------------------------------------------------------------------ attention


@dataclass
class _Row:
    """What every layer's attention needs about the current row (built once per micro-batch)."""

    spc: SequenceParallel
    group_id: torch.Tensor  # [P] attention group of every token of the whole row
    chunk: int  # tokens per ring chunk (sp shards)
    seg: object  # the whole row's Segments
    masks: dict = field(default_factory=dict)

    def allowed(self, qc: int, kc: int) -> torch.Tensor | None:
        """[C, C] bool: queries of chunk qc that may see keys of chunk kc; None when none may."""
        key = (qc, kc)
        if key not in self.masks:
            C = self.chunk
            if kc > qc:
                self.masks[key] = None
            else:
                q = torch.arange(qc * C, (qc + 1) * C, device=self.group_id.device)
                k = torch.arange(kc * C, (kc + 1) * C, device=self.group_id.device)
                m = (self.group_id[q][:, None] == self.group_id[k][None, :]) & (q[:, None] >= k[None, :])
                self.masks[key] = m if bool(m.any()) else None
        return self.masks[key]


def _scores(q, k, allowed, scale):
    sc = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return sc.masked_fill(~allowed, _NEG)


def _rep(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.repeat_interleave(n, dim=1) if n > 1 else x


class _RingAttention(torch.autograd.Function):
    """Blockwise attention of this rank's chunk to every chunk of its ring, key/value blocks
    passed round the ring. Forward merges blocks by log-sum-exp (online softmax); backward
    recomputes each block's probabilities from the final log-sum-exp and passes the key/value
    gradients round the ring with their blocks, then home. Every rank makes the same exchanges
    in the same order whatever its masks, so the collectives always pair up."""

    @staticmethod
    def forward(ctx, q, k, v, row: "_Row", scale: float):
        spc = row.spc
        me, n = spc.ring_rank, spc.ring
        rep = q.shape[1] // k.shape[1]
        B, h, C, D = q.shape
        out = torch.zeros(B, h, C, D, dtype=torch.float32, device=q.device)
        lse = torch.full((B, h, C), -float("inf"), dtype=torch.float32, device=q.device)
        kc, vc = k.contiguous(), v.contiguous()
        for step in range(n):
            if step:
                kc = _shift(kc, spc.ring_group, (me + 1) % n, (me - 1) % n)
                vc = _shift(vc, spc.ring_group, (me + 1) % n, (me - 1) % n)
            m = row.allowed(me, (me - step) % n)
            if m is None:
                continue
            kk, vv = _rep(kc, rep), _rep(vc, rep)
            for s in range(0, C, _Q_CHUNK):
                sc = _scores(q[:, :, s:s + _Q_CHUNK], kk, m[s:s + _Q_CHUNK], scale)
                bl = torch.logsumexp(sc, dim=-1)
                o = torch.matmul(torch.exp(sc - bl[..., None]), vv.float())
                new = torch.logaddexp(lse[:, :, s:s + _Q_CHUNK], bl)
                out[:, :, s:s + _Q_CHUNK] = (out[:, :, s:s + _Q_CHUNK] * torch.exp(lse[:, :, s:s + _Q_CHUNK] - new)[..., None]
                                             + o * torch.exp(bl - new)[..., None])
                lse[:, :, s:s + _Q_CHUNK] = new
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.row, ctx.scale = row, scale
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        row, scale = ctx.row, ctx.scale
        spc = row.spc
        me, n = spc.ring_rank, spc.ring
        rep = q.shape[1] // k.shape[1]
        B, hk, C, D = k.shape
        dout = dout.float()
        delta = (dout * out).sum(-1)  # [B, h, C]
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        kc, vc = k.contiguous(), v.contiguous()
        nxt, prv = (me + 1) % n, (me - 1) % n
        for step in range(n):
            if step:
                # a block's key/value gradients travel with it
                kc, vc = _shift(kc, spc.ring_group, nxt, prv), _shift(vc, spc.ring_group, nxt, prv)
                dk, dv = _shift(dk, spc.ring_group, nxt, prv), _shift(dv, spc.ring_group, nxt, prv)
            m = row.allowed(me, (me - step) % n)
            if m is None:
                continue
            kk, vv = _rep(kc, rep).float(), _rep(vc, rep).float()
            dkk = torch.zeros_like(kk)
            dvv = torch.zeros_like(vv)
            for s in range(0, C, _Q_CHUNK):
                sl = slice(s, s + _Q_CHUNK)
                p = torch.exp(_scores(q[:, :, sl], kk, m[sl], scale) - lse[:, :, sl, None])
                do = dout[:, :, sl]
                dvv += torch.matmul(p.transpose(-1, -2), do)
                ds = p * (torch.matmul(do, vv.transpose(-1, -2)) - delta[:, :, sl, None])
                dq[:, :, sl] += torch.matmul(ds, kk) * scale
                dkk += torch.matmul(ds.transpose(-1, -2), q[:, :, sl].float()) * scale
            dk += dkk.view(B, hk, rep, C, D).sum(2) if rep > 1 else dkk
            dv += dvv.view(B, hk, rep, C, D).sum(2) if rep > 1 else dvv
        if n > 1:
            # after n − 1 shifts we hold the next rank's block: one more brings every block home
            dk, dv = _shift(dk, spc.ring_group, nxt, prv), _shift(dv, spc.ring_group, nxt, prv)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The language model's attention under sequence parallelism (registered as ATTN_NAME)."""
    from transformers import AttentionInterface

    row: _Row | None = kwargs.pop("tessera_row", None)
    if row is None:
        # A forward outside a sharded row (an empty slot's one-token row): plain local attention.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    spc = row.spc
    n = spc.sp
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    hk = key.shape[1]
    if hk % n:
        # grouped-query heads that do not split over sp: give every query head its own copy
        key = key.repeat_interleave(query.shape[1] // hk, dim=1)
        value = value.repeat_interleave(query.shape[1] // hk, dim=1)
    q = seq_to_heads(query, spc.sp_group, n)
    k = seq_to_heads(key, spc.sp_group, n)
    v = seq_to_heads(value, spc.sp_group, n)
    if spc.ring == 1:
        # the chunk is the whole row: the model's own attention with the row's mask
        impl = spc.base_impl
        mask, extra = attention_inputs(impl, row.seg, q.dtype)
        fn = AttentionInterface().get_interface(impl, None) if impl != "eager" else None
        if fn is None:
            from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward as fn
        sub = _HeadView(module, q.shape[1] // k.shape[1])
        out, _ = fn(sub, q, k, v, mask, scaling=scale, dropout=dropout, **extra)  # [B, T, h, D]
        out = out.transpose(1, 2)
    else:
        out = _RingAttention.apply(q, k, v, row, scale)
    out = heads_to_seq(out, spc.sp_group, n)  # [B, H, S, D]
    return out.transpose(1, 2).contiguous(), None


class _HeadView:
    """The attention module as the model's attention functions read it, with this rank's head grouping."""

    def __init__(self, module, groups: int):
        self._m = module
        self.num_key_value_groups = groups
        self.is_causal = True
        self.training = module.training

    def __getattr__(self, name):
        return getattr(self._m, name)


# ------------------------------------------------------------------ forward and loss


def shard_loss(model, spc: SequenceParallel, item: dict, pixels: torch.Tensor | None, norm: GlobalNorm,
               reduction: str, device: torch.device, chunk_size: int = 2048,
               return_parts: bool = False):
    """This rank's share of the global-batch loss for its shard of the row, and its learned tokens."""
    if reduction not in MODES:
        raise ValueError(f"loss reduction must be one of {MODES}, got {reduction!r}")
    ids = item["input_ids"].to(device)
    pos = item["position_ids"].to(device)
    labels = item["labels"].to(device)
    k, S = item["shard"]
    P = labels.shape[1]
    seg = segments_from_cu_seqlens(item["cu_seqlens"], 1, P, device)
    row = _Row(spc, seg.group_id[0], spc.sp * S, seg)
    embeds = embed_with_images(model, ids, pixels, image_spans=item["image_spans"] if pixels is not None else [])
    out = model.model.language_model(inputs_embeds=embeds, attention_mask=None, position_ids=pos, use_cache=False,
                                     tessera_row=row)
    hidden = out.last_hidden_state  # [1, S, H]
    target = next_token_targets(labels, seg)  # the whole row's targets
    sid = seg.sample_id
    learned_all = target != IGNORE
    mine = torch.zeros_like(learned_all)
    mine[:, k * S:(k + 1) * S] = True
    learned = learned_all & mine
    h = hidden[learned[:, k * S:(k + 1) * S]]
    t = target[learned]
    losses = chunked_token_losses(h, model.get_output_embeddings().weight, t, chunk_size)
    s_idx = sid[learned]
    if reduction == "token":
        w = torch.full_like(losses, 1.0 / norm.tokens)
    else:
        # per-sample counts over the whole row: a sample's tokens may sit on several ranks
        n = torch.bincount(sid[learned_all], minlength=seg.num_samples).double()[s_idx]
        w = (1.0 / (n * norm.samples) if reduction == "sample" else 1.0 / (n.sqrt() * norm.sqrt_sum)).float()
    loss = (losses * w).sum()
    if return_parts:
        return loss, int(t.numel()), losses, s_idx
    return loss, int(t.numel())


def attention_check(spc: SequenceParallel) -> str:
    """A line for the log: what runs where."""
    path = "ring attention (blockwise, log-sum-exp merge)" if spc.ring > 1 else f"{spc.base_impl} on the gathered row"
    return (f"sequence parallel: sp {spc.sp} × ring {spc.ring} per row, data parallel {spc.dp}; "
            f"this rank holds shard {spc.shard}; attention: Ulysses all-to-all + {path}")


__all__ = ["SequenceParallel", "setup", "prepare_model", "shard_loss", "seq_to_heads", "heads_to_seq",
           "attention_check", "ATTN_NAME"]
