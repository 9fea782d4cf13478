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
