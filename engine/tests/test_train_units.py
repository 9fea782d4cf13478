"""Small pieces of the training loop: parameter groups, the schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tessera_engine.train.optim import build_optimizer, build_scheduler, lr_at, param_groups


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.lambda_1 = nn.Parameter(torch.ones(6))
        self.fc1 = nn.Linear(6, 4, bias=False)

    def forward(self, x):
        return self.fc1(self.norm(self.q_proj(x)) * self.lambda_1)


def test_no_decay_on_norms_biases_and_scales():
    m = Block()
    m.fc1.weight.requires_grad_(False)
    groups = param_groups(m, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed == {id(m.q_proj.weight)}
    assert plain == {id(m.q_proj.bias), id(m.norm.weight), id(m.norm.bias), id(m.lambda_1)}
    with pytest.raises(ValueError, match="frozen"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), 1e-3, 0.1)


def test_warmup_then_cosine_to_min_lr():
    total, warmup, lr, low = 20, 4, 1e-3, 1e-5
    assert [lr_at(s, total, warmup, lr, low) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr_at(4, total, warmup, lr, low) == pytest.approx(lr)
    assert lr_at(12, total, warmup, lr, low) == pytest.approx(low + (lr - low) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(total, total, warmup, lr, low) == pytest.approx(low)
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=lr)
    sched = build_scheduler(opt, total, 0.2, lr, low)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, total, warmup, lr, low) for s in range(total)])
