"""Cross-implementation: the original InternVL2 architecture written here from the spec
(docs: shared/spec/internvl2.md), run on the original-format weights, against our converted native model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tessera_engine.model import convert
from tessera_engine.model.load import load_internvl, read_original_config, read_state_dict
from tessera_engine.model.tiny import build_tiny, small_tokenizer_json

# ------------------------------------------------------------------ reference, from the spec


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def vit_norm(x, sd, prefix, vcfg):
    eps = vcfg.get("layer_norm_eps", 1e-6)
    if vcfg.get("norm_type", "layer_norm") == "rms_norm":
        return rms_norm(x, sd[prefix + ".weight"], eps)
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def ref_vision(sd, cfg, pixel_values):
    """InternViT (fused qkv, layer scales), class token dropped, pixel shuffle v2, mlp1."""
    v = cfg["vision_config"]
    C, heads = v["hidden_size"], v["num_attention_heads"]
    d = C // heads
    p = v["patch_size"]
    e = "vision_model.embeddings."
    x = F.conv2d(pixel_values, sd[e + "patch_embedding.weight"], sd[e + "patch_embedding.bias"], stride=p)
    n = x.shape[0]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[e + "class_embedding"].expand(n, 1, C), x], 1) + sd[e + "position_embedding"]
    L = x.shape[1]
    for i in range(v["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{i}."
        h = vit_norm(x, sd, pre + "norm1", v)
        qkv = h @ sd[pre + "attn.qkv.weight"].T
        if pre + "attn.qkv.bias" in sd:
            qkv = qkv + sd[pre + "attn.qkv.bias"]
        qkv = qkv.reshape(n, L, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, vv = qkv[0], qkv[1], qkv[2]
        if v.get("qk_normalization"):
            eps = v.get("layer_norm_eps", 1e-6)
            q = rms_norm(q.transpose(1, 2).flatten(-2), sd[pre + "attn.q_norm.weight"], eps)
            k = rms_norm(k.transpose(1, 2).flatten(-2), sd[pre + "attn.k_norm.weight"], eps)
            q = q.view(n, L, heads, d).transpose(1, 2)
            k = k.view(n, L, heads, d).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ vv
        a = a.transpose(1, 2).reshape(n, L, C)
        a = a @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
        x = x + sd[pre + "ls1"] * a
        h = vit_norm(x, sd, pre + "norm2", v)
        h = F.gelu(h @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"])
        h = h @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
        x = x + sd[pre + "ls2"] * h
    x = x[:, 1:]
    g = int(math.isqrt(x.shape[1]))
    x = x.reshape(n, g, g, C)
    # pixel shuffle v2, ratio 0.5: (n, w, h, c) -> (n, w, h/2, 2c) -> swap -> (n, h/2, w/2, 4c) -> swap back
    nn_, w, hh, c = x.shape
    x = x.reshape(nn_, w, hh // 2, c * 2).permute(0, 2, 1, 3).reshape(nn_, hh // 2, w // 2, c * 4).permute(0, 2, 1, 3)
    x = x.reshape(n, -1, 4 * C)
    x = F.layer_norm(x, x.shape[-1:], sd["mlp1.0.weight"], sd["mlp1.0.bias"], 1e-5)
    x = F.gelu(x @ sd["mlp1.1.weight"].T + sd["mlp1.1.bias"])
    return x @ sd["mlp1.3.weight"].T + sd["mlp1.3.bias"]


def rope(x, pos, theta, scaling):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    t = pos.float()
    if scaling and scaling.get("type", scaling.get("rope_type")) == "linear":
        t = t / scaling["factor"]
    f = torch.outer(t, inv)
    cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()
    rot = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def causal_attention(q, k, v):
    """q [heads, T, d], k/v [kv_heads, T, d] (grouped-query: each kv head serves heads/kv_heads queries)."""
    g = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(g, 0)
    v = v.repeat_interleave(g, 0)
    T = q.shape[1]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v


def ref_internlm2_layer(x, sd, pre, lc):
    """One InternLM2 decoder layer (fused wqkv grouped by kv head), x [T, H]."""
    H, heads = lc["hidden_size"], lc["num_attention_heads"]
    kv = lc.get("num_key_value_heads") or heads
    d = H // heads
    g = heads // kv
    T = x.shape[0]
    pos = torch.arange(T)
    eps = lc["rms_norm_eps"]
    h = rms_norm(x, sd[pre + "attention_norm.weight"], eps)
    qkv = (h @ sd[pre + "attention.wqkv.weight"].T).view(T, kv, g + 2, d)
    q = qkv[:, :, :g].reshape(T, heads, d).transpose(0, 1)
    k = qkv[:, :, g].transpose(0, 1)
    v = qkv[:, :, g + 1].transpose(0, 1)
    q = rope(q, pos, lc["rope_theta"], lc.get("rope_scaling"))
    k = rope(k, pos, lc["rope_theta"], lc.get("rope_scaling"))
    a = causal_attention(q, k, v).transpose(0, 1).reshape(T, H)
    x = x + a @ sd[pre + "attention.wo.weight"].T
    h = rms_norm(x, sd[pre + "ffn_norm.weight"], eps)
    f = F.silu(h @ sd[pre + "feed_forward.w1.weight"].T) * (h @ sd[pre + "feed_forward.w3.weight"].T)
    return x + f @ sd[pre + "feed_forward.w2.weight"].T


def ref_qwen2_layer(x, sd, pre, lc):
    H, heads = lc["hidden_size"], lc["num_attention_heads"]
    kv = lc.get("num_key_value_heads") or heads
    d = H // heads
    T = x.shape[0]
    pos = torch.arange(T)
    eps = lc["rms_norm_eps"]
    h = rms_norm(x, sd[pre + "input_layernorm.weight"], eps)
    a = pre + "self_attn."
    q = (h @ sd[a + "q_proj.weight"].T + sd[a + "q_proj.bias"]).view(T, heads, d).transpose(0, 1)
    k = (h @ sd[a + "k_proj.weight"].T + sd[a + "k_proj.bias"]).view(T, kv, d).transpose(0, 1)
    v = (h @ sd[a + "v_proj.weight"].T + sd[a + "v_proj.bias"]).view(T, kv, d).transpose(0, 1)
    q = rope(q, pos, lc["rope_theta"], lc.get("rope_scaling"))
    k = rope(k, pos, lc["rope_theta"], lc.get("rope_scaling"))
    o = causal_attention(q, k, v).transpose(0, 1).reshape(T, H)
    x = x + o @ sd[a + "o_proj.weight"].T
    h = rms_norm(x, sd[pre + "post_attention_layernorm.weight"], eps)
    m = pre + "mlp."
    f = F.silu(h @ sd[m + "gate_proj.weight"].T) * (h @ sd[m + "up_proj.weight"].T)
    return x + f @ sd[m + "down_proj.weight"].T


def ref_forward(folder, input_ids, pixel_values, img_context_id):
    cfg = read_original_config(folder)
    sd = read_state_dict(folder)
    lc = cfg["llm_config"]
    internlm2 = lc["model_type"] == "internlm2"
    emb = sd["language_model.model.tok_embeddings.weight" if internlm2 else "language_model.model.embed_tokens.weight"]
    x = emb[input_ids].clone()
    if pixel_values is not None:
        feats = ref_vision(sd, cfg, pixel_values)
        x[input_ids == img_context_id] = feats.reshape(-1, feats.shape[-1])
    for i in range(lc["num_hidden_layers"]):
        pre = f"language_model.model.layers.{i}."
        x = ref_internlm2_layer(x, sd, pre, lc) if internlm2 else ref_qwen2_layer(x, sd, pre, lc)
    x = rms_norm(x, sd["language_model.model.norm.weight"], lc["rms_norm_eps"])
    head = sd["language_model.output.weight" if internlm2 else "language_model.lm_head.weight"]
    return x @ head.T


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return small_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.mark.parametrize("llm", ["qwen2", "internlm2"])
@pytest.mark.parametrize("vision", ["300m", "6b"])
def test_reference_forward_matches_converted_model(tmp_path, tokenizer, llm, vision):
    rope_scaling = {"type": "linear", "factor": 2.0} if llm == "internlm2" else None
    folder = build_tiny(tmp_path / "m", llm=llm, vision=vision, tokenizer_json=tokenizer, tile_size=56,
                        rope_scaling=rope_scaling, rope_theta=10000.0, seed=3)
    loaded = load_internvl(folder, attn_implementation="eager")
    ctx = loaded.info.img_context_token_id
    per_tile = loaded.info.tokens_per_tile
    assert per_tile == 4  # (56 / 14)^2 * 0.5^2, from the config
    g = torch.Generator().manual_seed(1)
    n_tiles = 2
    ids = torch.randint(0, 300, (6 + n_tiles * per_tile + 5,), generator=g)
    ids[6:6 + n_tiles * per_tile] = ctx
    pixels = torch.randn(n_tiles, 3, 56, 56, generator=g)
    with torch.no_grad():
        ref = ref_forward(folder, ids, pixels, ctx)
        ours = loaded.model(input_ids=ids[None], pixel_values=pixels).logits[0]
    assert ref.shape == ours.shape
    assert ref.abs().max() > 0.1  # the comparison means something
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_internlm2_layer_matches_converted_llama_layer():
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    lc = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "vocab_size": 50,
          "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 1, "num_attention_heads": 6,
          "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 5000.0,
          "rope_scaling": {"type": "linear", "factor": 3.0}, "bias": False}
    g = torch.Generator().manual_seed(0)
    H, d = 48, 8
    pre = "language_model.model.layers.0."
    sd = {
        pre + "attention.wqkv.weight": torch.randn((6 + 2 * 2) * d, H, generator=g) / 7,
        pre + "attention.wo.weight": torch.randn(H, H, generator=g) / 7,
        pre + "feed_forward.w1.weight": torch.randn(80, H, generator=g) / 7,
        pre + "feed_forward.w3.weight": torch.randn(80, H, generator=g) / 7,
        pre + "feed_forward.w2.weight": torch.randn(H, 80, generator=g) / 9,
        pre + "attention_norm.weight": 1 + 0.1 * torch.randn(H, generator=g),
        pre + "ffn_norm.weight": 1 + 0.1 * torch.randn(H, generator=g),
    }
    text_cfg = convert.native_text_config(lc)
    text_cfg._attn_implementation = "eager"

    class Cfg:  # original_to_native reads only these parts of the composite config
        text_config = text_cfg
        vision_config = type("V", (), {"hidden_size": 8})

    native = convert.original_to_native(sd, Cfg, "internlm2")
    layer = LlamaDecoderLayer(text_cfg, layer_idx=0)
    prefix = "model.language_model.layers.0."
    layer.load_state_dict({k[len(prefix):]: v for k, v in native.items()}, strict=True)
    x = torch.randn(1, 11, H, generator=g)
    pos = torch.arange(11)[None]
    cos_sin = LlamaRotaryEmbedding(text_cfg)(x, pos)
    mask = torch.zeros(1, 1, 11, 11).masked_fill(~torch.ones(11, 11, dtype=torch.bool).tril(), float("-inf"))
    with torch.no_grad():
        out = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        out = out[0] if isinstance(out, tuple) else out
        ref = ref_internlm2_layer(x[0], sd, pre, lc)
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=1e-5)
    # The split really regroups rows: a naive q|k|v cut of wqkv would not match.
    naive_q = sd[pre + "attention.wqkv.weight"][: 6 * d]
    assert not torch.equal(naive_q, native[prefix + "self_attn.q_proj.weight"])
