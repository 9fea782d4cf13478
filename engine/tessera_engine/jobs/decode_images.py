"""Decode images fully, as training will (`tessera data check --deep`).

Job: {"paths": [str, ...], "workers": int?}. Result: {"decoded": n, "failures": [{"index": i,
"message": str}, ...]} in path order. Progress events: {"done": k, "total": n}.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from ..data.pixels import decode_problem
from ..protocol import emit

#: below this many images one process decodes them (a pool costs more to start)
_POOL_MIN = 256


def run(job: dict) -> dict:
    paths = [str(p) for p in job["paths"]]
    n = len(paths)
    workers = int(job.get("workers") or min(8, os.cpu_count() or 1))
    failures = []
    if n < _POOL_MIN or workers <= 1:
        results = map(decode_problem, paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(decode_problem, paths, chunksize=32)
    try:
        step = max(1, n // 100)
        for i, problem in enumerate(results):
            if problem is not None:
                failures.append({"index": i, "message": problem})
            if (i + 1) % step == 0 or i + 1 == n:
                emit("progress", done=i + 1, total=n)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {"decoded": n, "failures": failures}
