"""Job `train`: run the training loop of tessera_engine.train.loop on this rank.

Job fields: model, cache_dir, plan_dir, work_dir, config (the resolved training config),
resume (bool), export_dir (optional), max_dynamic_patch (optional, the planner's).
"""

from __future__ import annotations


def run(job: dict) -> dict:
    from ..train.loop import train

    for key in ("model", "cache_dir", "plan_dir", "work_dir", "config"):
        if key not in job:
            raise ValueError(f"train job: missing {key!r}")
    return train(job)
