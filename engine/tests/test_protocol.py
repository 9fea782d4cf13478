"""The engine's end of the protocol: job in, JSON lines out on the event channel."""

import json
import os
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1]


def run_job(tmp_path, job, channel="file"):
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps({"protocol": 1, **job}))
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "TESSERA_EVENTS": f"file:{events}", "PYTHONPATH": str(ENGINE)}
    proc = subprocess.run([sys.executable, "-m", "tessera_engine", str(job_path)], env=env, capture_output=True, text=True)
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    return proc, lines


def test_echo_streams_metrics_in_order_and_reports_done(tmp_path):
    proc, events = run_job(tmp_path, {"kind": "echo", "count": 7, "x": "ü"})
    assert proc.returncode == 0, proc.stderr
    kinds = [e["event"] for e in events]
    assert kinds[0] == "hello" and kinds[-2:] == ["result", "done"]
    assert [e["step"] for e in events if e["event"] == "metric"] == list(range(1, 8))
    result = next(e for e in events if e["event"] == "result")
    assert result["echo"]["x"] == "ü"


def test_protocol_version_mismatch_is_refused(tmp_path):
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps({"protocol": 99, "kind": "echo"}))
    events = tmp_path / "ev.jsonl"
    env = {**os.environ, "TESSERA_EVENTS": f"file:{events}", "PYTHONPATH": str(ENGINE)}
    proc = subprocess.run([sys.executable, "-m", "tessera_engine", str(job_path)], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    err = json.loads(events.read_text().splitlines()[-1])
    assert err["event"] == "error" and "protocol" in err["message"]


def test_unix_socket_channel_delivers_lines(tmp_path):
    import socket
    import threading

    from tessera_engine.protocol import EventChannel

    path = str(tmp_path / "ev.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    received = []

    def accept():
        conn, _ = server.accept()
        buf = b""
        while chunk := conn.recv(4096):
            buf += chunk
        received.extend(json.loads(l) for l in buf.decode().splitlines())

    t = threading.Thread(target=accept)
    t.start()
    ch = EventChannel(f"unix:{path}", rank=3)
    for i in range(100):
        ch.emit("metric", step=i)
    ch.close()
    t.join(timeout=10)
    assert [e["step"] for e in received] == list(range(100))
    assert all(e["rank"] == 3 for e in received)
