"""Entry point: python -m tessera_engine JOB.json

Reads the job, says hello, runs the job's handler, and reports `result` then `done`,
or `error` with the traceback and a non-zero exit.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback

from . import PROTOCOL_VERSION
from .protocol import channel, emit, hello

# job kind -> module under tessera_engine.jobs with a run(job) -> dict function.
# Imported lazily so a quick job never pays for torch or transformers.
JOBS = {
    "echo": "echo",
    "doctor": "doctor",
    "tokenizer_convert": "tokenizer_convert",
    "text_reference": "text_reference",
    "train": "train",
    "build-tiny": "build_tiny",
    "render": "render",
    "generate": "generate",
    "export": "export",
    "sequence-logps": "sequence_logps",
    "decode-images": "decode_images",
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tessera_engine JOB.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        job = json.load(f)
    kind = job.get("kind")
    if job.get("protocol") != PROTOCOL_VERSION:
        emit("error", message=f"job protocol {job.get('protocol')!r} != engine protocol {PROTOCOL_VERSION}")
        return 3
    if kind not in JOBS:
        emit("error", message=f"unknown job kind {kind!r}; known: {sorted(JOBS)}")
        return 3
    hello(kind)
    try:
        module = importlib.import_module(f".jobs.{JOBS[kind]}", __package__)
        result = module.run(job)
    except KeyboardInterrupt:
        emit("error", message="interrupted")
        return 130
    except Exception as e:  # report, then fail: the supervisor shows it to the user
        if getattr(e, "user_facing", False):
            # About the user's files: the message names the file; a traceback would only hide it.
            emit("error", message=str(e), user=True)
            print(f"error: {e}", file=sys.stderr)
            return 1
        emit("error", message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        traceback.print_exc()
        return 1
    emit("result", **(result or {}))
    emit("done")
    channel().close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
