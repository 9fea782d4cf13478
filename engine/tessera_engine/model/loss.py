"""Loss reductions over a global batch, normalised by global totals.

Every reduction is a weighted sum of token losses divided by a global-batch constant, so the
micro-batch losses of gradient accumulation and of data-parallel ranks simply add up to the loss
of one big batch (summing gradients, never averaging them again):
- token:  every learned token weighs 1 / (learned tokens in the global batch)
- sample: a token of a sample with n learned tokens weighs 1 / (n * samples in the global batch)
- square: a token of a sample with n learned tokens weighs 1/sqrt(n), normalised so all weights
          of the global batch sum to 1, i.e. divided by the sum of sqrt(n) over its samples.
Samples with no learned token carry no weight and are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

MODES = ("token", "sample", "square")


@dataclass(frozen=True)
class GlobalNorm:
    tokens: float  # learned tokens in the global batch
    samples: float  # samples with at least one learned token in the global batch
    sqrt_sum: float  # sum over those samples of sqrt(learned tokens)

    def __add__(self, other: "GlobalNorm") -> "GlobalNorm":
        return GlobalNorm(self.tokens + other.tokens, self.samples + other.samples, self.sqrt_sum + other.sqrt_sum)


def global_norm_from_counts(learned_counts: Iterable[int], all_reduce: bool = False, group=None) -> GlobalNorm:
    """Totals from per-sample learned-token counts (as the plan lists them). Pass the counts of every
    micro-batch of this rank's step; with all_reduce the totals are summed over the process group."""
    counts = [int(c) for c in learned_counts if int(c) > 0]
    t = torch.tensor([float(sum(counts)), float(len(counts)), math.fsum(math.sqrt(c) for c in counts)],
                     dtype=torch.float64)
    if all_reduce:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
            tt = t.to(dev)
            dist.all_reduce(tt, group=group)
            t = tt.cpu()
    return GlobalNorm(float(t[0]), float(t[1]), float(t[2]))


def token_weights(sample_index: torch.Tensor, mode: str, norm: GlobalNorm,
                  num_samples: int | None = None) -> torch.Tensor:
    """The weight of each learned token under a reduction (float32, same device as sample_index)."""
    if mode not in MODES:
        raise ValueError(f"loss reduction must be one of {MODES}, got {mode!r}")
    dev = sample_index.device
    if sample_index.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=dev)
    if mode == "token":
        if norm.tokens <= 0:
            raise ValueError("global batch has no learned token")
        return torch.full(sample_index.shape, 1.0 / norm.tokens, dtype=torch.float32, device=dev)
    n = torch.bincount(sample_index, minlength=num_samples or 0).to(torch.float64)[sample_index]
    if mode == "sample":
        if norm.samples <= 0:
            raise ValueError("global batch has no sample with a learned token")
        return (1.0 / (n * norm.samples)).to(torch.float32)
    if norm.sqrt_sum <= 0:
        raise ValueError("global batch has no sample with a learned token")
    return (1.0 / (n.sqrt() * norm.sqrt_sum)).to(torch.float32)


def reduce_loss(token_losses: torch.Tensor, sample_index: torch.Tensor, mode: str, global_norm: GlobalNorm,
                num_samples: int | None = None) -> torch.Tensor:
    """This micro-batch's share of the global-batch loss; summing it over micro-batches and ranks gives
    the loss of the whole global batch. Each sample must lie entirely in one micro-batch."""
    if token_losses.shape != sample_index.shape:
        raise ValueError(f"token_losses {tuple(token_losses.shape)} vs sample_index {tuple(sample_index.shape)}")
    w = token_weights(sample_index, mode, global_norm, num_samples)
    return (token_losses.float() * w).sum()
