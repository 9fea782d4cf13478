"""Checkpoints: sharded weights and optimizer (torch.distributed.checkpoint), the scheduler,
every rank's RNG states and the plan position, written under a temporary name and renamed
into place when complete, so a crash never leaves a checkpoint that looks whole.

Layout: WORK_DIR/checkpoints/step-00000042/{*.distcp, .metadata, meta.json, rng-rank<r>.pt,
manifest.json}

Loading one never runs code from it: RNG states are tensors read with `weights_only=True`;
DCP's `.metadata` (a pickle) is read by an unpickler that only knows DCP's own metadata
classes, after its sha256 was checked against manifest.json. The manifest records every
file's sha256 (with size and mtime, the fast path) at save; a changed file is refused on load,
naming it, and so is a meta.json whose step count does not match the folder's name.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .. import integrity
from ..errors import FileProblem, is_disk_full
from .parallel import World, barrier, broadcast_object

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(work_dir: str) -> str:
    return os.path.join(work_dir, "checkpoints")


class CheckpointError(FileProblem):
    """A checkpoint that is not loaded: changed, incomplete, or not written by tessera."""


MANIFEST = "manifest.json"


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors only (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python_version": torch.tensor(version, dtype=torch.int64),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if gauss is None else gauss, float(gauss is not None)],
                                     dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor(cached, dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, t in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = t
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    gauss, has = state["python_gauss"].tolist()
    random.setstate((int(state["python_version"]), tuple(state["python_mt"].tolist()), gauss if has else None))
    pos, has_gauss = state["numpy_pos"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"])))
    torch.set_rng_state(state["torch"])
    cuda = [state[f"cuda{i}"] for i in range(sum(k.startswith("cuda") for k in state))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _read_rng(path: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain values, unrun
        raise CheckpointError(f"{path}: refused: not an RNG state of tensors (loading it would run code "
                              f"it carries, or it was written by an older tessera): {e.__class__.__name__}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: refused: not an RNG state of tensors")
    return state


# What DCP's .metadata pickle may name: its metadata classes and a few torch values.
_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", n)
    for n in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
              "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata only: any other global (a function to call) is refused, unrun."""

    def __init__(self, f, path: str):
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(f"{self.path}: refused: it names {module}.{name}, which checkpoint "
                              "metadata never holds (loading it would run code)")


def _read_metadata(path: str, f=None):
    try:
        if f is None:
            with open(path, "rb") as f2:
                return _MetadataUnpickler(f2, str(path)).load()
        return _MetadataUnpickler(f, str(path)).load()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not DCP metadata ({e.__class__.__name__}: {e})") from None


