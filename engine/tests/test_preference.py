"""Preference optimisation: each loss term against its formula, per-sequence log-probabilities of
packed pairs, stored reference log-probabilities, MPO training with exact resume."""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import pair_fixtures as P  # noqa: E402
import train_fixtures as F  # noqa: E402

from tessera_engine.data.cache import PreparedCache, TrainingPlan  # noqa: E402
from tessera_engine.data.loader import Tiling, micro_batches  # noqa: E402
from tessera_engine.model.load import load_internvl  # noqa: E402
from tessera_engine.model.packed import packed_forward  # noqa: E402
from tessera_engine.train import loop, parallel, preference  # noqa: E402
from tessera_engine.train.preference import PreferenceSettings, pair_losses, sequence_logps  # noqa: E402


def _settings(terms, weights=None, beta=0.5, ls=0.0, rpo=0.0):
    return PreferenceSettings(method="dpo", loss_type=tuple(terms), loss_weights=tuple(weights or [1.0] * len(terms)),
                              beta=beta, rpo_alpha=rpo, label_smoothing=ls)


# Two pairs, β = 0.5, summed log-probabilities written out:
#   pair 1: policy chosen −10, rejected −14; reference chosen −11, rejected −12; 4 and 2 learned tokens
#   pair 2: policy chosen −8,  rejected −7;  reference chosen −8,  rejected −8;  1 and 1 learned tokens
PC, PR = torch.tensor([-10.0, -8.0]), torch.tensor([-14.0, -7.0])
RC, RR = torch.tensor([-11.0, -8.0]), torch.tensor([-12.0, -8.0])
NC, NR = torch.tensor([4.0, 1.0]), torch.tensor([2.0, 1.0])


def test_sigmoid_is_dpo_with_label_smoothing():
    # logits = (πc − πr) − (ρc − ρr): pair 1 (−10 + 14) − (−11 + 12) = 3, β·3 = 1.5;
    # pair 2 (−8 + 7) − 0 = −1, β·(−1) = −0.5.
    # −log σ(1.5) = log(1 + e^−1.5) = 0.2014132779827524; −log σ(−0.5) = log(1 + e^0.5) = 0.9740769841801067
    out = pair_losses(PC, PR, RC, RR, _settings(["sigmoid"]))
    assert out["sigmoid"].tolist() == pytest.approx([0.2014132779827524, 0.9740769841801067], abs=1e-6)
    # ε = 0.1: 0.9·(−log σ(1.5)) + 0.1·(−log σ(−1.5)) = 0.9·0.2014132779827524 + 0.1·1.7014132779827524
    #        = 0.35141327798275246
    smoothed = pair_losses(PC, PR, RC, RR, _settings(["sigmoid"], ls=0.1))
    assert float(smoothed["sigmoid"][0]) == pytest.approx(0.35141327798275246, abs=1e-6)
    # rewards β(π − ρ): pair 1 chosen 0.5·1 = 0.5, rejected 0.5·(−2) = −1
    assert out["chosen_rewards"].tolist() == pytest.approx([0.5, 0.0])
    assert out["rejected_rewards"].tolist() == pytest.approx([-1.0, 0.5])


def test_hinge_ipo_and_bco_pair():
    s = _settings(["hinge", "ipo", "bco_pair"])
    out = pair_losses(PC, PR, RC, RR, s, delta=0.2, nc=NC, nr=NR)
    # hinge: max(0, 1 − β·logits): pair 1 max(0, 1 − 1.5) = 0; pair 2 1 + 0.5 = 1.5
    assert out["hinge"].tolist() == pytest.approx([0.0, 1.5])
    # ipo on per-token means: pair 1 (−10/4 + 14/2) − (−11/4 + 12/2) = 4.5 − 3.25 = 1.25,
    # (1.25 − 1/(2·0.5))² = 0.0625; pair 2 (−8 + 7) − 0 = −1, (−1 − 1)² = 4
    assert out["ipo"].tolist() == pytest.approx([0.0625, 4.0])
    # bco_pair, δ = 0.2: pair 1 chosen reward 0.5, rejected −1:
    #   −log σ(0.5 − 0.2) − log σ(−(−1 − 0.2)) = log(1 + e^−0.3) + log(1 + e^−1.2) = 0.8176377118065583
    # pair 2 chosen 0, rejected 0.5: log(1 + e^0.2) + log(1 + e^0.3) = 1.652494113850119
    assert out["bco_pair"].tolist() == pytest.approx([0.8176377118065583, 1.652494113850119], abs=1e-6)


