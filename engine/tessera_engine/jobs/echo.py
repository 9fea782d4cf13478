"""Protocol self-test: echo the job back and stream `count` metric lines."""

from __future__ import annotations

import time

from ..protocol import emit


def run(job: dict) -> dict:
    count = int(job.get("count", 0))
    delay = float(job.get("delay_s", 0.0))
    emit("log", level="info", message="echo", job=job)
    for i in range(count):
        emit("metric", step=i + 1, loss=1.0 / (i + 1))
        if delay:
            time.sleep(delay)
    return {"echo": job, "count": count}
