"""What the loader does with the data the plan names: grids checked against the dataset's own
tile budget, and samples that cannot be loaded."""

from __future__ import annotations

import pytest

from tessera_engine.data.loader import Tiling, _PlanSlice
from tessera_engine.data.pixels import PixelError
from train_fixtures import tiny_model, write_cache, write_plan


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "model")


def _all_items(cache, plan, max_num: int) -> list[dict]:
    ds = _PlanSlice(str(cache), str(plan), rank=0, start_global_step=0, tiling=Tiling(tile=28, max_num=max_num))
    return [ds[k] for k in range(len(ds))]


def test_grids_are_checked_against_the_budget_the_dataset_was_planned_with(tmp_path, model):
    # Planned with the dataset's own max_dynamic_patch 1 (every image one tile) while the run
    # says 4: the engine uses the plan's grids and checks them against the dataset's budget.
    cache = write_cache(tmp_path / "own", model, n_samples=8, image_every=1, max_num=1, budget=1)
    plan = write_plan(tmp_path / "own-plan", cache, steps=2, slots_per_step=2, world_size=1)
    items = [x for x in _all_items(cache, plan, max_num=4) if not x["empty"]]
    assert items and all(t == 1 for x in items for t in x["image_tiles"])
    # The same grids in a cache that does not record the budget are checked against the run's.
    bare = write_cache(tmp_path / "bare", model, n_samples=8, image_every=1, max_num=1)
    bare_plan = write_plan(tmp_path / "bare-plan", bare, steps=2, slots_per_step=2, world_size=1)
    with pytest.raises(PixelError, match="the tiling rule gives"):
        _all_items(bare, bare_plan, max_num=4)