def test_sequence_logps_sum_minus_token_losses():
    # three sequences with token losses [1, 2], [0.5], [] (nothing learned) → −3, −0.5, 0
    lp = sequence_logps(torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0, 0, 1]), 3)
    assert lp.tolist() == [-3.0, -0.5, 0.0]


def test_bco_baseline_is_the_running_mean_of_step_means():
    b = preference.BcoBaseline()
    for r in (0.0, 0.3, -0.6):
        b.update(r)
    assert b.mean == pytest.approx((0.0 + 0.3 - 0.6) / 3) and b.count == 3
    c = preference.BcoBaseline()
    c.load(b.state())
    assert (c.mean, c.count) == (b.mean, b.count)


def test_settings_follow_the_official_mpo_recipe():
    s = PreferenceSettings.from_config({"method": "mpo"})
    assert s.loss_type == ("sigmoid", "bco_pair") and s.loss_weights == (0.8, 0.2)
    assert s.rpo_alpha == 1.0 and s.beta == 0.1
    assert PreferenceSettings.from_config({"method": "sft"}) is None
    with pytest.raises(ValueError, match="unknown loss term"):
        PreferenceSettings.from_config({"method": "dpo", "loss_type": "kto"})


# ------------------------------------------------------------------ with the tiny model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref")
    model = F.tiny_model(root / "model")
    cache = P.write_pair_cache(root, model, n_pairs=16)
    return root, model, cache


def _tiling(model):
    info = load_internvl(str(model)).info
    return Tiling(tile=info.tile_size, min_num=info.min_dynamic_patch, max_num=info.max_dynamic_patch,
                  use_thumbnail=info.use_thumbnail)


def test_packed_pairs_match_each_sequence_alone(data):
    root, model, cache_dir = data
    plan_dir = P.write_pair_plan(root / "plan-packed", cache_dir, steps=2, slots_per_step=1, world_size=1,
                                 pairs_per_row=3)
    m = load_internvl(str(model)).model.eval()
    plan = TrainingPlan(str(plan_dir))
    tiling = _tiling(model)
    one = micro_batches(str(cache_dir), str(plan_dir), 0, 0, tiling, 0)
    item = next(iter(one))
    samples = plan.micro_batch(item["index"]).samples
    assert len(samples) == 6 and list(samples[1::2] - samples[0::2]) == [1, 1, 1]
    packed = preference.frozen_logps(m, item, torch.device("cpu")).numpy()
    # each sequence alone: its own row, its own tiles
    cache = PreparedCache(str(cache_dir))
    from tessera_engine.data.pixels import load_tiles

    for k, s in enumerate(samples.tolist()):
        ids, labels = cache.tokens(s)
        tiles = [torch.from_numpy(load_tiles(im.path, im.wh, im.cols, im.rows, im.thumbnail, tiling.tile))
                 for im in cache.images(s)]
        with torch.no_grad():
            out = packed_forward(m, torch.from_numpy(ids.astype(np.int64)), None, None,
                                 torch.cat(tiles) if tiles else None, torch.from_numpy(labels.astype(np.int64)))
        alone = float(-out.token_losses.double().sum())
        assert packed[k] == pytest.approx(alone, abs=1e-5), f"sequence {k} (sample {s})"


