"""Load an original InternVL2 folder into transformers' native InternVLForConditionalGeneration.

No remote code is imported, ever: the config is read as JSON, converted by convert.py, and the
weights are renamed/split key by key. Any missing or unexpected key is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FileProblem

from . import convert

INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
TEMPLATE_ROLE_TOKENS = {
    "Hermes-2": ["<|im_start|>", "<|im_end|>"],
    "internlm2-chat": ["<|im_start|>", "<|im_end|>"],
    "internvl2_5": ["<|im_start|>", "<|im_end|>"],
    "phi3-chat": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
}
TEMPLATE_END_TOKEN = {"Hermes-2": "<|im_end|>", "internlm2-chat": "<|im_end|>", "internvl2_5": "<|im_end|>",
                      "phi3-chat": "<|end|>"}


@dataclass
class ModelInfo:
    family: str  # the original LLM family: qwen2 | internlm2 | llama | phi3
    native_family: str  # what it runs as: qwen2 | llama | phi3
    vision_style: str  # 300m | 6b
    template: str | None
    tile_size: int
    patch_size: int
    downsample_ratio: float
    tokens_per_tile: int
    img_context_token_id: int
    img_start_token_id: int | None
    img_end_token_id: int | None
    eos_token_ids: list[int]
    bos_token_id: int | None
    pad_token_id: int | None
    max_dynamic_patch: int
    min_dynamic_patch: int
    use_thumbnail: bool
    dynamic_image_size: bool
    special_tokens: dict[str, int]
    source_folder: str
    original_config: dict = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    model: Any  # InternVLForConditionalGeneration
    info: ModelInfo


# ---------------------------------------------------------------- files


def read_original_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "internvl_chat":
        raise FileProblem(f"{path}: model_type {cfg.get('model_type')!r} is not an original InternVL2 folder "
                         "(expected 'internvl_chat')")
    for k in ("vision_config", "llm_config"):
        if not isinstance(cfg.get(k), dict):
            raise FileProblem(f"{path}: missing {k}")
    return cfg


def read_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a folder: model.safetensors, sharded safetensors, or .bin (single or sharded)."""
    folder = Path(folder)
    from safetensors.torch import load_file as _load_safetensors

    def load_file(p: Path) -> dict[str, torch.Tensor]:
        try:
            return _load_safetensors(p)
        except Exception as e:  # safetensors' own errors do not name the file
            raise FileProblem(f"{p}: not a readable safetensors file ({type(e).__name__}: {e})") from None

    def load_bin(p: Path) -> dict[str, torch.Tensor]:
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FileProblem(f"{p}: not a readable PyTorch weights file of tensors "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None

    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", load_bin)):
        index = folder / index_name
        if index.exists():
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                part = loader(folder / shard)
                for k, v in part.items():
                    if weight_map.get(k) != shard:
                        raise KeyError(f"{shard}: tensor {k} is not listed for this shard in {index_name}")
                    sd[k] = v
            missing = set(weight_map) - set(sd)
            if missing:
                raise KeyError(f"{index_name} lists tensors no shard holds: {sorted(missing)[:10]}")
            return sd
    if (folder / "model.safetensors").exists():
        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():
        return load_bin(folder / "pytorch_model.bin")
    raise FileProblem(f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


def read_special_tokens(folder: str | os.PathLike) -> dict[str, int]:
    """content -> id of every added/special token the folder's tokenizer files declare."""
    folder = Path(folder)
    tokens: dict[str, int] = {}
    tj = folder / "tokenizer.json"
    if tj.exists():
        with open(tj, encoding="utf-8") as f:
            for t in json.load(f).get("added_tokens", []):
                tokens[t["content"]] = int(t["id"])
    at = folder / "added_tokens.json"
    if at.exists():
        with open(at, encoding="utf-8") as f:
            tokens.update({k: int(v) for k, v in json.load(f).items()})
    tc = folder / "tokenizer_config.json"
    if tc.exists():
        with open(tc, encoding="utf-8") as f:
            for i, t in (json.load(f).get("added_tokens_decoder") or {}).items():
                tokens[t["content"] if isinstance(t, dict) else str(t)] = int(i)
    return tokens


def _tokenizer_config(folder: Path) -> dict:
    tc = folder / "tokenizer_config.json"
    if tc.exists():
        with open(tc, encoding="utf-8") as f:
            return json.load(f)
    return {}


def _token_name(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v


# ---------------------------------------------------------------- loading


def pick_attn_implementation(requested: str = "auto", device: str | torch.device = "cpu",
                             dtype: torch.dtype = torch.bfloat16) -> str:
    """flash-attention varlen on CUDA in half precision when installed, else PyTorch's SDPA."""
    if requested != "auto":
        return requested
    if torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def build_native(config, state_dict: dict[str, torch.Tensor], dtype: torch.dtype, device, attn_implementation: str):
    """Instantiate without initialising (meta), then assign the converted tensors strictly."""
    from transformers import InternVLForConditionalGeneration

    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = "sdpa" if attn_implementation == "flex_attention" else attn_implementation
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    expected = set(model.state_dict().keys())
    sd = dict(state_dict)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    emb_key = "model.language_model.embed_tokens.weight"
    if tied and "lm_head.weight" in sd:
        if not torch.equal(sd["lm_head.weight"], sd.get(emb_key, torch.empty(0))):
            raise ValueError("config ties word embeddings but the checkpoint's output and input embeddings differ")
        del sd["lm_head.weight"]
    need = set(expected)
    if tied:
        need.discard("lm_head.weight")
    missing = sorted(need - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match the model: missing {missing[:10]} ({len(missing)}), "
                       f"unexpected {unexpected[:10]} ({len(unexpected)})")
    ref = model.state_dict()
    for k, v in sd.items():
        if tuple(v.shape) != tuple(ref[k].shape):
            raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(ref[k].shape)}")
    sd = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in sd.items()}
    model.load_state_dict(sd, strict=not tied, assign=True)
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight
    _materialise_buffers(model, device)
    # Native q/k norms use a fixed eps; InternViT uses the config's layer_norm_eps for them.
    eps = config.vision_config.layer_norm_eps
    for layer in model.model.vision_tower.encoder.layer:
        for norm in (layer.attention.q_norm, layer.attention.k_norm):
            if hasattr(norm, "variance_epsilon"):
                norm.variance_epsilon = eps
    model.eval()
    return model


def _materialise_buffers(model, device) -> None:
    """Non-persistent buffers (rotary inverse frequencies) were created on meta: rebuild their modules."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            cfg = getattr(module, "config", None)
            if cfg is None:
                raise RuntimeError(f"cannot materialise buffers of {name} ({type(module).__name__})")
            with torch.device(device):
                fresh = type(module)(config=cfg)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, fresh)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    left += [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"tensors left uninitialised after loading: {left[:10]}")


def expected_original_shapes(config, family: str) -> dict[str, tuple[int, ...]]:
    """Every weight the model needs, under the checkpoint's own (original) names, with its shape."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    original = convert.native_to_original(model.state_dict(), config, family)
    return {k: tuple(v.shape) for k, v in original.items()}


_LM_HEAD = ("language_model.lm_head.weight", "language_model.output.weight")


def check_checkpoint(sd: dict[str, torch.Tensor], config, family: str, folder: str | os.PathLike = "") -> None:
    """Missing, unexpected and wrongly shaped weights, named as the checkpoint names them, with the
    shape the config asks for and the shape found; before any renaming, so no error speaks of a
    converted name the user never wrote."""
    expected = expected_original_shapes(config, family)
    keys = {k for k in sd if not convert.is_droppable(k)}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = sorted(k for k in set(expected) - keys if not (tied and k in _LM_HEAD))
    unexpected = sorted(keys - set(expected))
    where = f"{folder}: " if folder else ""
    shape = lambda t: tuple(int(x) for x in t)  # noqa: E731
    if missing or unexpected:
        parts = []
        if missing:
            listed = ", ".join(f"{k} (expected shape {shape(expected[k])})" for k in missing[:10])
            parts.append(f"missing {len(missing)}: {listed}")
        if unexpected:
            listed = ", ".join(f"{k} (found shape {shape(sd[k].shape)})" for k in unexpected[:10])
            parts.append(f"unexpected {len(unexpected)}: {listed}")
        raise KeyError(f"{where}the checkpoint does not match config.json: " + "; ".join(parts))
    wrong = sorted(k for k in keys if shape(sd[k].shape) != shape(expected[k]))
    if wrong:
        listed = ", ".join(
            f"{k}: expected shape {shape(expected[k])}, found {shape(sd[k].shape)}" for k in wrong[:10]
        )
        raise ValueError(f"{where}{len(wrong)} checkpoint weight(s) have the wrong shape for config.json: {listed}")


def load_internvl(folder: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  attn_implementation: str = "auto", img_context_token_id: int | None = None) -> LoadedModel:
    """Load an original InternVL2 folder (model_type internvl_chat) as InternVLForConditionalGeneration."""
    folder = Path(folder)
    orig = read_original_config(folder)
    family = convert.llm_family(orig["llm_config"])
    special = read_special_tokens(folder)
    ctx = img_context_token_id if img_context_token_id is not None else special.get("<IMG_CONTEXT>")
    if ctx is None:
        raise FileProblem(f"{folder}: no <IMG_CONTEXT> token in the tokenizer files (tokenizer.json, "
                          "added_tokens.json or tokenizer_config.json); pass img_context_token_id")
    config = convert.native_config(orig, ctx)
    original = read_state_dict(folder)
    check_checkpoint(original, config, family, folder)
    sd = convert.original_to_native(original, config, family)
    impl = pick_attn_implementation(attn_implementation, device, dtype)
    model = build_native(config, sd, dtype, device, impl)
    info = make_info(orig, folder, special, ctx, family)
    return LoadedModel(model=model, info=info)


def make_info(orig: dict, folder: Path, special: dict[str, int], ctx: int, family: str) -> ModelInfo:
    tc = _tokenizer_config(folder)
    template = orig.get("template")
    eos: list[int] = []
    end = TEMPLATE_END_TOKEN.get(template or "")
    if end and end in special:
        eos.append(special[end])
    eos_name = _token_name(tc.get("eos_token"))
    if eos_name and eos_name in special and special[eos_name] not in eos:
        eos.append(special[eos_name])
    bos_name = _token_name(tc.get("bos_token"))
    pad_name = _token_name(tc.get("pad_token"))
    v = orig["vision_config"]
    return ModelInfo(
        family=family,
        native_family=convert.NATIVE_OF_FAMILY[family],
        vision_style=convert.vision_style(v),
        template=template,
        tile_size=int(orig.get("force_image_size") or v["image_size"]),
        patch_size=int(v["patch_size"]),
        downsample_ratio=float(orig.get("downsample_ratio", 0.5)),
        tokens_per_tile=convert.tokens_per_tile(orig),
        img_context_token_id=int(ctx),
        img_start_token_id=special.get("<img>"),
        img_end_token_id=special.get("</img>"),
        eos_token_ids=eos,
        bos_token_id=special.get(bos_name) if bos_name else None,
        pad_token_id=special.get(pad_name) if pad_name else None,
        max_dynamic_patch=int(orig.get("max_dynamic_patch", 12)),
        min_dynamic_patch=int(orig.get("min_dynamic_patch", 1)),
        use_thumbnail=bool(orig.get("use_thumbnail", True)),
        dynamic_image_size=bool(orig.get("dynamic_image_size", True)),
        special_tokens=special,
        source_folder=str(folder),
        original_config=orig,
    )
