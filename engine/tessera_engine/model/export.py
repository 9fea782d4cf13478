"""Write a model back out: the original InternVL2 folder format, or transformers' native format."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from . import convert
from .load import LoadedModel, read_original_config

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _is_weight_file(name: str) -> bool:
    return name in _WEIGHT_FILES or name.endswith((".safetensors", ".bin", ".pt", ".pth"))


def copy_side_files(source_folder: str | os.PathLike, out_dir: Path, skip: set[str]) -> list[str]:
    """Tokenizer files, generation config, remote-code files...: everything that is not weights or skipped."""
    copied = []
    for p in sorted(Path(source_folder).iterdir()):
        if p.is_file() and not _is_weight_file(p.name) and p.name not in skip:
            shutil.copy2(p, out_dir / p.name)
            copied.append(p.name)
    return copied


def save_sharded(sd: dict[str, torch.Tensor], out_dir: Path, max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors + index when larger than a shard."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(sd):
        t = sd[k].detach().contiguous().cpu()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    total = 0
    for name, shard in zip(names, shards):
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        for k, t in shard.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    with open(out_dir / "model.safetensors.index.json", "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / 'fp16' / 'float16' / 'fp32' / 'float32' / 'auto' (None: the source's)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}.get(
        name, name)
    if key == "auto":
        return None
    if key not in DTYPES:
        raise ValueError(f"export dtype {name!r}: expected auto, bf16, fp16 or fp32")
    return DTYPES[key]


def source_dtype(folder: str | os.PathLike) -> torch.dtype:
    """The dtype the folder's weights are stored in: the first floating tensor's (safetensors header),
    else the config's `torch_dtype`, else float32."""
    folder = Path(folder)
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        st = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
        with open(shards[0], "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for k, v in sorted(header.items()):
            if k != "__metadata__" and v.get("dtype") in st:
                return st[v["dtype"]]
    cfg_path = folder / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        name = cfg.get("torch_dtype") or cfg.get("dtype") or (cfg.get("llm_config") or {}).get("torch_dtype")
        if name in DTYPES:
            return DTYPES[name]
    return torch.float32


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def _unwrap(loaded_or_model):
    if isinstance(loaded_or_model, LoadedModel):
        return loaded_or_model.model, loaded_or_model.info.source_folder
    return loaded_or_model, None


def export_original(loaded_or_model, out_dir: str | os.PathLike, source_folder: str | os.PathLike | None = None,
                    max_shard_bytes: int = 5 * 2**30, dtype: str | torch.dtype | None = None) -> Path:
    """Write the original InternVL2 folder format: config.json (model_type internvl_chat, the LLM config's
    `architectures` always set), weights under the original names in `dtype` (default: the source
    folder's), and the source folder's other files (tokenizer, generation config, remote-code files) copied.

    The official InternVLChatConfig forces `tie_word_embeddings=False` and builds a separate output
    layer, so a tied model is written untied: `lm_head` (or InternLM2's `output`) is a copy of the
    input embeddings and both configs say untied."""
    model, src = _unwrap(loaded_or_model)
    source_folder = source_folder or src
    if source_folder is None:
        raise ValueError("export_original needs the source folder (its config and tokenizer files)")
    dtype = parse_dtype(dtype) or source_dtype(source_folder)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    orig = read_original_config(source_folder)
    family = convert.llm_family(orig["llm_config"])
    llm = dict(orig["llm_config"])
    llm["architectures"] = [{v: k for k, v in convert.ARCH_FAMILY.items()}[family]]
    llm.setdefault("model_type", family)
    llm["vocab_size"] = int(model.config.text_config.vocab_size)
    llm["tie_word_embeddings"] = False
    name = str(dtype).removeprefix("torch.")
    llm["torch_dtype"] = name
    orig = {**orig, "llm_config": llm, "torch_dtype": name, "tie_word_embeddings": False}
    orig.setdefault("architectures", ["InternVLChatModel"])

    sd = dict(model.state_dict())
    if "lm_head.weight" not in sd or getattr(model.config, "tie_word_embeddings", False):
        # its own tensor: safetensors refuses two names for one storage
        sd["lm_head.weight"] = model.get_input_embeddings().weight.detach().clone()
    orig_sd = _cast(convert.native_to_original(sd, model.config, family), dtype)
    for stale in _WEIGHT_FILES:
        if (out / stale).exists():
            (out / stale).unlink()
    save_sharded(orig_sd, out, max_shard_bytes)
    copy_side_files(source_folder, out, skip={"config.json"})
    with open(out / "config.json", "w", encoding="utf-8") as f:
        json.dump(orig, f, indent=2, ensure_ascii=False)
    return out


def export_native(loaded_or_model, out_dir: str | os.PathLike, tokenizer_source: str | os.PathLike | None = None,
                  dtype: str | torch.dtype | None = None) -> Path:
    """transformers' native InternVL format: loads with AutoModelForImageTextToText / AutoProcessor,
    no remote code. Weights in `dtype` (default: the source folder's); the processor (image processor,
    tokenizer with the InternVL image tokens, chat template) is written from tokenizer_source
    (default: the loaded model's source folder), see processor.py."""
    from .processor import write_processor

    model, src = _unwrap(loaded_or_model)
    tokenizer_source = tokenizer_source or src
    dtype = parse_dtype(dtype) or (source_dtype(tokenizer_source) if tokenizer_source else torch.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = _cast(model.state_dict(), dtype)
    old = model.config.dtype if hasattr(model.config, "dtype") else None
    model.config.dtype = dtype
    try:
        model.save_pretrained(str(out), state_dict=sd)
    finally:
        model.config.dtype = old
    if tokenizer_source is not None:
        write_processor(tokenizer_source, out, model.config)
        _write_generation_config(tokenizer_source, out)
    return out


def _write_generation_config(source: str | os.PathLike, out: Path) -> None:
    """Stop at the template's end-of-turn token (and EOS), as tessera's generation does."""
    from .load import make_info, read_special_tokens

    orig = read_original_config(source)
    special = read_special_tokens(source)
    ctx = special.get("<IMG_CONTEXT>", -1)
    info = make_info(orig, Path(source), special, ctx, convert.llm_family(orig["llm_config"]))
    gen = {"eos_token_id": info.eos_token_ids if len(info.eos_token_ids) != 1 else info.eos_token_ids[0]}
    if info.pad_token_id is not None:
        gen["pad_token_id"] = info.pad_token_id
    if info.bos_token_id is not None:
        gen["bos_token_id"] = info.bos_token_id
    path = out / "generation_config.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**old, **gen}, f, indent=2)