def test_stored_reference_equals_the_frozen_model(data):
    root, model, cache_dir = data
    plan_dir = P.write_pair_plan(root / "plan-ref", cache_dir, steps=3, slots_per_step=2, world_size=1)
    m = load_internvl(str(model)).model
    cache = PreparedCache(str(cache_dir))
    plan = TrainingPlan(str(plan_dir), cache=cache)
    world = parallel.World(rank=0, size=1, local_rank=0, device=torch.device("cpu"))
    tiling = _tiling(model)
    factory = lambda: micro_batches(str(cache_dir), str(plan_dir), 0, 0, tiling, 0)  # noqa: E731
    spec = ("cpu", torch.float32, False)
    job = {"model": str(model)}
    ref = preference.precompute_reference(m, job, cache, plan, world, torch.device("cpu"), factory, spec)
    stored = list((cache_dir / "reference").glob("*/logps.f64"))
    assert len(stored) == 1
    frozen = preference.ReferenceLogps(frozen=preference.frozen_copy(m), autocast=spec)
    seen = 0
    for item in factory():
        samples = plan.micro_batch(item["index"]).samples
        a = ref(item, samples, torch.device("cpu"))
        b = frozen(item, samples, torch.device("cpu"))
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
        seen += len(samples)
    assert seen == 3 * 2 * 4
    # read back, not recomputed: a second call finds every sequence of the plan
    before = stored[0].stat().st_mtime_ns
    again = preference.precompute_reference(m, job, cache, plan, world, torch.device("cpu"), None, spec)
    assert stored[0].stat().st_mtime_ns == before
    assert np.array_equal(again.values, ref.values, equal_nan=True)
    # a flipped byte in the stored file: its checksum differs, it is not used but computed again
    raw = bytearray(stored[0].read_bytes())
    raw[8 * int(np.flatnonzero(np.isfinite(ref.values))[0]) + 3] ^= 0x01
    stored[0].write_bytes(bytes(raw))
    redone = preference.precompute_reference(m, job, cache, plan, world, torch.device("cpu"), factory, spec)
    assert np.array_equal(redone.values, ref.values, equal_nan=True)
    assert np.array_equal(np.fromfile(stored[0], dtype="<f8"), ref.values, equal_nan=True)


def _mpo_cfg(**kw):
    cfg = dict(method="mpo", loss_type="sigmoid,bco_pair", loss_weights=[0.8, 0.2], beta=0.1, rpo_alpha=1.0,
               lr=5e-3, warmup_ratio=0.1, min_lr=1e-4, weight_decay=0.0)
    cfg.update(kw)
    return cfg


def test_mpo_learns_the_preference_and_resumes_exactly(data, monkeypatch):
    root, model, cache_dir = data
    plan = P.write_pair_plan(root / "plan-train", cache_dir, steps=10, slots_per_step=2, world_size=1)
    cfg = _mpo_cfg(checkpoint_interval=0)
    metrics: list[dict] = []
    real_emit = loop.emit

    def record(event, **fields):
        real_emit(event, **fields)
        if event == "metric":
            metrics.append(fields)

    monkeypatch.setattr(loop, "emit", record)
    whole = loop.train(F.job(model, cache_dir, plan, root / "whole", **cfg))
    assert whole["steps_done"] == 10
    first, last = metrics[0], metrics[-1]
    for k in ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "loss_sigmoid",
              "loss_bco_pair", "nll_loss", "bco_baseline"):
        assert k in last, k
    # at step 1 the policy is the reference: every reward is 0, each sigmoid term log 2
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss_sigmoid"] == pytest.approx(math.log(2), abs=1e-6)
    assert last["reward_margin"] > 0 and last["reward_accuracy"] >= 0.75
    whole_baselines = [m["bco_baseline"] for m in metrics]
    assert whole_baselines[0] == 0.0 and any(b != 0.0 for b in whole_baselines)

    # Stop a second run with SIGTERM as step 4's metrics go out, then resume: same losses, same δ.
    metrics.clear()

    def stop(event, **fields):
        record(event, **fields)
        if event == "metric" and fields["step"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "emit", stop)
    a = loop.train(F.job(model, cache_dir, plan, root / "broken", **cfg))
    monkeypatch.setattr(loop, "emit", record)
    assert a["stopped"] and a["steps_done"] == 4
    b = loop.train({**F.job(model, cache_dir, plan, root / "broken", **cfg), "resume": True})
    assert b["start_step"] == 4 and b["steps_done"] == 10
    assert a["losses"] + b["losses"] == pytest.approx(whole["losses"], abs=1e-6)
    assert [m["bco_baseline"] for m in metrics] == pytest.approx(whole_baselines, abs=1e-9)


def test_frozen_reference_trains_like_the_stored_one(data):
    root, model, cache_dir = data
    plan = P.write_pair_plan(root / "plan-frozen", cache_dir, steps=3, slots_per_step=2, world_size=1)
    stored = loop.train(F.job(model, cache_dir, plan, root / "stored", **_mpo_cfg()))
    frozen = loop.train(F.job(model, cache_dir, plan, root / "frozen", **_mpo_cfg(reference="frozen")))
    assert frozen["losses"] == pytest.approx(stored["losses"], abs=1e-5)
