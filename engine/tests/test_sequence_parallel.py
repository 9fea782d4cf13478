"""Sequence parallelism (sp, ring, sp × ring) on CPU with gloo gives the unsplit row's loss and gradients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import sp_fixtures as SP  # noqa: E402
import train_fixtures as F  # noqa: E402

ROWS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    model = F.tiny_model(root / "model")
    cache = F.write_cache(root, model, n_samples=32)
    base = F.write_plan(root / "plan-base", cache, steps=2, slots_per_step=2, world_size=1, concat=True,
                        pack_max_length=72)
    return root, model, cache, base


def _run(n: int, args: list[str]) -> None:
    env = F.env_with_engine()
    env["OMP_NUM_THREADS"] = "1"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--standalone",
                        str(Path(__file__).parent / "sp_worker.py"), *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]


@pytest.mark.parametrize("sp,ring", [(2, 1), (1, 2), (2, 2)])
def test_sharded_rows_match_one_process(data, sp, ring):
    root, model, cache, base = data
    plan = SP.shard_plan(base, root / f"plan-sp{sp}-ring{ring}", sp, ring)
    # the rows checked hold samples and images cut by the shards
    assert SP.straddling_images(plan, ROWS) >= 1
    out = root / f"sp{sp}-ring{ring}.json"
    _run(sp * ring, [str(model), str(cache), str(plan), str(out), str(ROWS)])
    res = json.loads(out.read_text())
    for reduction, r in res.items():
        assert r["loss_one"] > 0
        assert abs(r["loss_sp"] - r["loss_one"]) < 1e-4, (reduction, r)
        assert r["grad_diff"] < 1e-4, (reduction, r)
        assert r["grad_scale"] > 1e-3 and r["vision_grad"] > 0  # the gradients compared are not all zero


def test_training_with_sp_matches_one_process_and_resumes(data):
    """20 steps on 2 ranks (sp 2, FSDP2 over both, activation checkpointing) against one
    process on the same rows; then a run stopped after step 5 and resumed gives the same losses."""
    from test_train_distributed import _torchrun

    from tessera_engine.train import loop

    root, model, cache, _ = data
    steps = 20
    one_plan = F.write_plan(root / "plan-train-1", cache, steps=steps, slots_per_step=2, world_size=1, concat=True,
                            pack_max_length=72)
    sp_plan = SP.shard_plan(one_plan, root / "plan-train-sp2", 2, 1)
    cfg = dict(lr=5e-3, warmup_ratio=0.1, min_lr=1e-4, weight_decay=0.05, shard_strategy="zero2",
               gradient_checkpointing=True, loss_reduction="sample")
    one = loop.train(F.job(model, cache, one_plan, root / "train-one", **cfg))["losses"]
    events = _torchrun(F.job(model, cache, sp_plan, root / "train-sp", **cfg), root, "train-sp")
    results = {e["rank"]: e for e in events if e["event"] == "result"}
    assert set(results) == {0, 1}
    assert any("sequence parallel: sp 2 × ring 1" in e.get("message", "") for e in events if e["event"] == "log")
    sp = results[0]["losses"]
    assert len(sp) == len(one) == steps
    for k, (a, b) in enumerate(zip(one, sp)):
        assert abs(a - b) < 1e-4, f"step {k + 1}: one process {a}, sp 2 {b}"
    assert sp[-1] < sp[0]

    job = F.job(model, cache, sp_plan, root / "train-sp-broken", **cfg)
    first = _torchrun(job, root, "sp-broken", stop_rank_at=(1, 5))
    r0 = next(e for e in first if e["event"] == "result" and e["rank"] == 0)
    assert r0["stopped"] and r0["steps_done"] < steps
    rest = _torchrun({**job, "resume": True}, root, "sp-resumed")
    r = next(e for e in rest if e["event"] == "result" and e["rank"] == 0)
    assert r["start_step"] == r0["steps_done"] and r["steps_done"] == steps
    assert r0["losses"] + r["losses"] == pytest.approx(sp, abs=1e-6)


def test_refuses_heads_that_do_not_divide_by_sp(data):
    from tessera_engine.model.load import load_internvl
    from tessera_engine.train.sequence_parallel import SequenceParallel, prepare_model

    _, model, _, _ = data
    m = load_internvl(model).model  # 4 attention heads, 2 key/value heads
    spc = SequenceParallel(sp=3, ring=1, dp=1, sp_rank=0, ring_rank=0, dp_rank=0)
    with pytest.raises(RuntimeError, match=r"sp_size 3: the language model has 4 attention heads, which do not divide"):
        prepare_model(m, spc)
    assert m.config.text_config._attn_implementation != "tessera_sequence_parallel"
