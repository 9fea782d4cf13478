"""Job `sequence-logps`: every planned sequence's summed log-probability of its learned tokens
under a model (no gradient), by global sample index: the rewards of held-out pairs
(β(log π − log π_ref)) come from two such runs.

    {"kind": "sequence-logps", "model": DIR, "cache_dir": DIR, "plan_dir": DIR}
    → {"logps": [float | null per cache sample]}
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.cache import PreparedCache, TrainingPlan
from ..data.loader import Tiling, micro_batches
from ..model.load import load_internvl
from ..train.preference import frozen_logps


def run(job: dict) -> dict:
    torch.manual_seed(0)
    cache = PreparedCache(job["cache_dir"])
    plan = TrainingPlan(job["plan_dir"], cache=cache)
    if plan.world_size != 1:
        raise ValueError("sequence-logps runs a plan of one rank")
    loaded = load_internvl(job["model"], dtype=torch.float32, device="cpu")
    model, info = loaded.model.eval(), loaded.info
    tiling = Tiling(tile=info.tile_size, min_num=info.min_dynamic_patch,
                    max_num=int(job.get("max_dynamic_patch") or info.max_dynamic_patch),
                    use_thumbnail=info.use_thumbnail)
    out = np.full(len(cache), np.nan)
    for item in micro_batches(job["cache_dir"], job["plan_dir"], 0, 0, tiling, int(job.get("num_workers", 0))):
        if item["empty"]:
            continue
        samples = np.asarray(plan.micro_batch(item["index"]).samples, dtype=np.int64)
        out[samples] = frozen_logps(model, item, torch.device("cpu")).numpy()
    return {"logps": [None if np.isnan(v) else float(v) for v in out]}
