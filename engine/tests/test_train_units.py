"""Small pieces of the training loop: parameter groups, the schedule, LoRA merge and adapter."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tessera_engine.train import lora
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


def test_lora_starts_as_the_base_and_merges_exactly():
    torch.manual_seed(0)
    m = Block()
    x = torch.randn(3, 6)
    before = m(x)
    names = lora.apply_lora(m, 2, 4.0, ["q_proj", "fc1"])
    assert names == ["q_proj", "fc1"]
    assert torch.equal(m(x), before)  # B starts at zero
    assert not m.q_proj.base.weight.requires_grad and m.q_proj.lora_A.requires_grad
    with torch.no_grad():
        for layer in lora.lora_layers(m).values():
            layer.lora_B.normal_()
    plain = Block()
    plain.load_state_dict(lora.merge_state_dict(m.state_dict(), lora.lora_scales(m)))
    assert torch.allclose(plain(x), m(x), atol=1e-6)
    with pytest.raises(ValueError, match="match no linear"):
        lora.apply_lora(Block(), 2, 4.0, ["nothing"])


def test_adapter_files_use_peft_names(tmp_path):
    from safetensors.torch import load_file

    m = Block()
    lora.apply_lora(m, 2, 8.0, ["q_proj"])
    lora.save_adapter(str(tmp_path), m.state_dict(), m, "/models/base")
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert set(tensors) == {"base_model.model.q_proj.lora_A.weight", "base_model.model.q_proj.lora_B.weight"}
    assert tensors["base_model.model.q_proj.lora_A.weight"].shape == (2, 6)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 8.0 and cfg["target_modules"] == ["q_proj"]
