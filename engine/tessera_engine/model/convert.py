"""Original InternVL2 layout <-> transformers' native InternVL layout.

Configs and weights, both directions, key by key. Every original key maps to exactly one
native key (or a fused original tensor to several native ones); anything that maps to nothing
is an error, never a silent drop. The only keys dropped on purpose are recomputed buffers
(`rotary_emb.inv_freq`) that some old checkpoints saved.
"""

from __future__ import annotations

import re
from typing import Any

import torch

# LLM families as the original llm_config names them, and the native family each becomes.
ARCH_FAMILY = {
    "InternLM2ForCausalLM": "internlm2",
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "Phi3ForCausalLM": "phi3",
}
MODEL_TYPE_FAMILY = {"internlm2": "internlm2", "qwen2": "qwen2", "llama": "llama", "phi3": "phi3"}
NATIVE_OF_FAMILY = {"internlm2": "llama", "qwen2": "qwen2", "llama": "llama", "phi3": "phi3"}
NATIVE_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM"}

DEFAULT_TEMPLATE = {"qwen2": "Hermes-2", "internlm2": "internlm2-chat", "llama": "Hermes-2", "phi3": "phi3-chat"}

# Keys an original config may carry that only mean something to remote code or to the saver.
_REMOTE_ONLY = {"auto_map", "_name_or_path", "architectures", "transformers_version", "attn_implementation",
                "_attn_implementation", "torch_dtype", "dtype", "use_flash_attn"}

# Buffers some checkpoints saved that the native model recomputes.
_DROPPABLE = re.compile(r"\.rotary_emb\.inv_freq$")


def is_droppable(key: str) -> bool:
    """A saved buffer the native model recomputes (never an error to find or to miss)."""
    return bool(_DROPPABLE.search(key))


def llm_family(llm_config: dict) -> str:
    """The LLM family of an original llm_config; `architectures` may be absent (old checkpoints)."""
    for arch in llm_config.get("architectures") or []:
        if arch in ARCH_FAMILY:
            return ARCH_FAMILY[arch]
    mt = llm_config.get("model_type")
    if mt in MODEL_TYPE_FAMILY:
        return MODEL_TYPE_FAMILY[mt]
    raise ValueError(
        f"unsupported LLM: architectures={llm_config.get('architectures')!r} model_type={mt!r}; "
        f"supported: {sorted(ARCH_FAMILY)}"
    )


def vision_style(vision_config: dict) -> str:
    """'6b' (RMSNorm, qk-norm, no qkv bias) or '300m' (LayerNorm, qkv bias) - or any mix of the flags."""
    return "6b" if vision_config.get("qk_normalization") else "300m"


# ---------------------------------------------------------------- configs


def tokens_per_tile(orig: dict) -> int:
    size = int(orig.get("force_image_size") or orig["vision_config"]["image_size"])
    patch = int(orig["vision_config"]["patch_size"])
    ratio = float(orig.get("downsample_ratio", 0.5))
    grid = size // patch
    if size % patch:
        raise ValueError(f"tile size {size} is not a multiple of patch size {patch}")
    scaled = grid * ratio
    if scaled != int(scaled):
        raise ValueError(f"patch grid {grid} is not divisible by 1/downsample_ratio ({1 / ratio})")
    return int(scaled) ** 2


