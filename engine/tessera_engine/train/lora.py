"""LoRA on chosen linear layers, merging, and the adapter file.

A LoRA layer keeps the original Linear as `base` (frozen) and adds `lora_A` (r × in) and
`lora_B` (out × r, zero at start), scaled by alpha / r. Merging writes
`base.weight + scale · B·A` back under the Linear's own name, so a merged export is a
plain model. The adapter file uses PEFT's key layout (`…lora_A.weight`, `…lora_B.weight`).
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn
from torch.nn import functional as F

BASE = ".base."


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    # Code that reads `layer.weight` (dtype or device checks) keeps working.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


def apply_lora(root: nn.Module, rank: int, alpha: float, targets: list[str]) -> list[str]:
    """Replace every Linear under `root` whose own name is in `targets`; returns their names."""
    if rank <= 0:
        return []
    wanted = set(targets)
    hits = [(n, m) for n, m in root.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in wanted]
    if not hits:
        raise ValueError(f"LoRA targets {sorted(wanted)} match no linear layer")
    for name, lin in hits:
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, attr, LoRALinear(lin, rank, alpha))
    return [n for n, _ in hits]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_scales(model: nn.Module) -> dict[str, float]:
    """Layer name (as in a state dict) -> alpha / r, for merging a gathered state dict."""
    return {n: m.scale for n, m in lora_layers(model).items()}


def merge_state_dict(sd: dict[str, torch.Tensor], scales: dict[str, float]) -> dict[str, torch.Tensor]:
    """A LoRA model's state dict -> the plain model's: W + scale · B·A under the Linear's name."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(".lora_A") or k.endswith(".lora_B"):
            continue
        if BASE in k:
            layer, _, leaf = k.rpartition(BASE)
            name = f"{layer}.{leaf}"
            if leaf == "weight" and layer in scales:
                a = sd[f"{layer}.lora_A"].float()
                b = sd[f"{layer}.lora_B"].float()
                v = (v.float() + scales[layer] * (b @ a)).to(v.dtype)
            out[name] = v
        else:
            out[k] = v
    return out


def adapter_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors, under PEFT's names."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".lora_A") or k.endswith(".lora_B"):
            layer, _, which = k.rpartition(".")
            out[f"base_model.model.{layer}.{which}.weight"] = v.contiguous()
    return out


def save_adapter(folder: str, sd: dict[str, torch.Tensor], model: nn.Module, base_model: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    layers = lora_layers(model)
    ranks = {m.rank for m in layers.values()}
    targets = sorted({n.rsplit(".", 1)[-1] for n in layers})
    alphas = {n: m.scale * m.rank for n, m in layers.items()}
    save_file(adapter_state_dict(sd), os.path.join(folder, "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model,
        "r": max(ranks) if ranks else 0,
        "lora_alpha": max(alphas.values()) if alphas else 0,
        "rank_pattern": {n: m.rank for n, m in layers.items()},
        "alpha_pattern": alphas,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "note": "names follow transformers' native InternVLForConditionalGeneration",
    }
    with open(os.path.join(folder, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
