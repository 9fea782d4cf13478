"""Learned-only chunked logits vs full logits on one long packed row: peak memory and time of
the LM head + cross-entropy, forward and backward.

    .venv/bin/python bench/model_logits.py [--tokens 4096] [--hidden 896] [--vocab 151655]
        [--learned 0.25] [--chunk 2048] [--device cpu|cuda] [--dtype float32|bfloat16]

Each variant runs in its own process (CPU peak memory is the process's peak RSS above its
state after setup; on CUDA, max_memory_allocated above the same point). Prints one JSON line
per variant and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))


def labels_for(tokens: int, learned: float, generator):
    """Packed samples of ~512 tokens whose last `learned` fraction is the answer (learned)."""
    import torch

    labels = torch.full((tokens,), -100, dtype=torch.long)
    cu = [0]
    while cu[-1] < tokens:
        cu.append(min(tokens, cu[-1] + 384 + int(torch.randint(0, 256, (1,), generator=generator))))
    for s, e in zip(cu, cu[1:]):
        n = max(1, int((e - s) * learned))
        labels[e - n:e] = torch.randint(0, 1000, (n,), generator=generator)
    return labels, torch.tensor(cu, dtype=torch.int32)


def run_variant(a) -> dict:
    import torch
    import torch.nn.functional as F

    from tessera_engine.model.packed import Segments, chunked_token_losses, next_token_targets, segments_from_cu_seqlens

    dev = torch.device(a.device)
    dt = getattr(torch, a.dtype)
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(a.vocab, a.hidden, generator=g) / a.hidden ** 0.5).to(dev, dt).requires_grad_()
    hidden = torch.randn(1, a.tokens, a.hidden, generator=g).to(dev, dt).requires_grad_()
    labels, cu = labels_for(a.tokens, a.learned, g)
    labels = labels[None].to(dev)
    seg: Segments = segments_from_cu_seqlens(cu, 1, a.tokens, dev)
    target = next_token_targets(labels, seg)

    def full():
        logits = F.linear(hidden[0], weight).float()  # the stock path: every position x vocabulary
        return F.cross_entropy(logits, target[0], ignore_index=-100, reduction="sum")

    def learned():
        keep = target[0] != -100
        return chunked_token_losses(hidden[0][keep], weight, target[0][keep], a.chunk).sum()

    fn = full if a.variant == "full" else learned
    # CPU: peak RSS is a high-water mark, so the baseline is taken before the first pass and the
    # first pass is measured. CUDA: a warm-up pass first, then the allocator's peak above baseline.
    if dev.type == "cuda":
        fn().backward()
        weight.grad = hidden.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # load every code path on a toy problem so the baseline holds the libraries, not the work
        w_small = torch.randn(64, a.hidden, requires_grad=True)
        h_small = torch.randn(256, a.hidden, requires_grad=True)
        t_small = torch.randint(0, 64, (256,))
        F.cross_entropy(F.linear(h_small, w_small), t_small).backward()
        chunked_token_losses(h_small, w_small, t_small, 64).sum().backward()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        loss = fn()
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        weight.grad = hidden.grad = None
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": a.variant, "device": str(dev), "dtype": a.dtype, "tokens": a.tokens, "hidden": a.hidden,
            "vocab": a.vocab, "learned_tokens": int((target != -100).sum()), "chunk": a.chunk,
            "peak_extra_mib": round(peak / 2**20, 1), "time_s": round(statistics.median(times), 4),
            "loss_per_token": float(loss.detach()) / max(1, int((target != -100).sum()))}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=896)  # Qwen2-0.5B (InternVL2-1B) width
    p.add_argument("--vocab", type=int, default=151655)  # InternVL2-1B vocabulary
    p.add_argument("--learned", type=float, default=0.25)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--variant", choices=["full", "learned"], default=None)
    a = p.parse_args()
    if a.variant:
        print(json.dumps(run_variant(a)), flush=True)
        return 0
    results = {}
    for variant in ("full", "learned"):
        cmd = [sys.executable, __file__, "--variant", variant] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[variant]), flush=True)
    f, l = results["full"], results["learned"]
    if abs(f["loss_per_token"] - l["loss_per_token"]) > 1e-3 * max(1.0, abs(f["loss_per_token"])):
        print(f"losses differ: {f['loss_per_token']} vs {l['loss_per_token']}", file=sys.stderr)
        return 1
    print(f"{a.tokens} tokens ({l['learned_tokens']} learned) x vocab {a.vocab}, hidden {a.hidden}, {a.dtype} on "
          f"{f['device']}: full logits {f['peak_extra_mib']:.0f} MiB, {f['time_s']:.3f} s; learned-only chunked "
          f"{l['peak_extra_mib']:.0f} MiB, {l['time_s']:.3f} s "
          f"({f['peak_extra_mib'] / max(l['peak_extra_mib'], 1e-9):.1f}x less memory, "
          f"{f['time_s'] / l['time_s']:.2f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
