"""The engine's side of the protocol (docs/protocol.md).

The engine is started with the path of a JSON job file. It reports everything the
TypeScript side needs as JSON lines on a dedicated channel named by the environment
variable TESSERA_EVENTS:
  fd:N         an inherited pipe (one process)
  unix:PATH    a Unix socket the supervisor listens on (every torchrun rank connects)
  file:PATH    append to a file (debugging)
stdout and stderr stay free for humans and for tracebacks.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any, TextIO

from . import PROTOCOL_VERSION


class EventChannel:
    def __init__(self, spec: str | None, rank: int = 0) -> None:
        self.rank = rank
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._out: TextIO | None = None
        if not spec:
            return
        kind, _, where = spec.partition(":")
        if kind == "fd":
            self._out = os.fdopen(int(where), "w", buffering=1, encoding="utf-8")
        elif kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(where)
            self._sock = s
        elif kind == "file":
            self._out = open(where, "a", buffering=1, encoding="utf-8")
        else:
            raise ValueError(f"TESSERA_EVENTS: unknown channel kind {kind!r} (expected fd:, unix: or file:)")

    def emit(self, event: str, **fields: Any) -> None:
        msg = {"event": event, "rank": self.rank, "time": time.time(), **fields}
        line = json.dumps(msg, separators=(",", ":"), default=_jsonable) + "\n"
        with self._lock:
            if self._out is not None:
                self._out.write(line)
                self._out.flush()
            elif self._sock is not None:
                self._sock.sendall(line.encode("utf-8"))
            else:
                sys.stderr.write(line)

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


_channel: EventChannel | None = None


def channel() -> EventChannel:
    """The process-wide channel, opened on first use from the environment."""
    global _channel
    if _channel is None:
        rank = int(os.environ.get("RANK", "0"))
        _channel = EventChannel(os.environ.get("TESSERA_EVENTS"), rank)
    return _channel


def emit(event: str, **fields: Any) -> None:
    channel().emit(event, **fields)


def hello(job_kind: str) -> None:
    emit("hello", protocol=PROTOCOL_VERSION, pid=os.getpid(), job=job_kind)
