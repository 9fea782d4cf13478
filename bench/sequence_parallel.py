"""Activation memory per rank on one long packed row: sequence parallelism (sp, ring) vs one rank.

    .venv/bin/python bench/sequence_parallel.py [--tokens 2048] [--hidden 128] [--layers 2]
        [--heads 8] [--kv-heads 2] [--configs 1x1,2x1,1x2]

Activation memory is what autograd keeps for backward: the bytes of every tensor saved in the
forward (parameters left out), counted once per storage, on each rank. It is measured without
activation checkpointing, so it is the memory sequence parallelism divides. Each configuration
runs in its own processes (gloo on CPU, sp × ring ranks); prints one JSON line per
configuration and the ratios against one rank.

Then the vision tower on 2 ranks, two ways: each rank runs the tiles of its own shard (what
the engine does), or the tiles are split evenly and the features all-gathered; forward +
backward time of the slower rank (--vision-tiles 0 skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))


def row(tokens: int, vocab: int, seed: int = 0):
    """A text row of samples of 300–800 tokens, the last quarter of each learned."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (tokens,), generator=g)
    labels = torch.full((tokens,), -100, dtype=torch.long)
    cu, pos = [0], torch.empty(tokens, dtype=torch.long)
    while cu[-1] < tokens:
        cu.append(min(tokens, cu[-1] + 300 + int(torch.randint(0, 500, (1,), generator=g))))
    for s, e in zip(cu, cu[1:]):
        labels[e - (e - s) // 4:e] = ids[e - (e - s) // 4:e]
        pos[s:e] = torch.arange(e - s)
    return ids, labels, pos, torch.tensor(cu, dtype=torch.int32)


def saved_bytes(model, fn):
    """Run fn() (a forward returning a loss) and count the bytes autograd saved for backward."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    return loss, sum(seen.values())


def worker(rank: int, world: int, sp: int, ring: int, args, model_dir: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from tessera_engine.model.load import load_internvl
    from tessera_engine.model.loss import GlobalNorm, reduce_loss
    from tessera_engine.model.packed import packed_forward
    from tessera_engine.train import parallel
    from tessera_engine.train import sequence_parallel as seqpar

    torch.set_num_threads(1)
    model = load_internvl(model_dir).model
    vocab = model.config.text_config.vocab_size
    ids, labels, pos, cu = row(args.tokens, vocab)
    learned = int((labels[1:] != -100).sum())
    norm = GlobalNorm(float(learned), 1.0, 1.0)
    if world == 1:
        def fwd():
            o = packed_forward(model, ids, pos, cu, None, labels)
            return reduce_loss(o.token_losses, o.sample_index, "token", norm)
    else:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        w = parallel.init_distributed("cpu")
        spc = seqpar.setup(w, sp, ring)
        seqpar.prepare_model(model, spc)
        S = -(-args.tokens // world)
        P = S * world
        pad = P - args.tokens
        ids_p = torch.cat([ids, torch.zeros(pad, dtype=torch.long)])
        pos_p = torch.cat([pos, torch.arange(pad)])
        lab_p = torch.cat([labels, torch.full((pad,), -100, dtype=torch.long)])
        k = spc.shard
        item = dict(input_ids=ids_p[None, k * S:(k + 1) * S], position_ids=pos_p[None, k * S:(k + 1) * S],
                    labels=lab_p[None], cu_seqlens=[cu], shard=(k, S), image_spans=[])

        def fwd():
            return seqpar.shard_loss(model, spc, item, None, norm, "token", torch.device("cpu"))[0]
    t0 = time.perf_counter()
    loss, nbytes = saved_bytes(model, fwd)
    loss.backward()
    secs = time.perf_counter() - t0
    if world > 1:
        total = torch.tensor([float(loss.detach())])
        dist.all_reduce(total)
        gathered = [None] * world
        dist.all_gather_object(gathered, nbytes)
        loss_v = float(total)
        parallel.shutdown(w)
    else:
        gathered, loss_v = [nbytes], float(loss.detach())
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"sp": sp, "ring": ring, "tokens": args.tokens, "loss": loss_v, "fwd_bwd_s": secs,
                       "activation_bytes_per_rank": gathered}, f)


def vision_worker(rank: int, world: int, args, model_dir: str, port: int, out: str) -> None:
    """Two ways to run a row's tiles over 2 ranks: each rank its own shard's tiles (rank 0 holds
    --vision-cut of --vision-tiles), or the tiles split evenly and the features all-gathered
    (differentiably) so each rank can take its share. Times forward + backward per rank."""
    import torch
    import torch.distributed as dist
    import torch.distributed.nn.functional as dfn

    from tessera_engine.model.load import load_internvl
    from tessera_engine.model.packed import image_features
    from tessera_engine.train import parallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    w = parallel.init_distributed("cpu")
    model = load_internvl(model_dir).model
    tile = model.config.vision_config.image_size
    tile = tile[0] if isinstance(tile, (list, tuple)) else tile
    n, cut = args.vision_tiles, args.vision_cut
    pixels = torch.randn(n, 3, tile, tile, generator=torch.Generator().manual_seed(1))
    mine = pixels[:cut] if rank == 0 else pixels[cut:]
    half = pixels[: n // 2] if rank == 0 else pixels[n // 2:]
    times = {}
    for name in ("own_tiles", "even_split_all_gather"):
        best = float("inf")
        for _ in range(args.repeats):
            dist.barrier()
            t0 = time.perf_counter()
            if name == "own_tiles":
                feats = image_features(model, mine)
            else:
                f = image_features(model, half)
                allf = torch.cat(dfn.all_gather(f.contiguous()))
                feats = allf[:cut] if rank == 0 else allf[cut:]
            feats.float().pow(2).mean().backward()
            dist.barrier()  # the slower rank decides the step
            best = min(best, time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        times[name] = best
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"tiles": n, "rank0_tiles": cut, "tile": tile, **times}, fh)
    parallel.shutdown(w)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--configs", default="1x1,2x1,1x2")
    ap.add_argument("--vision-tiles", type=int, default=12, help="tiles of the row (vision comparison; 0: skip)")
    ap.add_argument("--vision-cut", type=int, default=9, help="of which rank 0's shard holds the first N")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    import torch.multiprocessing as mp

    from tessera_engine.model.tiny import build_tiny

    tmp = tempfile.mkdtemp(prefix="tessera-bench-sp-")
    model_dir = os.path.join(tmp, "model")
    build_tiny(model_dir, llm="qwen2", llm_hidden=args.hidden, llm_layers=args.layers, llm_heads=args.heads,
               llm_kv_heads=args.kv_heads, llm_intermediate=args.hidden * 3, tile_size=112, vision_hidden=128,
               vision_layers=4, vision_heads=4, vision_intermediate=512)
    results = []
    for c in filter(None, args.configs.split(",")):
        sp, ring = (int(x) for x in c.split("x"))
        out = os.path.join(tmp, f"{c}.json")
        port = free_port()
        if sp * ring == 1:
            worker(0, 1, 1, 1, args, model_dir, port, out)
        else:
            mp.spawn(worker, args=(sp * ring, sp, ring, args, model_dir, port, out), nprocs=sp * ring, join=True)
        with open(out) as f:
            r = json.load(f)
        r["activation_mib_max"] = max(r["activation_bytes_per_rank"]) / 2**20
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.vision_tiles:
        out = os.path.join(tmp, "vision.json")
        mp.spawn(vision_worker, args=(2, args, model_dir, free_port(), out), nprocs=2, join=True)
        with open(out) as f:
            v = json.load(f)
        print(json.dumps(v), flush=True)
        print(f"vision, {v['tiles']} tiles of {v['tile']}px, rank 0's shard holding {v['rank0_tiles']}: "
              f"own tiles {v['own_tiles']:.3f} s, even split + all-gather {v['even_split_all_gather']:.3f} s "
              f"(forward + backward, slower rank)")
    base = results[0]["activation_mib_max"] if results else 0
    for r in results[1:]:
        print(f"sp {r['sp']} × ring {r['ring']}: activation memory per rank {r['activation_mib_max']:.1f} MiB "
              f"vs {base:.1f} MiB on one rank: ratio {r['activation_mib_max'] / base:.3f}; "
              f"loss {r['loss']:.6f} vs {results[0]['loss']:.6f}")


if __name__ == "__main__":
    main()