def _break_image_seen_after(cache, plan, step: int) -> tuple[int, "object"]:
    """Truncate the image of a sample that the plan trains at `step` or later: (sample, original bytes)."""
    from pathlib import Path

    from tessera_engine.data.cache import PreparedCache, TrainingPlan

    pc = PreparedCache(str(cache))
    tp = TrainingPlan(str(plan), cache=pc)
    for g in range(step, tp.total_steps):
        for mb in tp.micro_batches(0, *tp.position(g)):
            for s in mb.samples.tolist():
                if pc.images(s):
                    p = Path(pc.images(s)[0].path)
                    whole = p.read_bytes()
                    p.write_bytes(whole[: len(whole) // 2])
                    return s, (p, whole)
    raise AssertionError("no image sample after that step")


def _events(monkeypatch, stop_at: int | None = None) -> list:
    import os
    import signal

    from tessera_engine.train import loop

    seen = []
    real = loop.emit

    def emit(event, **fields):
        seen.append((event, fields))
        real(event, **fields)
        if stop_at is not None and event == "metric" and fields["step"] == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "emit", emit)
    return seen


def test_a_bad_sample_is_skipped_and_counted_or_stops_the_run(tmp_path, monkeypatch, model):
    from tessera_engine.data.loader import BadSampleError
    from tessera_engine.train import loop
    from train_fixtures import job

    cache = write_cache(tmp_path / "data", model, n_samples=12)
    plan = write_plan(tmp_path / "plan", cache, steps=6, slots_per_step=2, world_size=1)
    sample, (path, _) = _break_image_seen_after(cache, plan, 2)
    seen = _events(monkeypatch)
    r = loop.train(job(model, cache, plan, tmp_path / "skip", lr=1e-3))
    assert r["steps_done"] == 6
    bad = [f for e, f in seen if e == "bad_sample"]
    assert bad, "the truncated image was in the plan"
    assert {(b["sample"], b["path"]) for b in bad} == {(sample, str(path))}
    assert bad[0]["dataset"] == "synthetic" and bad[0]["line"] == sample + 1
    assert "truncated" in bad[0]["reason"] and bad[0]["policy"] == "skip"
    with pytest.raises(BadSampleError, match=rf"dataset synthetic, line {sample + 1}, .*{path.name}: .*truncated"):
        loop.train(job(model, cache, plan, tmp_path / "stop", lr=1e-3, bad_sample_policy="stop"))


def test_resume_with_the_skip_list_is_exact(tmp_path, monkeypatch, model):
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from tessera_engine.train import loop
    from train_fixtures import job

    def weights(ckpt: str) -> dict:
        out = tmp_path / f"{abs(hash(ckpt))}.pt"
        dcp_to_torch_save(ckpt, str(out))
        return torch.load(out, weights_only=False)["model"]

    cache = write_cache(tmp_path / "data", model, n_samples=12)
    plan = write_plan(tmp_path / "plan", cache, steps=6, slots_per_step=2, world_size=1)
    _, (path, whole_bytes) = _break_image_seen_after(cache, plan, 3)
    cfg = dict(lr=5e-3, checkpoint_interval=0)
    seen = _events(monkeypatch)
    whole = loop.train(job(model, cache, plan, tmp_path / "whole", **cfg))
    skips = [f for e, f in seen if e == "bad_sample"]
    assert skips

    # A run stopped at step 3, the image fixed meanwhile, resumed with the skip list the
    # unbroken run wrote: it masks the same pieces and ends with the same weights.
    _events(monkeypatch, stop_at=3)
    first = loop.train(job(model, cache, plan, tmp_path / "broken", **cfg))
    assert first["stopped"] and first["steps_done"] == 3
    path.write_bytes(whole_bytes)
    second = loop.train({**job(model, cache, plan, tmp_path / "broken", **cfg), "resume": True,
                         "skip_samples": [{"sample": b["sample"], "path": b["path"]} for b in skips]})
    assert second["losses"] == pytest.approx(whole["losses"][3:], abs=1e-6)
    a, b = weights(whole["checkpoint"]), weights(second["checkpoint"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    # Without the skip list the fixed image is trained: the runs differ (the list is what keeps it exact).
    third = loop.train({**job(model, cache, plan, tmp_path / "broken", **cfg), "resume": True})
    assert third["losses"] != pytest.approx(whole["losses"][3:], abs=1e-6)


def test_without_a_skip_list_a_bad_sample_raises_naming_it(tmp_path, model):
    from tessera_engine.data.loader import BadSampleError

    cache = write_cache(tmp_path / "data", model, n_samples=8, image_every=1)
    plan = write_plan(tmp_path / "plan", cache, steps=2, slots_per_step=2, world_size=1)
    sample, (path, _) = _break_image_seen_after(cache, plan, 0)
    # Callers that do not mask (reference log-probabilities, sequence log-probs) stop on it.
    with pytest.raises(BadSampleError, match=rf"dataset synthetic, line {sample + 1}, .*{path.name}"):
        _all_items(cache, plan, max_num=4)
    # The training loop's loader masks it and reports it in the item.
    ds = _PlanSlice(str(cache), str(plan), rank=0, start_global_step=0, tiling=Tiling(tile=28, max_num=4),
                    skip=frozenset())
    items = [ds[k] for k in range(len(ds))]
    reported = [b for x in items if not x["empty"] for b in x["bad"]]
    assert {(b["sample"], b["path"]) for b in reported} == {(sample, str(path))}
    assert sum(x.get("masked_learned", 0) for x in items) > 0


def test_decode_problem_is_what_training_would_trip_on(tmp_path):
    from PIL import Image

    from tessera_engine.data.pixels import decode_problem
    from tessera_engine.jobs import decode_images

    ok = tmp_path / "ok.png"
    Image.new("RGB", (60, 40), "red").save(ok)
    whole = ok.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    svg = tmp_path / "logo.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    assert decode_problem(str(ok)) is None
    assert "truncated" in decode_problem(str(cut))
    assert decode_problem(str(tmp_path / "nope.png")) == "image not found"
    assert decode_problem(str(svg)).startswith("UnidentifiedImageError")
    r = decode_images.run({"paths": [str(ok), str(cut), str(svg)]})
    assert r["decoded"] == 3 and [f["index"] for f in r["failures"]] == [1, 2]
    # Many images go to a process pool; the answers stay in path order.
    many = decode_images.run({"paths": [str(ok)] * 300 + [str(cut)], "workers": 2})
    assert [f["index"] for f in many["failures"]] == [300]
