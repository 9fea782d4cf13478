"""Packed forward: k packed samples == k separate forwards; attention paths agree; learned-only logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tessera_engine.model.load import load_internvl
from tessera_engine.model.packed import (
    attention_inputs,
    document_causal_mask_mod,
    generate,
    packed_forward,
    segments_from_cu_seqlens,
)
from tessera_engine.model.tiny import build_tiny, small_tokenizer_json

TILE = 56


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    tok = small_tokenizer_json(root / "tok" / "tokenizer.json")
    out = {}
    for llm, vision in (("qwen2", "300m"), ("internlm2", "6b")):
        folder = build_tiny(root / llm, llm=llm, vision=vision, tokenizer_json=tok, tile_size=TILE, seed=5)
        out[llm] = load_internvl(folder, attn_implementation="sdpa")
    return out


def make_sample(g, loaded, length, tiles):
    ctx = loaded.info.img_context_token_id
    ids = torch.randint(0, 300, (length,), generator=g)
    n = tiles * loaded.info.tokens_per_tile
    ids[2:2 + n] = ctx
    labels = ids.clone()
    labels[: 2 + n + 1] = -100  # prompt not learned
    pixels = torch.randn(tiles, 3, TILE, TILE, generator=g) if tiles else None
    return ids, labels, pixels


def separate(model, samples):
    """Reference: each sample alone through the stock forward, full logits, shifted in-sample."""
    logits, losses = [], []
    with torch.no_grad():
        for ids, labels, pixels in samples:
            full = model(input_ids=ids[None], pixel_values=pixels).logits[0]
            target = torch.full_like(labels, -100)
            target[:-1] = labels[1:]
            keep = target != -100
            logits.append(full[keep])
            losses.append(F.cross_entropy(full[keep], target[keep], reduction="none"))
    return logits, losses


@pytest.mark.parametrize("llm", ["qwen2", "internlm2"])
def test_packed_equals_separate_forwards(models, llm):
    loaded = models[llm]
    g = torch.Generator().manual_seed(0)
    samples = [make_sample(g, loaded, 17, 1), make_sample(g, loaded, 9, 0), make_sample(g, loaded, 23, 2)]
    ids = torch.cat([s[0] for s in samples] + [torch.zeros(5, dtype=torch.long)])  # 5 padding tokens at the end
    labels = torch.cat([s[1] for s in samples] + [torch.full((5,), -100)])
    pixels = torch.cat([s[2] for s in samples if s[2] is not None])
    cu = torch.tensor([0, 17, 26, 49], dtype=torch.int32)
    with torch.no_grad():
        out = packed_forward(loaded.model, ids, cu_seqlens=cu, pixel_values=pixels, labels=labels,
                             return_logits=True, chunk_size=4)
    ref_logits, ref_losses = separate(loaded.model, samples)
    assert out.num_samples == 3
    assert out.learned_counts.tolist() == [len(x) for x in ref_losses]
    torch.testing.assert_close(out.logits, torch.cat(ref_logits), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.token_losses, torch.cat(ref_losses), atol=1e-5, rtol=0)
    for s in range(3):
        mine = out.token_losses[out.sample_index == s].mean()
        torch.testing.assert_close(mine, ref_losses[s].mean(), atol=1e-5, rtol=0)


def test_packed_rows_batch(models):
    """[B, T] with per-row boundaries gives the same per-token losses as one row per sample."""
    loaded = models["qwen2"]
    g = torch.Generator().manual_seed(1)
    samples = [make_sample(g, loaded, 12, 1), make_sample(g, loaded, 10, 0), make_sample(g, loaded, 14, 0),
               make_sample(g, loaded, 8, 0)]
    row0 = torch.cat([samples[0][0], samples[1][0]])  # 22 tokens
    row1 = torch.cat([samples[2][0], samples[3][0]])  # 22 tokens
    lab0 = torch.cat([samples[0][1], samples[1][1]])
    lab1 = torch.cat([samples[2][1], samples[3][1]])
    cu = [torch.tensor([0, 12, 22]), torch.tensor([0, 14, 22])]
    with torch.no_grad():
        out = packed_forward(loaded.model, torch.stack([row0, row1]), cu_seqlens=cu, pixel_values=samples[0][2],
                             labels=torch.stack([lab0, lab1]))
    _, ref_losses = separate(loaded.model, samples)
    torch.testing.assert_close(out.token_losses, torch.cat(ref_losses), atol=1e-5, rtol=0)
    assert out.sample_index.unique().tolist() == [0, 1, 2, 3]


def test_attention_paths_agree(models):
    loaded = models["internlm2"]
    g = torch.Generator().manual_seed(2)
    samples = [make_sample(g, loaded, 11, 1), make_sample(g, loaded, 13, 0)]
    ids = torch.cat([s[0] for s in samples])
    labels = torch.cat([s[1] for s in samples])
    cu = torch.tensor([0, 11, 24])
    results = {}
    with torch.no_grad():
        for impl in ("sdpa", "eager"):
            loaded.model.set_attn_implementation({"text_config": impl, "vision_config": "sdpa"})
            results[impl] = packed_forward(loaded.model, ids, cu_seqlens=cu, pixel_values=samples[0][2],
                                           labels=labels, return_logits=True)
    loaded.model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    torch.testing.assert_close(results["eager"].logits, results["sdpa"].logits, atol=1e-5, rtol=0)
    # FlexAttention's document mask is the same block-diagonal causal mask (its kernels run on GPU).
    from torch.nn.attention.flex_attention import create_mask

    seg = segments_from_cu_seqlens(torch.tensor([0, 5, 9]), 1, 12, "cpu")
    dense = create_mask(document_causal_mask_mod(seg.group_id), 1, None, 12, 12, device="cpu")
    sdpa_mask, _ = attention_inputs("sdpa", seg, torch.float32)
    assert torch.equal(dense.bool(), sdpa_mask)
    assert not sdpa_mask[0, 0, 6, 3] and sdpa_mask[0, 0, 6, 5] and not sdpa_mask[0, 0, 5, 6]
    _, flash_kw = attention_inputs("flash_attention_2", seg, torch.float32)
    assert flash_kw["cu_seq_lens_q"].tolist() == [0, 5, 9, 12] and flash_kw["max_length_q"] == 5


def test_image_token_count_mismatch_raises(models):
    loaded = models["qwen2"]
    g = torch.Generator().manual_seed(3)
    ids, labels, pixels = make_sample(g, loaded, 20, 2)
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        packed_forward(loaded.model, ids, pixel_values=pixels[:1], labels=labels)
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        packed_forward(loaded.model, ids, pixel_values=None, labels=labels)


def test_bad_boundaries_and_padding_labels_raise(models):
    loaded = models["qwen2"]
    ids = torch.randint(0, 300, (10,))
    with pytest.raises(ValueError, match="cu_seqlens"):
        packed_forward(loaded.model, ids, cu_seqlens=torch.tensor([0, 6, 6, 10]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        packed_forward(loaded.model, ids, cu_seqlens=torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="padding"):
        packed_forward(loaded.model, ids, cu_seqlens=torch.tensor([0, 6]), labels=ids.clone())


def test_learned_only_chunked_loss_has_full_logits_gradient(models):
    loaded = models["qwen2"]
    model = loaded.model
    g = torch.Generator().manual_seed(4)
    ids, labels, pixels = make_sample(g, loaded, 30, 1)
    params = [model.lm_head.weight, model.get_input_embeddings().weight,
              model.model.multi_modal_projector.linear_1.weight]
    out = packed_forward(model, ids, pixel_values=pixels, labels=labels, chunk_size=3)
    grads = torch.autograd.grad(out.token_losses.sum(), params)
    full = model(input_ids=ids[None], pixel_values=pixels).logits[0]
    target = torch.full_like(labels, -100)
    target[:-1] = labels[1:]
    ref = F.cross_entropy(full, target, ignore_index=-100, reduction="sum")
    ref_grads = torch.autograd.grad(ref, params)
    torch.testing.assert_close(out.token_losses.sum(), ref, atol=1e-4, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_generate_greedy_matches_step_by_step(models):
    loaded = models["qwen2"]
    model = loaded.model
    g = torch.Generator().manual_seed(6)
    p1, _, px1 = make_sample(g, loaded, 12, 1)
    p2, _, _ = make_sample(g, loaded, 7, 0)
    got = generate(model, [p1.tolist(), p2.tolist()], [px1, None], max_new_tokens=5, eos_token_ids=[-1],
                   pad_token_id=0)
    for prompt, pixels, new in ((p1, px1, got[0]), (p2, None, got[1])):
        ids = prompt.clone()
        want = []
        with torch.no_grad():
            for _ in range(5):
                nxt = int(model(input_ids=ids[None], pixel_values=pixels).logits[0, -1].argmax())
                want.append(nxt)
                ids = torch.cat([ids, torch.tensor([nxt])])
        assert new == want


def test_generate_sampled_is_seeded_and_stops_at_eos(models):
    loaded = models["qwen2"]
    g = torch.Generator().manual_seed(7)
    p1, _, px1 = make_sample(g, loaded, 10, 1)
    kw = dict(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=0, top_p=1.0, eos_token_ids=[-1],
              pad_token_id=0)
    a = generate(loaded.model, [p1.tolist()], [px1], seed=11, **kw)
    b = generate(loaded.model, [p1.tolist()], [px1], seed=11, **kw)
    assert a == b and len(a[0]) == 6
    greedy = generate(loaded.model, [p1.tolist()], [px1], max_new_tokens=6, eos_token_ids=[-1], pad_token_id=0)[0]
    # with the first greedy token as end-of-sequence, generation stops before it
    assert generate(loaded.model, [p1.tolist()], [px1], max_new_tokens=6, eos_token_ids=[greedy[0]],
                    pad_token_id=0) == [[]]
