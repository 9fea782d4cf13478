"""One rank of a sequence-parallel check (run by torchrun from test_sequence_parallel.py).

Every rank runs its shards of the plan's first micro-batches and also the unsplit rows in one
process's way (packed_forward); rank 0 writes the largest differences of loss and gradients
(summed over ranks) for each reduction."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from tessera_engine.data.cache import PreparedCache, TrainingPlan
from tessera_engine.data.loader import Tiling, _PlanSlice
from tessera_engine.model.load import load_internvl
from tessera_engine.model.loss import GlobalNorm, reduce_loss
from tessera_engine.model.packed import packed_forward
from tessera_engine.train import parallel
from tessera_engine.train import sequence_parallel as seqpar


def main(model_dir: str, cache_dir: str, plan_dir: str, out: str, count: int) -> None:
    torch.manual_seed(0)
    world = parallel.init_distributed("cpu")
    plan = TrainingPlan(plan_dir, cache=PreparedCache(cache_dir))
    spc = seqpar.setup(world, plan.sp_size, plan.ring_size)
    loaded = load_internvl(model_dir)
    sharded, info = loaded.model, loaded.info
    whole = load_internvl(model_dir).model
    seqpar.prepare_model(sharded, spc)
    tiling = Tiling(tile=info.tile_size, min_num=info.min_dynamic_patch, max_num=info.max_dynamic_patch,
                    use_thumbnail=info.use_thumbnail)
    mine = _PlanSlice(cache_dir, plan_dir, spc.dp_rank, 0, tiling, shard=spc.shard)
    rows = _PlanSlice(cache_dir, plan_dir, spc.dp_rank, 0, tiling)
    result = {}
    for reduction in ("token", "square"):
        for m in (sharded, whole):
            m.zero_grad(set_to_none=True)
        loss_sp = torch.zeros((), dtype=torch.float64)
        loss_one = torch.zeros((), dtype=torch.float64)
        learned = 0
        for k in range(count):
            item, full = mine[k], rows[k]
            t = plan.step_totals(*plan.position(item["global_step"]))
            norm = GlobalNorm(float(t.learned_tokens), float(t.learned_samples), float(t.sqrt_learned))
            px = item["pixel_values"] if item["pixel_values"].shape[0] else None
            loss, n = seqpar.shard_loss(sharded, spc, item, px, norm, reduction, torch.device("cpu"))
            loss.backward()
            loss_sp += loss.detach().double()
            learned += n
            assert n == item["learned"], (n, item["learned"])
            o = packed_forward(whole, full["input_ids"], full["position_ids"], full["cu_seqlens"],
                               full["pixel_values"] if full["pixel_values"].shape[0] else None, full["labels"],
                               image_spans=full["image_spans"])
            ref = reduce_loss(o.token_losses, o.sample_index, reduction, norm, num_samples=o.num_samples)
            ref.backward()
            loss_one += ref.detach().double()
        dist.all_reduce(loss_sp)
        grads = {}
        worst, where = 0.0, ""
        for (name, p), (_, q) in zip(sharded.named_parameters(), whole.named_parameters()):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(g)
            ref = q.grad if q.grad is not None else torch.zeros_like(q)
            d = float((g - ref).abs().max()) if g.numel() else 0.0
            grads[name] = float(ref.abs().max()) if ref.numel() else 0.0
            if d > worst:
                worst, where = d, name
        result[reduction] = {"loss_sp": float(loss_sp), "loss_one": float(loss_one), "grad_diff": worst,
                             "grad_diff_at": where, "grad_scale": max(grads.values()),
                             "vision_grad": grads.get("model.vision_tower.embeddings.patch_embeddings.projection.weight",
                                                      max(v for k2, v in grads.items() if "vision_tower" in k2))}
    if world.rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    parallel.shutdown(world)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