def native_text_config(llm_config: dict):
    from transformers import AutoConfig, LlamaConfig

    family = llm_family(llm_config)
    if family == "internlm2":
        c = llm_config
        kw: dict[str, Any] = dict(
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_hidden_layers=c["num_hidden_layers"],
            num_attention_heads=c["num_attention_heads"],
            num_key_value_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
            hidden_act=c.get("hidden_act", "silu"),
            max_position_embeddings=c.get("max_position_embeddings", 2048),
            rms_norm_eps=c.get("rms_norm_eps", 1e-6),
            initializer_range=c.get("initializer_range", 0.02),
            attention_bias=bool(c.get("bias", False)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            bos_token_id=c.get("bos_token_id"),
            eos_token_id=c.get("eos_token_id"),
            pad_token_id=c.get("pad_token_id"),
            rope_theta=float(c.get("rope_theta", 10000.0)),
        )
        rs = c.get("rope_scaling")
        if rs:
            rs = dict(rs)
            # InternLM2 says "type"; transformers wants "rope_type" (both accepted on read).
            rs.setdefault("rope_type", rs.get("type"))
            kw["rope_scaling"] = rs
        cfg = LlamaConfig(**kw)
    else:
        kw = {k: v for k, v in llm_config.items() if k not in _REMOTE_ONLY and k != "model_type"}
        rs = kw.get("rope_scaling")
        if isinstance(rs, dict):
            # Phi-3 128k checkpoints say {"type": "su"}: today's name is longrope, which also wants
            # original_max_position_embeddings inside the rope parameters.
            rs = dict(rs)
            kind = rs.get("rope_type", rs.get("type"))
            kind = {"su": "longrope"}.get(kind, kind)
            rs["rope_type"] = kind
            rs.pop("type", None)
            if kind == "longrope" and "original_max_position_embeddings" in kw:
                rs.setdefault("original_max_position_embeddings", kw["original_max_position_embeddings"])
            kw["rope_scaling"] = rs
        cfg = AutoConfig.for_model(NATIVE_OF_FAMILY[family], **kw)
    cfg.architectures = [NATIVE_ARCH[NATIVE_OF_FAMILY[family]]]
    return cfg


def native_config(orig: dict, image_token_id: int):
    """InternVLConfig for an original `internvl_chat` config dict."""
    from transformers import InternVLConfig
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    if orig.get("model_type") != "internvl_chat":
        raise ValueError(f"not an original InternVL2 config: model_type={orig.get('model_type')!r}")
    v = orig["vision_config"]
    size = int(orig.get("force_image_size") or v["image_size"])
    if int(v["image_size"]) != size:
        raise ValueError(
            f"force_image_size {size} != vision_config.image_size {v['image_size']}: "
            "position-embedding resizing is not supported"
        )
    # The official config class defaults to 'v1' (InternVLChatConfig(ps_version='v1')); a config
    # without the key is read as v1, never silently as v2.
    ps = orig.get("ps_version", "v1")
    if ps != "v2":
        said = f"ps_version {ps!r}" if "ps_version" in orig else "no ps_version, which the official code reads as 'v1'"
        raise ValueError(
            f"config.json has {said}: only 'v2' (the InternVL2 pixel shuffle) is supported; "
            "add \"ps_version\": \"v2\" only if the checkpoint was trained with it"
        )
    select_layer = int(orig.get("select_layer", -1))
    if select_layer != -1:
        raise ValueError(f"select_layer {select_layer} is not supported (InternVL2 uses -1)")
    vision = InternVLVisionConfig(
        hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"],
        num_attention_heads=v["num_attention_heads"],
        num_hidden_layers=v["num_hidden_layers"],
        image_size=size,
        patch_size=int(v["patch_size"]),
        num_channels=int(v.get("num_channels", 3)),
        attention_bias=bool(v.get("qkv_bias", True)),
        use_qk_norm=bool(v.get("qk_normalization", False)),
        norm_type=v.get("norm_type", "layer_norm"),
        layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)),
        hidden_act=v.get("hidden_act", "gelu"),
        use_mean_pooling=True,  # no final norm: InternViT's last_hidden_state is the last block's output
        use_absolute_position_embeddings=True,
    )
    text = native_text_config(orig["llm_config"])
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=int(image_token_id),
        image_seq_length=tokens_per_tile(orig),
        downsample_ratio=float(orig.get("downsample_ratio", 0.5)),
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(text.tie_word_embeddings),
    )


# ---------------------------------------------------------------- weights: fused tensors


