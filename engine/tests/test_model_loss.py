"""Loss reductions: 4 accumulated micro-batches give the loss and gradient of one batch."""

from __future__ import annotations

import math

import pytest
import torch

from tessera_engine.model.load import load_internvl
from tessera_engine.model.loss import GlobalNorm, global_norm_from_counts, reduce_loss, token_weights
from tessera_engine.model.packed import packed_forward
from tessera_engine.model.tiny import build_tiny, small_tokenizer_json


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("loss")
    tok = small_tokenizer_json(root / "tok" / "tokenizer.json")
    return load_internvl(build_tiny(root / "m", llm="qwen2", tokenizer_json=tok, tile_size=28, seed=2))


def samples(loaded, n=8):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        length = 6 + 3 * i
        ids = torch.randint(0, 300, (length,), generator=g)
        labels = ids.clone()
        labels[: length - (2 + 2 * (i % 4))] = -100  # learned counts differ across samples: 1, 3, 5, 7 targets
        pixels = None
        if i % 3 == 0:
            ids[1] = loaded.info.img_context_token_id  # one 28 px tile = 1 token
            labels[1] = -100
            pixels = torch.randn(1, 3, 28, 28, generator=g)
        out.append((ids, labels, pixels))
    return out


def run(model, group):
    ids = torch.cat([s[0] for s in group])
    labels = torch.cat([s[1] for s in group])
    tiles = [s[2] for s in group if s[2] is not None]
    cu = torch.tensor([0] + list(torch.tensor([len(s[0]) for s in group]).cumsum(0)))
    return packed_forward(model, ids, cu_seqlens=cu, pixel_values=torch.cat(tiles) if tiles else None,
                          labels=labels)


@pytest.mark.parametrize("mode", ["token", "sample", "square"])
def test_accumulation_equals_one_batch(loaded, mode):
    model = loaded.model
    data = samples(loaded)
    params = [p for p in model.parameters() if p.requires_grad]
    counts = [int((s[1][1:] != -100).sum()) for s in data]  # targets per sample, as the plan counts them
    norm = global_norm_from_counts(counts)

    big = run(model, data)
    assert big.learned_counts.tolist() == counts
    big_loss = reduce_loss(big.token_losses, big.sample_index, mode, norm)
    big_grads = torch.autograd.grad(big_loss, params, allow_unused=True)

    acc_loss = 0.0
    acc = [torch.zeros_like(p) for p in params]
    for k in range(4):
        out = run(model, data[2 * k: 2 * k + 2])
        loss = reduce_loss(out.token_losses, out.sample_index, mode, norm)
        for a, gr in zip(acc, torch.autograd.grad(loss, params, allow_unused=True)):
            if gr is not None:
                a += gr
        acc_loss += float(loss.detach())

    # The big batch's loss is the reduction's definition.
    per_sample = [big.token_losses[big.sample_index == s] for s in range(len(data))]
    expected = {
        "token": big.token_losses.sum() / sum(counts),
        "sample": sum(x.mean() for x in per_sample) / len(data),
        "square": sum(x.sum() / math.sqrt(len(x)) for x in per_sample) / sum(math.sqrt(len(x)) for x in per_sample),
    }[mode]
    torch.testing.assert_close(big_loss, expected, atol=1e-6, rtol=1e-6)
    assert abs(acc_loss - float(big_loss.detach())) < 1e-5
    checked = 0
    for a, b in zip(acc, big_grads):
        if b is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
            checked += 1
    assert checked > 10


def test_reductions_weight_samples_differently():
    idx = torch.tensor([0, 1, 1, 1, 1])
    norm = global_norm_from_counts([1, 4])
    assert norm == GlobalNorm(5.0, 2.0, 3.0)
    assert torch.allclose(token_weights(idx, "token", norm), torch.full((5,), 0.2))
    assert torch.allclose(token_weights(idx, "sample", norm), torch.tensor([0.5, 0.125, 0.125, 0.125, 0.125]))
    sq = token_weights(idx, "square", norm)
    assert torch.allclose(sq, torch.tensor([1 / 3, 1 / 6, 1 / 6, 1 / 6, 1 / 6]))
    assert abs(float(sq.sum()) - 1.0) < 1e-6
    with pytest.raises(ValueError):
        token_weights(idx, "mean", norm)


def test_global_norm_skips_samples_without_learned_tokens():
    assert global_norm_from_counts([0, 9, 0, 16]) == GlobalNorm(25.0, 2.0, 7.0)
    assert global_norm_from_counts([9]) + global_norm_from_counts([16]) == GlobalNorm(25.0, 2.0, 7.0)
