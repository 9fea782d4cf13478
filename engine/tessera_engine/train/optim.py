"""AdamW without decay on norms and biases; linear warmup then cosine to min_lr."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (norms, biases, scales)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # 1-D tensors are norms' weights, biases and per-channel scales (lambda_1/2): never decayed.
        # Embedding-like tables and LoRA matrices are 2-D and decay like other weights.
        if p.ndim < 2 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, device_type: str = "cpu") -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("no trainable parameters: every part of the model is frozen")
    if device_type == "cuda":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    # On CPU the plain per-parameter loop: its arithmetic is the same however params are sharded.
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, total: int, warmup_ratio: float, lr: float, min_lr: float):
    warmup = math.ceil(total * warmup_ratio)
    # LambdaLR multiplies the base lr; its state (the step count) is all a resume needs.
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, warmup, lr, min_lr) / lr)
