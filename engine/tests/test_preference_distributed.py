"""MPO on two ranks (torchrun, gloo, CPU) gives the losses and metrics of one process with the
same pairs per step: the reference pass, the loss denominators and the BCO baseline are global."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pair_fixtures as P  # noqa: E402
import train_fixtures as F  # noqa: E402
from test_train_distributed import _torchrun  # noqa: E402

from tessera_engine.train import loop  # noqa: E402

STEPS = 5


def test_two_ranks_match_one_process(tmp_path, monkeypatch):
    model = F.tiny_model(tmp_path / "model")
    cache = P.write_pair_cache(tmp_path, model, n_pairs=16)
    cfg = dict(method="mpo", beta=0.1, lr=5e-3, warmup_ratio=0.1, min_lr=1e-4, shard_strategy="zero2",
               gradient_checkpointing=False)
    one_plan = P.write_pair_plan(tmp_path / "plan1", cache, steps=STEPS, slots_per_step=2, world_size=1)
    metrics: list[dict] = []
    real_emit = loop.emit
    monkeypatch.setattr(loop, "emit", lambda e, **f: (real_emit(e, **f), e == "metric" and metrics.append(f)))
    one = loop.train(F.job(model, cache, one_plan, tmp_path / "one", **cfg))["losses"]
    # a fresh cache folder, so the two ranks compute (and store) the reference themselves
    cache2 = P.write_pair_cache(tmp_path / "c2", model, n_pairs=16)
    two_plan = P.write_pair_plan(tmp_path / "plan2", cache2, steps=STEPS, slots_per_step=2, world_size=2)
    events = _torchrun(F.job(model, cache2, two_plan, tmp_path / "two", **cfg), tmp_path, "two")
    results = {e["rank"]: e for e in events if e["event"] == "result"}
    two = results[0]["losses"]
    assert results[1]["losses"] == two and len(two) == len(one) == STEPS
    for k, (a, b) in enumerate(zip(one, two)):
        assert abs(a - b) < 1e-4, f"step {k + 1}: one process {a}, two ranks {b}"
    two_metrics = [e for e in events if e["event"] == "metric"]
    for m1, m2 in zip(metrics, two_metrics):
        for k in ("reward_margin", "reward_accuracy", "loss_sigmoid", "loss_bco_pair", "nll_loss", "bco_baseline"):
            assert m2[k] == pytest.approx(m1[k], abs=1e-4), (m1["step"], k)
    assert len(list((cache2 / "reference").glob("*/logps.f64"))) == 1
