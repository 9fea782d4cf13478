"""What the loader does with the data the plan names: grids checked against the dataset's own
tile budget, and samples that cannot be loaded."""

from __future__ import annotations

import pytest

from tessera_engine.data.loader import Tiling, _PlanSlice
from tessera_engine.data.pixels import PixelError
from train_fixtures import tiny_model, write_cache, write_plan


def _all_items(cache, plan, max_num: int) -> list[dict]:
    ds = _PlanSlice(str(cache), str(plan), rank=0, start_global_step=0, tiling=Tiling(tile=28, max_num=max_num))
    return [ds[k] for k in range(len(ds))]


def test_grids_are_checked_against_the_budget_the_dataset_was_planned_with(tmp_path):
    model = tiny_model(tmp_path / "model")
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
