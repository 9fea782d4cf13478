"""Checkpoints that travel: loading one never runs code from it, and a changed file is refused."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tessera_engine.train import checkpoint
from tessera_engine.train.checkpoint import CheckpointError
from tessera_engine.train.parallel import World

WORLD = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    # 600×600 weights with Adam's two moments: a data file over the always-hashed size.
    m = nn.Linear(600, 600)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 600)).sum().backward()
    opt.step()
    return m, opt


def _save(work: Path, step: int = 3) -> tuple[str, nn.Module]:
    m, opt = _model()
    meta = {"steps_done": step, "total_steps": 10, "plan_fingerprint": "f" * 64, "reason": "test"}
    return checkpoint.save(str(work), WORLD, m, opt, None, meta, keep=2), m


def _load(path: str, **kw) -> nn.Module:
    m, opt = _model()
    checkpoint.load(path, WORLD, m, opt, None, **kw)
    return m


def _data_file(path: str) -> Path:
    return next(Path(path).glob("*.distcp"))


class _Marker:
    """A pickle that, when loaded, creates a marker file (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_saves_with_a_manifest_and_loads_the_same_weights_and_rng(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path, m = _save(tmp_path / "run")
    files = json.loads(Path(path, "manifest.json").read_text())["files"]
    assert set(files) == {p.name for p in Path(path).iterdir()} - {"manifest.json"}
    assert all(len(r["sha256"]) == 64 for r in files.values())
    after = (random.random(), float(np.random.rand()), float(torch.rand(1)), random.gauss(0, 1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    loaded = _load(path)
    assert torch.equal(loaded.weight, m.weight)
    # the RNG states (saved as tensors) come back exactly
    assert (random.random(), float(np.random.rand()), float(torch.rand(1)), random.gauss(0, 1)) == after
    # RNG files hold tensors only
    state = torch.load(Path(path, "rng-rank0.pt"), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize("target", ["rng-rank0.pt", ".metadata"])
@pytest.mark.parametrize("manifest_updated", [False, True])
def test_a_pickle_bearing_checkpoint_is_refused_and_runs_nothing(tmp_path, target, manifest_updated):
    path, _ = _save(tmp_path / "run")
    marker = tmp_path / "pwned"
    with open(Path(path, target), "wb") as f:
        if target.endswith(".pt"):
            torch.save({"python": _Marker(marker)}, f)
        else:
            pickle.dump(_Marker(marker), f)
    if manifest_updated:
        # The sender rewrote the manifest too: the checksums match, the pickle is still refused.
        checkpoint.write_manifest(path)
    with pytest.raises(CheckpointError) as e:
        _load(path)
    assert target in str(e.value)
    assert any(w in str(e.value) for w in ("refused", "sha256", "changed"))
    assert not marker.exists()


def test_a_flipped_byte_in_the_weights_is_refused_naming_the_file(tmp_path):
    path, _ = _save(tmp_path / "run")
    data = _data_file(path)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{data.name}: its sha256 differs"):
        _load(path)


def test_verify_hashes_files_whose_size_and_mtime_look_unchanged(tmp_path):
    path, _ = _save(tmp_path / "run")
    data = _data_file(path)
    st = data.stat()
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x80  # inside a tensor's data
    data.write_bytes(bytes(raw))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    _load(path)  # the fast path trusts size + mtime for large files
    with pytest.raises(CheckpointError, match=data.name):
        _load(path, full_check=True)


def test_an_edited_step_count_is_refused(tmp_path):
    path, _ = _save(tmp_path / "run", step=3)
    meta_path = Path(path, "meta.json")
    meta_path.write_text(meta_path.read_text().replace('"steps_done": 3', '"steps_done": 7'))
    with pytest.raises(CheckpointError, match="meta.json"):
        _load(path)
    checkpoint.write_manifest(path)  # checksums redone: the step still disagrees with the folder
    with pytest.raises(CheckpointError, match="steps_done 7 does not match the checkpoint's step 3"):
        _load(path)


def test_a_checkpoint_without_manifest_or_with_a_stranger_file_is_refused(tmp_path):
    path, _ = _save(tmp_path / "run")
    Path(path, "extra.distcp").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="extra.distcp: not written with this checkpoint"):
        _load(path)
    Path(path, "extra.distcp").unlink()
    Path(path, "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        _load(path)


def test_a_pickle_among_the_saved_values_is_refused_and_runs_nothing(tmp_path):
    # DCP keeps non-tensor values (optimizer settings) as pickles inside its data files.
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "pwned"
    folder = tmp_path / "step-00000001"
    dcp.save({"x": _Marker(marker), "w": torch.zeros(2)}, checkpoint_id=str(folder))
    Path(folder, "meta.json").write_text(json.dumps({"steps_done": 1}))
    checkpoint.write_manifest(str(folder))
    checkpoint.verify(str(folder))  # checksums and metadata are fine: the pickle is in the data
    state = {"x": None, "w": torch.ones(2)}
    with pytest.raises((CheckpointError, dcp.api.CheckpointException), match="refused"):
        dcp.load(state, storage_reader=checkpoint.SafeReader(str(folder)), planner=checkpoint.SafeLoadPlanner())
    assert not marker.exists()


def test_disk_full_while_saving_is_named_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    def to_full_disk(obj, path):  # a real ENOSPC: /dev/full refuses every write
        with open("/dev/full", "wb") as f:
            f.write(b"\0" * (1 << 20))

    monkeypatch.setattr(checkpoint.torch, "save", to_full_disk)
    with pytest.raises(CheckpointError, match=r"disk full while writing .*\.tmp-step-00000003"):
        _save(tmp_path / "run")
    assert os.listdir(tmp_path / "run" / "checkpoints") == []


def test_a_garbage_weights_file_is_reported_by_path_without_a_traceback(tmp_path, monkeypatch, capsys):
    import sys

    from tessera_engine import __main__ as engine_main
    from tessera_engine import protocol

    sys.path.insert(0, str(Path(__file__).parent))
    import train_fixtures as F

    model = F.tiny_model(tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"not a safetensors file" * 50)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"protocol": 1, "kind": "generate", "model": str(model), "prompts": [],
                               "device": "cpu"}))
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("TESSERA_EVENTS", f"file:{events}")
    monkeypatch.setattr(protocol, "_channel", None)
    assert engine_main.main(["tessera_engine", str(job)]) == 1
    protocol.channel().close()
    err = [json.loads(line) for line in events.read_text().splitlines()][-1]
    assert err["event"] == "error" and err.get("user") is True
    assert err["message"].startswith(f"{model / 'model.safetensors'}: not a readable safetensors file")
    assert "traceback" not in err and "Traceback" not in capsys.readouterr().err


def test_a_model_folder_without_tokenizer_or_weights_names_the_folder(tmp_path):
    import shutil
    import sys

    from tessera_engine.errors import FileProblem
    from tessera_engine.model.load import load_internvl

    sys.path.insert(0, str(Path(__file__).parent))
    import train_fixtures as F

    model = F.tiny_model(tmp_path / "model")
    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    for f in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
        (bare / f).unlink(missing_ok=True)
    with pytest.raises(FileProblem, match=rf"{bare}: no <IMG_CONTEXT> token in the tokenizer files"):
        load_internvl(str(bare), device="cpu")
    (model / "model.safetensors").unlink()
    with pytest.raises(FileProblem, match=rf"{model}: no model.safetensors"):
        load_internvl(str(model), device="cpu")