def split_internlm2_wqkv(w: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int):
    """InternLM2's wqkv rows: per kv group, g query heads then the group's key head then its value head."""
    g = num_heads // num_kv_heads
    rest = w.shape[1:]
    x = w.reshape(num_kv_heads, g + 2, head_dim, *rest)
    q = x[:, :g].reshape(num_heads * head_dim, *rest)
    k = x[:, g].reshape(num_kv_heads * head_dim, *rest)
    v = x[:, g + 1].reshape(num_kv_heads * head_dim, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def fuse_internlm2_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int,
                        head_dim: int) -> torch.Tensor:
    g = num_heads // num_kv_heads
    rest = q.shape[1:]
    qg = q.reshape(num_kv_heads, g, head_dim, *rest)
    kg = k.reshape(num_kv_heads, 1, head_dim, *rest)
    vg = v.reshape(num_kv_heads, 1, head_dim, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *rest).contiguous()


# ---------------------------------------------------------------- weights: names

_V = "model.vision_tower."
_VL = _V + "encoder.layer.{}."
_VISION_LAYER = {  # original suffix under vision_model.encoder.layers.N. -> native suffix
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "attn.proj.weight": "attention.projection_layer.weight",
    "attn.proj.bias": "attention.projection_layer.bias",
    "attn.q_norm.weight": "attention.q_norm.weight",
    "attn.k_norm.weight": "attention.k_norm.weight",
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_VISION_TOP = {
    "vision_model.embeddings.class_embedding": _V + "embeddings.cls_token",
    "vision_model.embeddings.patch_embedding.weight": _V + "embeddings.patch_embeddings.projection.weight",
    "vision_model.embeddings.patch_embedding.bias": _V + "embeddings.patch_embeddings.projection.bias",
    "vision_model.embeddings.position_embedding": _V + "embeddings.position_embeddings",
    "mlp1.0.weight": "model.multi_modal_projector.layer_norm.weight",
    "mlp1.0.bias": "model.multi_modal_projector.layer_norm.bias",
    "mlp1.1.weight": "model.multi_modal_projector.linear_1.weight",
    "mlp1.1.bias": "model.multi_modal_projector.linear_1.bias",
    "mlp1.3.weight": "model.multi_modal_projector.linear_2.weight",
    "mlp1.3.bias": "model.multi_modal_projector.linear_2.bias",
}
_INTERNLM2_LAYER = {  # original suffix under language_model.model.layers.N. -> native (Llama) suffix
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wo.bias": "self_attn.o_proj.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_INTERNLM2_TOP = {
    "language_model.model.tok_embeddings.weight": "model.language_model.embed_tokens.weight",
    "language_model.model.norm.weight": "model.language_model.norm.weight",
    "language_model.output.weight": "lm_head.weight",
}

_VISION_LAYER_RE = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$")
_INTERNLM2_LAYER_RE = re.compile(r"^language_model\.model\.layers\.(\d+)\.(.+)$")


def _text_dims(text_cfg) -> tuple[int, int, int]:
    heads = text_cfg.num_attention_heads
    kv = text_cfg.num_key_value_heads or heads
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // heads
    return heads, kv, head_dim


def original_to_native(sd: dict[str, torch.Tensor], config, family: str) -> dict[str, torch.Tensor]:
    """Rename/split an original state dict into native names. Raises on any key it cannot place."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    c_vis = config.vision_config.hidden_size
    heads, kv, head_dim = _text_dims(config.text_config)

    def put(name: str, t: torch.Tensor) -> None:
        if name in out:
            raise ValueError(f"two original tensors map onto {name}")
        out[name] = t

    for key, t in sd.items():
        if _DROPPABLE.search(key):
            continue
        if key in _VISION_TOP:
            put(_VISION_TOP[key], t)
            continue
        m = _VISION_LAYER_RE.match(key)
        if m:
            n, rest = m.group(1), m.group(2)
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                if t.shape[0] != 3 * c_vis:
                    raise ValueError(f"{key}: expected {3 * c_vis} rows, got {tuple(t.shape)}")
                for part, piece in zip(("q", "k", "v"), t.split(c_vis, dim=0)):
                    put(_VL.format(n) + f"attention.{part}_proj.{kind}", piece.contiguous())
            elif rest in _VISION_LAYER:
                put(_VL.format(n) + _VISION_LAYER[rest], t)
            else:
                unknown.append(key)
            continue
        if not key.startswith("language_model."):
            unknown.append(key)
            continue
        if family == "internlm2":
            if key in _INTERNLM2_TOP:
                put(_INTERNLM2_TOP[key], t)
                continue
            m = _INTERNLM2_LAYER_RE.match(key)
            if m:
                n, rest = m.group(1), m.group(2)
                base = f"model.language_model.layers.{n}."
                if rest in ("attention.wqkv.weight", "attention.wqkv.bias"):
                    kind = rest.rsplit(".", 1)[1]
                    q, k, v = split_internlm2_wqkv(t, heads, kv, head_dim)
                    put(base + f"self_attn.q_proj.{kind}", q)
                    put(base + f"self_attn.k_proj.{kind}", k)
                    put(base + f"self_attn.v_proj.{kind}", v)
                elif rest in _INTERNLM2_LAYER:
                    put(base + _INTERNLM2_LAYER[rest], t)
                else:
                    unknown.append(key)
                continue
            unknown.append(key)
            continue
        # Qwen2 / Llama / Phi3: the original LLM already uses the native names.
        if key == "language_model.lm_head.weight":
            put("lm_head.weight", t)
        elif key.startswith("language_model.model."):
            put("model.language_model." + key[len("language_model.model."):], t)
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} original weight(s) with no native place: {unknown[:10]}")
    return out


def native_to_original(sd: dict[str, torch.Tensor], config, family: str) -> dict[str, torch.Tensor]:
    """The inverse of original_to_native (fuses q/k/v back). Raises on any key it cannot place."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    heads, kv, head_dim = _text_dims(config.text_config)
    inv_top = {v: k for k, v in _VISION_TOP.items()}
    inv_layer = {v: k for k, v in _VISION_LAYER.items()}
    inv_il_top = {v: k for k, v in _INTERNLM2_TOP.items()}
    inv_il_layer = {v: k for k, v in _INTERNLM2_LAYER.items()}
    vis_re = re.compile(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.(.+)$")
    txt_re = re.compile(r"^model\.language_model\.layers\.(\d+)\.(.+)$")
    pending_vis: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    pending_txt: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    for key, t in sd.items():
        if _DROPPABLE.search(key):
            continue
        if key in inv_top:
            out[inv_top[key]] = t
            continue
        m = vis_re.match(key)
        if m:
            n, rest = m.group(1), m.group(2)
            mm = re.match(r"^attention\.([qkv])_proj\.(weight|bias)$", rest)
            if mm:
                pending_vis.setdefault((n, mm.group(2)), {})[mm.group(1)] = t
            elif rest in inv_layer:
                out[f"vision_model.encoder.layers.{n}.{inv_layer[rest]}"] = t
            else:
                unknown.append(key)
            continue
        if family == "internlm2":
            if key in inv_il_top:
                out[inv_il_top[key]] = t
                continue
            m = txt_re.match(key)
            if m:
                n, rest = m.group(1), m.group(2)
                mm = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
                if mm:
                    pending_txt.setdefault((n, mm.group(2)), {})[mm.group(1)] = t
                elif rest in inv_il_layer:
                    out[f"language_model.model.layers.{n}.{inv_il_layer[rest]}"] = t
                else:
                    unknown.append(key)
                continue
            unknown.append(key)
            continue
        if key == "lm_head.weight":
            out["language_model.lm_head.weight"] = t
        elif key.startswith("model.language_model."):
            out["language_model.model." + key[len("model.language_model."):]] = t
        else:
            unknown.append(key)
    for (n, kind), parts in pending_vis.items():
        out[f"vision_model.encoder.layers.{n}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    for (n, kind), parts in pending_txt.items():
        out[f"language_model.model.layers.{n}.attention.wqkv.{kind}"] = fuse_internlm2_wqkv(
            parts["q"], parts["k"], parts["v"], heads, kv, head_dim
        )
    if unknown:
        raise KeyError(f"{len(unknown)} native weight(s) with no original place: {unknown[:10]}")
    return out
