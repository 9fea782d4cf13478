"""The training loop on CPU with a tiny model: learning, exact resume, freezing, LoRA."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_fixtures as F  # noqa: E402

from tessera_engine.train import checkpoint, loop  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = F.tiny_model(root / "model")
    cache = F.write_cache(root, model, n_samples=32)
    return root, model, cache


def _weights(ckpt: str) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = Path(ckpt).parent.parent / f"{Path(ckpt).name}.pt"
    dcp_to_torch_save(ckpt, str(out))
    return torch.load(out, weights_only=True)["model"]


def test_overfits_32_samples(data):
    root, model, cache = data
    plan = F.write_plan(root / "plan-overfit", cache, steps=20, slots_per_step=2, world_size=1)
    r = loop.train(F.job(model, cache, plan, root / "overfit", lr=2e-2, warmup_ratio=0.1, min_lr=2e-3))
    losses = r["losses"]
    assert len(losses) == 20
    assert min(losses[-3:]) < 0.1 * losses[0], losses


def test_resume_continues_exactly(data, monkeypatch):
    root, model, cache = data
    plan = F.write_plan(root / "plan-resume", cache, steps=15, slots_per_step=2, world_size=1)
    cfg = dict(lr=5e-3, warmup_ratio=0.2, min_lr=1e-4, weight_decay=0.1, checkpoint_interval=4, checkpoint_keep=2)
    whole = loop.train(F.job(model, cache, plan, root / "whole", **cfg))
    assert whole["steps_done"] == 15
    # Interval checkpoints at 4, 8, 12 and the final one at 15; the last two are kept.
    kept = [Path(p).name for p in checkpoint.list_checkpoints(str(root / "whole"))]
    assert kept == ["step-00000012", "step-00000015"]

    # Stop the second run with SIGTERM as step 7's metrics go out: it checkpoints at 7 and stops.
    real_emit = loop.emit

    def emit(event, **fields):
        real_emit(event, **fields)
        if event == "metric" and fields["step"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "emit", emit)
    first = loop.train(F.job(model, cache, plan, root / "broken", **cfg))
    monkeypatch.setattr(loop, "emit", real_emit)
    assert first["stopped"] and first["steps_done"] == 7
    assert Path(first["checkpoint"]).name == "step-00000007"
    second = loop.train({**F.job(model, cache, plan, root / "broken", **cfg), "resume": True})
    assert second["start_step"] == 7 and second["steps_done"] == 15

    assert first["losses"] == pytest.approx(whole["losses"][:7], abs=1e-6)
    assert second["losses"] == pytest.approx(whole["losses"][7:], abs=1e-6)
    a = _weights(whole["checkpoint"])
    b = _weights(second["checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_frozen_parts_stay_bit_identical(data):
    from tessera_engine.model.load import load_internvl

    root, model, cache = data
    plan = F.write_plan(root / "plan-frozen", cache, steps=3, slots_per_step=2, world_size=1)
    r = loop.train(F.job(model, cache, plan, root / "frozen", lr=1e-2, freeze_vit=True, freeze_mlp=True))
    trained = _weights(r["checkpoint"])
    before = load_internvl(model).model.state_dict()
    frozen = [k for k in before if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))]
    assert frozen
    for k in frozen:
        assert torch.equal(trained[f"model.{k}"], before[k]), k
    moved = [k for k in before if k.startswith("model.language_model.layers.") and not torch.equal(trained[f"model.{k}"], before[k])]
    assert moved, "the language model should have learned"


def test_lora_merge_equals_adapter_at_run_time(data):
    from tessera_engine.model.load import load_internvl
    from tessera_engine.model.packed import packed_forward
    from tessera_engine.train import lora

    root, model, cache = data
    plan = F.write_plan(root / "plan-lora", cache, steps=4, slots_per_step=2, world_size=1)
    cfg = dict(lr=2e-2, freeze_vit=True, llm_lora_rank=4, llm_lora_alpha=8, vit_lora_rank=2, export="original")
    r = loop.train(F.job(model, cache, plan, root / "lora", **cfg))
    assert r["export"]["dir"] == str(root / "lora" / "export")
    settings = loop.TrainSettings.from_config(F.job(model, cache, plan, root / "x", **cfg)["config"])

    # The adapter at run time: the LoRA model with the trained checkpoint loaded.
    with_lora = load_internvl(model).model
    loop.freeze(with_lora, settings)
    names = loop.add_lora(with_lora, settings)
    assert any("language_model" in n or "q_proj" in n for n in names)
    trained = {k.removeprefix("model."): v for k, v in _weights(r["checkpoint"]).items()}
    with_lora.load_state_dict(trained)
    assert any(float(m.lora_B["default"].weight.detach().abs().sum()) > 0
               for m in lora.lora_layers(with_lora).values())
    base = load_internvl(model).model.state_dict()
    for k, v in trained.items():
        if ".base_layer." in k:
            assert torch.equal(v, base[k.replace(".base_layer.", ".")]), k  # frozen base weights unchanged

    # Merged: the exported original-format folder, a plain model with W + scale·B·A.
    merged = load_internvl(r["export"]["dir"]).model
    assert not lora.lora_layers(merged)

    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    cu = [torch.tensor([0, 5, 8], dtype=torch.int32)]
    pix = torch.zeros(0, 3, 28, 28)
    with torch.no_grad():
        a = packed_forward(with_lora.eval(), ids, None, cu, None, ids, return_logits=True).logits
        b = packed_forward(merged.eval(), ids, None, cu, None, ids, return_logits=True).logits
        feats_a = with_lora.model.get_image_features(torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))).pooler_output
        feats_b = merged.model.get_image_features(torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))).pooler_output
    del pix
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert torch.allclose(feats_a, feats_b, atol=1e-5), (feats_a - feats_b).abs().max()


def test_weights_only_checkpoints_still_resume(data):
    root, model, cache = data
    plan = F.write_plan(root / "plan-dropopt", cache, steps=3, slots_per_step=2, world_size=1)
    cfg = dict(lr=1e-2, checkpoint_interval=1, checkpoint_keep=5, checkpoint_drop_optimizer=True)
    r = loop.train(F.job(model, cache, plan, root / "dropopt", **cfg))
    names = sorted(os.listdir(r["checkpoint"]))
    meta = json.loads(Path(r["checkpoint"], "meta.json").read_text())
    assert meta["has_optimizer"] is False and meta["steps_done"] == 3
    assert "rng-rank0.pt" in names
    assert _weights(r["checkpoint"])  # the weights are there, the optimizer is not:
    assert "optim" not in torch.load(Path(r["checkpoint"]).parent.parent / "step-00000003.pt", weights_only=True)
    # Resuming from step 1's weights-only checkpoint: a fresh optimizer, the plan position kept.
    for later in ("step-00000002", "step-00000003"):
        shutil.rmtree(Path(r["checkpoint"]).parent / later)
    again = loop.train({**F.job(model, cache, plan, root / "dropopt", **cfg), "resume": True})
    assert again["start_step"] == 1 and again["steps_done"] == 3 and len(again["losses"]) == 2


def test_concat_packing_cuts_inside_images(data):
    """Rows cut inside an image use only their share of its features; the run still learns."""
    from tessera_engine.data.cache import PreparedCache
    from tessera_engine.model.load import load_internvl
    from tessera_engine.model.packed import embed_with_images, image_features

    root, model, cache_dir = data
    cache = PreparedCache(str(cache_dir))
    # A row length that cuts at least one image's context tokens in two.
    for cap in range(9, 40):
        rows = F.concat_pieces(cache, list(range(len(cache))), cap)
        if any(im.context_start < s + n < im.context_start + im.tiles for r in rows for i, s, n in r
               for im in cache.images(i)):
            break
    plan = F.write_plan(root / "plan-concat", cache_dir, steps=8, slots_per_step=2, world_size=1,
                        pack_max_length=cap, concat=True)
    r = loop.train(F.job(model, cache_dir, plan, root / "concat", lr=1e-2))
    assert r["steps_done"] == 8 and all(np.isfinite(r["losses"]))

    # The split rows see exactly the halves of the image's features.
    m = load_internvl(model).model.eval()
    ctx = m.config.image_token_id
    px = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = image_features(m, px).reshape(-1, m.config.text_config.hidden_size)
        a = embed_with_images(m, torch.tensor([[5, ctx, ctx]]), px, image_spans=[(4, 0, 2)])
        b = embed_with_images(m, torch.tensor([[ctx, ctx, 6]]), px, image_spans=[(4, 2, 4)])
    assert torch.allclose(a[0, 1:], feats[0:2]) and torch.allclose(b[0, :2], feats[2:4])


def test_a_plan_that_disagrees_with_the_cache_stops_the_run(data):
    """The planner computes each step's learned tokens; the engine checks them as it learns."""
    root, model, cache = data
    plan = F.write_plan(root / "plan-disagree", cache, steps=3, slots_per_step=2, world_size=1)
    step_learned = np.memmap(Path(plan) / "step_learned.i64", dtype="<i8", mode="r+")
    step_learned[0] += 1
    step_learned.flush()
    del step_learned
    with pytest.raises(RuntimeError, match=r"step 1: the engine learned from \d+ tokens, the plan says \d+"):
        loop.train(F.job(model, cache, plan, root / "disagree", lr=1e-3))
