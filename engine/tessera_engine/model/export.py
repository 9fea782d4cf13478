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


def _unwrap(loaded_or_model):
    if isinstance(loaded_or_model, LoadedModel):
        return loaded_or_model.model, loaded_or_model.info.source_folder
    return loaded_or_model, None


def export_original(loaded_or_model, out_dir: str | os.PathLike, source_folder: str | os.PathLike | None = None,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write the original InternVL2 folder format: config.json (model_type internvl_chat, the LLM config's
    `architectures` always set), weights under the original names, and the source folder's other files
    (tokenizer, generation config, remote-code files) copied."""
    model, src = _unwrap(loaded_or_model)
    source_folder = source_folder or src
    if source_folder is None:
        raise ValueError("export_original needs the source folder (its config and tokenizer files)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    orig = read_original_config(source_folder)
    family = convert.llm_family(orig["llm_config"])
    llm = dict(orig["llm_config"])
    llm["architectures"] = [{v: k for k, v in convert.ARCH_FAMILY.items()}[family]]
    llm.setdefault("model_type", family)
    llm["vocab_size"] = int(model.config.text_config.vocab_size)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    llm["tie_word_embeddings"] = tied
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    llm["torch_dtype"] = dtype
    orig = {**orig, "llm_config": llm, "torch_dtype": dtype}
    orig.setdefault("architectures", ["InternVLChatModel"])

    sd = dict(model.state_dict())
    if tied:
        sd.pop("lm_head.weight", None)
    orig_sd = convert.native_to_original(sd, model.config, family)
    for stale in _WEIGHT_FILES:
        if (out / stale).exists():
            (out / stale).unlink()
    save_sharded(orig_sd, out, max_shard_bytes)
    copy_side_files(source_folder, out, skip={"config.json"})
    with open(out / "config.json", "w", encoding="utf-8") as f:
        json.dump(orig, f, indent=2, ensure_ascii=False)
    return out


def export_native(loaded_or_model, out_dir: str | os.PathLike, tokenizer_source: str | os.PathLike | None = None) -> Path:
    """transformers' native InternVL format (loads with InternVLForConditionalGeneration.from_pretrained).
    Tokenizer files are copied from tokenizer_source (default: the loaded model's source folder)."""
    model, src = _unwrap(loaded_or_model)
    tokenizer_source = tokenizer_source or src
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    if tokenizer_source is not None:
        skip = {"config.json", "generation_config.json"}
        skip |= {p.name for p in Path(tokenizer_source).iterdir() if p.suffix == ".py"}  # remote code is not ours
        copy_side_files(tokenizer_source, out, skip=skip)
    return out
