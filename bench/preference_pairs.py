"""Preference pairs: a packed pair step against the same pairs padded, and the memory of
precomputed reference log-probabilities against a frozen copy of the model.

    .venv/bin/python bench/preference_pairs.py [--pairs 24] [--pack 1024] [--batch 4] [--rows 4]
        [--hidden 64] [--layers 2] [--steps 2]

One step = forward + backward of the DPO (sigmoid) loss over all pairs, with the reference's
log-probabilities given (precomputed). Packed: pairs back to back in rows of `--pack` tokens,
chosen and rejected as two sequences of one row (what the planner writes). Padded: `--batch`
pairs per forward, their 2·batch sequences padded to the longest (trl's concatenated forward).
Tokens/s counts real tokens only, the same for both. Prints JSON lines and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))


def make_model(dir_: str, hidden: int, layers: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tessera_engine.model.load import load_internvl
    from tessera_engine.model.tiny import build_tiny

    vocab = {f"w{i}": i for i in range(1000)}
    vocab["<|endoftext|>"] = 1000
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tj = os.path.join(dir_, "tok.json")
    tok.save(tj)
    build_tiny(os.path.join(dir_, "m"), tokenizer_json=tj, llm_hidden=hidden, llm_layers=layers,
               llm_heads=4, llm_kv_heads=2, llm_intermediate=2 * hidden)
    return load_internvl(os.path.join(dir_, "m")).model


def make_pairs(n: int, seed: int):
    """(prompt, chosen answer, rejected answer) token lists: prompts 64-512 tokens, answers 8-128."""
    import torch

    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    out = []
    for _ in range(n):
        p = torch.randint(10, 990, (r(64, 512),), generator=g).tolist()
        out.append((p, torch.randint(10, 990, (r(8, 128),), generator=g).tolist(),
                    torch.randint(10, 990, (r(8, 128),), generator=g).tolist()))
    return out


def sequences(pairs):
    """Each pair's two sequences (ids, labels): the answer learned, the prompt not."""
    seqs = []
    for p, c, r in pairs:
        for a in (c, r):
            seqs.append((p + a, [-100] * len(p) + a))
    return seqs


def packed_rows(seqs, cap: int):
    rows, cur, used = [], [], 0
    for k in range(0, len(seqs), 2):
        n = len(seqs[k][0]) + len(seqs[k + 1][0])
        if cur and used + n > cap:
            rows.append(cur)
            cur, used = [], 0
        cur += [seqs[k], seqs[k + 1]]
        used += n
    if cur:
        rows.append(cur)
    return rows


def step(model, batches, ref, beta: float = 0.1) -> float:
    """Forward + backward of the sigmoid loss over every batch (each a [rows, T] input)."""
    import torch
    import torch.nn.functional as F

    from tessera_engine.model.packed import packed_forward
    from tessera_engine.train.preference import sequence_logps

    at = 0
    for ids, labels, cu in batches:
        out = packed_forward(model, ids, None, cu, None, labels)
        lp = sequence_logps(out.token_losses, out.sample_index, out.num_samples)
        rf = ref[at:at + out.num_samples]
        at += out.num_samples
        logits = (lp[0::2] - lp[1::2]) - (rf[0::2] - rf[1::2])
        loss = -F.logsigmoid(beta * logits).sum() / (len(ref) / 2)
        loss.backward()
    return float(loss.detach())


def as_packed(rows, rows_per_forward: int = 1):
    """Packed rows, `rows_per_forward` of them per forward (a micro-batch of packs, padded to
    its longest row, as the engine's loader makes it)."""
    import torch

    out = []
    for k in range(0, len(rows), rows_per_forward):
        group = rows[k:k + rows_per_forward]
        width = max(sum(len(s[0]) for s in row) for row in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        cus = []
        for b, row in enumerate(group):
            flat = [t for s in row for t in s[0]]
            ids[b, :len(flat)] = torch.tensor(flat)
            labels[b, :len(flat)] = torch.tensor([t for s in row for t in s[1]])
            cus.append(torch.tensor([0] + list(torch.cumsum(torch.tensor([len(s[0]) for s in row]), 0)),
                                    dtype=torch.int32))
        out.append((ids, labels, cus))
    return out


def as_padded(seqs, batch_pairs: int):
    import torch

    out = []
    for k in range(0, len(seqs), 2 * batch_pairs):
        group = seqs[k:k + 2 * batch_pairs]
        width = max(len(s[0]) for s in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        cu = []
        for b, (i, lab) in enumerate(group):
            ids[b, :len(i)] = torch.tensor(i)
            labels[b, :len(lab)] = torch.tensor(lab)
            cu.append(torch.tensor([0, len(i)], dtype=torch.int32))
        out.append((ids, labels, cu))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--pack", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4, help="packed rows per forward (micro_batch_size)")
    a = ap.parse_args()
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as d:
        model = make_model(d, a.hidden, a.layers)
    model.train()
    seqs = sequences(make_pairs(a.pairs, 0))
    real = sum(len(s[0]) for s in seqs)
    ref = torch.zeros(len(seqs))
    results = {}
    rows = packed_rows(seqs, a.pack)
    for name, batches in (("packed", as_packed(rows)),
                          (f"packed_{a.rows}_rows_per_forward", as_packed(rows, a.rows)),
                          ("padded", as_padded(seqs, a.batch))):
        slots = sum(b[0].numel() for b in batches)
        step(model, batches, ref)  # warm-up
        model.zero_grad(set_to_none=True)
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            step(model, batches, ref)
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        best = min(times)
        results[name] = {"variant": name, "forwards": len(batches), "real_tokens": real, "token_slots": slots,
                         "fill": real / slots, "step_s": best, "tokens_per_s": real / best}
        print(json.dumps(results[name]))
    # Reference: precomputed values (8 bytes a sequence) against a frozen copy's parameters.
    frozen = sum(p.numel() * p.element_size() for p in model.parameters())
    mem = {"variant": "reference_memory", "precomputed_bytes_per_pair": 16,
           "precomputed_bytes_these_pairs": 8 * len(seqs), "frozen_copy_bytes_this_model": frozen,
           "internvl2_8b_frozen_copy_bf16_gib": 8.1e9 * 2 / 2**30,
           "mmpr_1m_pairs_precomputed_mib": 16 * 1e6 / 2**20}
    print(json.dumps(mem))
    ratio = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    multi = results[f"packed_{a.rows}_rows_per_forward"]
    print(f"summary: packed {results['packed']['tokens_per_s']:.0f} tokens/s (fill {results['packed']['fill']:.1%}), "
          f"{a.rows} packed rows per forward {multi['tokens_per_s']:.0f} tokens/s (fill {multi['fill']:.1%}, "
          f"{multi['tokens_per_s'] / results['padded']['tokens_per_s']:.2f}x padded), "
          f"padded {results['padded']['tokens_per_s']:.0f} tokens/s (fill {results['padded']['fill']:.1%}): "
          f"packed/padded = {ratio:.2f}x; reference log-probs: {8 * len(seqs)} B precomputed for {a.pairs} pairs "
          f"vs {frozen / 2**20:.1f} MiB for a frozen copy of this model (InternVL2-8B in bf16: "
          f"{mem['internvl2_8b_frozen_copy_bf16_gib']:.1f} GiB vs {mem['mmpr_1m_pairs_precomputed_mib']:.1f} MiB "
          f"for a million pairs)")


if __name__ == "__main__":
    main()