class SafeReader(FileSystemReader):
    """DCP's file reader with .metadata read by _MetadataUnpickler instead of pickle.load."""

    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _read_metadata(str(path), f)
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner with its non-tensor values (optimizer settings) read with weights_only=True."""

    def load_bytes(self, read_item, value) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{read_item.dest_index.fqn}: refused: not plain values (loading it "
                                  f"would run code it carries): {e.__class__.__name__}") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def write_manifest(folder: str) -> None:
    """sha256, size and mtime of every file of a complete checkpoint folder."""
    files = {n: integrity.record(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
             if n != MANIFEST and os.path.isfile(os.path.join(folder, n))}
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"format": "tessera-checkpoint", "version": 1, "files": files}, f, indent=1)


def verify(path: str, full: bool = False) -> dict:
    """Check a checkpoint folder against its manifest before anything in it is read; its meta."""
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST} (written by an older tessera, or not by tessera): "
                              "its files cannot be checked, so it is not loaded") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mpath}: unreadable ({e})") from None
    on_disk = {n for n in os.listdir(path) if n != MANIFEST}
    extra = sorted(on_disk - set(files))
    if extra:
        raise CheckpointError(f"{os.path.join(path, extra[0])}: not written with this checkpoint "
                              f"(not in {MANIFEST})")
    for name, rec in files.items():
        try:
            integrity.check(os.path.join(path, name), rec, verify=full)
        except integrity.IntegrityError as e:
            raise CheckpointError(str(e)) from None
    for name in files:
        if name.endswith(".metadata"):  # DCP's pickles: read here, by the restricted unpickler
            _read_metadata(os.path.join(path, name))
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    m = _NAME.match(os.path.basename(os.path.normpath(path)))
    if m and int(meta.get("steps_done", -1)) != int(m.group(1)):
        raise CheckpointError(f"{os.path.join(path, 'meta.json')}: steps_done {meta.get('steps_done')!r} "
                              f"does not match the checkpoint's step {int(m.group(1))}")
    return meta


def save(
    work_dir: str, world: World, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler,
    meta: dict, keep: int, name: str | None = None,
) -> str:
    """Save after `meta["steps_done"]` optimizer steps; keep the last `keep` checkpoints.

    A `name` (e.g. "best") saves beside the step checkpoints, outside their rotation."""
    root = checkpoint_dir(work_dir)
    rotate = name is None
    name = name or f"step-{meta['steps_done']:08d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".tmp-{name}")
    if world.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(world)
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    try:
        dcp.save(state, checkpoint_id=tmp)
        torch.save(rng_state(), os.path.join(tmp, f"rng-rank{world.rank}.pt"))
        barrier(world)
        if world.is_main:
            full = {**meta, "world_size": world.size, "has_optimizer": optimizer is not None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None}
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(full, f, indent=2)
            write_manifest(tmp)
    except BaseException as e:
        # Nothing half-written stays behind (a full disk would otherwise keep the partial folder).
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e, root) or any(is_disk_full(v[0] if isinstance(v, tuple) else v, root)
                                        for v in getattr(e, "failures", {}).values()):
            raise CheckpointError(f"disk full while writing {tmp} (checkpoint after step "
                                  f"{meta['steps_done']}); the partial checkpoint was removed") from None
        raise
    if world.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if rotate:
            for old in list_checkpoints(work_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier(world)
    return final


def list_checkpoints(work_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(work_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for n in os.listdir(root):
        m = _NAME.match(n)
        if m and os.path.exists(os.path.join(root, n, "meta.json")):
            found.append((int(m.group(1)), os.path.join(root, n)))
    return [p for _, p in sorted(found)]


def read_meta(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def latest(work_dir: str) -> str | None:
    found = list_checkpoints(work_dir)
    return found[-1] if found else None


def load(path: str, world: World, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler,
         full_check: bool = False) -> dict:
    """Restore a checkpoint into the (already parallelised) model and optimizer; returns its meta.

    Rank 0 checks the folder against its manifest first (every rank waits for its verdict).
    """
    problem = None
    if world.is_main:
        try:
            verify(path, full=full_check)
        except CheckpointError as e:
            problem = str(e)
    problem = broadcast_object(problem, world)
    if problem:
        raise CheckpointError(problem)
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    rng_path = os.path.join(path, f"rng-rank{world.rank}.pt")
    rng = _read_rng(rng_path) if os.path.exists(rng_path) else None
    state = {"model": get_model_state_dict(model)}
    want_optim = optimizer is not None and meta.get("has_optimizer", False)
    if want_optim:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    try:
        dcp.load(state, storage_reader=SafeReader(path), planner=SafeLoadPlanner())
    except dcp.api.CheckpointException as e:  # DCP wraps what a rank raised
        inner = [v[0] if isinstance(v, tuple) else v for v in e.failures.values()]
        inner = [v for v in inner if isinstance(v, CheckpointError)]
        if inner:
            raise inner[0] from None
        raise
    set_model_state_dict(model, state["model"])
    if want_optim:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if rng is not None and meta.get("world_size") == world.size:
        set_rng_state(rng)
    return meta


def load_weights(path: str, model: nn.Module) -> None:
    """Only the weights of a checkpoint (for a new plan): no optimizer, schedule, RNG or position.
    The model must have the same trainable structure (LoRA layers) as the run that wrote it."""
    verify(path)  # checked against its manifest first; nothing in it runs code
    state = {"model": get_model_state_dict(model)}
    try:
        dcp.load(state, storage_reader=SafeReader(path), planner=SafeLoadPlanner())
    except Exception as e:  # DCP names the keys it could not find
        inner = [v[0] if isinstance(v, tuple) else v for v in getattr(e, "failures", {}).values()]
        inner = [v for v in inner if isinstance(v, CheckpointError)]
        if inner:
            raise inner[0] from None
        raise RuntimeError(f"--init-from {path}: its weights do not fit this model ({e}); "
                           "the LoRA settings must be those of the run that wrote it") from e
    set_model_state_dict(model, state["model"])


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight gathered whole on CPU (on every rank; only rank 0 needs to use it)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def agree(value, world: World, what: str) -> None:
    """Fail unless every rank holds the same value (e.g. the plan fingerprint)."""
    ref = broadcast_object(value, world)
    if ref != value:
        raise RuntimeError(f"rank {world.rank}: {what} {value!r} differs from rank 0's {ref!r}")
