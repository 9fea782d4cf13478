"""What every rank runs for a micro-batch with nothing to learn from, so that all ranks take part
in the same collectives in the same order and every trainable parameter gets a gradient."""

from __future__ import annotations

import torch
from torch import nn


def pixels_or_touch(model: nn.Module, tile: int, item: dict, device: torch.device):
    """The micro-batch's tiles, or (when it has none) a zero-weight pass of one blank tile through
    the vision tower, run before the language model as a real image would be: every rank then runs
    its layers in the same order, so their collectives pair up. Returns (pixels or None, touch or None)."""
    from ..model.packed import image_features

    pixels = None if item["empty"] else item["pixel_values"].to(device, non_blocking=True)
    if pixels is not None and pixels.shape[0]:
        return pixels, None
    return None, image_features(model, torch.zeros(1, 3, tile, tile, device=device)).sum() * 0.0


def empty_slot_loss(model: nn.Module, device: torch.device) -> torch.Tensor:
    """A slot the plan left empty: a one-token row with zero weight keeps the ranks in step."""
    from ..model.packed import packed_forward

    ids = torch.zeros(1, dtype=torch.long, device=device)
    cu = torch.tensor([0, 1], dtype=torch.int32, device=device)
    out = packed_forward(model, ids, ids.clone(), cu, None, torch.zeros(1, dtype=torch.long, device=device))
    return zero_loss(out.token_losses)


def zero_loss(token_losses: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph: the sum of an empty tensor is 0 and still reaches the head's weight."""
    return token_losses.sum() * 0.0
