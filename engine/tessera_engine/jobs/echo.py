"""Protocol self-test: echo the job back and stream `count` metric lines (`fail_on_rank`: fail there;
`file_problem`: fail with that message as an error about a user's file)."""

from __future__ import annotations

import os
import time

from ..errors import FileProblem
from ..protocol import emit


def run(job: dict) -> dict:
    count = int(job.get("count", 0))
    delay = float(job.get("delay_s", 0.0))
    emit("log", level="info", message="echo", job=job)
    if job.get("file_problem"):
        raise FileProblem(str(job["file_problem"]))
    fail_on = job.get("fail_on_rank")
    if fail_on is not None and int(fail_on) == int(os.environ.get("RANK", "0")):
        # For launcher tests: one rank fails after saying something on stdout.
        print(f"rank {fail_on} about to fail", flush=True)
        raise RuntimeError(f"asked to fail on rank {fail_on}")
    for i in range(count):
        emit("metric", step=i + 1, loss=1.0 / (i + 1))
        if delay:
            time.sleep(delay)
    return {"echo": job, "count": count}
