"""Checkpoints: sharded weights and optimizer (torch.distributed.checkpoint), the scheduler,
every rank's RNG states and the plan position, written under a temporary name and renamed
into place when complete, so a crash never leaves a checkpoint that looks whole.

Layout: WORK_DIR/checkpoints/step-00000042/{*.distcp, .metadata, meta.json, rng-rank<r>.pt}
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .parallel import World, barrier, broadcast_object

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(work_dir: str) -> str:
    return os.path.join(work_dir, "checkpoints")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    work_dir: str, world: World, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler,
    meta: dict, keep: int,
) -> str:
    """Save after `meta["steps_done"]` optimizer steps; keep the last `keep` checkpoints."""
    root = checkpoint_dir(work_dir)
    name = f"step-{meta['steps_done']:08d}"
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
    dcp.save(state, checkpoint_id=tmp)
    torch.save(rng_state(), os.path.join(tmp, f"rng-rank{world.rank}.pt"))
    barrier(world)
    if world.is_main:
        full = {**meta, "world_size": world.size, "has_optimizer": optimizer is not None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None}
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(full, f, indent=2)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
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


def latest(work_dir: str) -> str | None:
    found = list_checkpoints(work_dir)
    return found[-1] if found else None


def load(path: str, world: World, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler) -> dict:
    """Restore a checkpoint into the (already parallelised) model and optimizer; returns its meta."""
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    state = {"model": get_model_state_dict(model)}
    want_optim = optimizer is not None and meta.get("has_optimizer", False)
    if want_optim:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    if want_optim:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    rng = os.path.join(path, f"rng-rank{world.rank}.pt")
    if os.path.exists(rng) and meta.get("world_size") == world.size:
        set_rng_state(torch.load(rng, weights_only=False))
    return meta


def load_weights(path: str, model: nn.Module) -> None:
    """Only the weights of a checkpoint (for a new plan): no optimizer, schedule, RNG or position.
    The model must have the same trainable structure (LoRA layers) as the run that wrote it."""
    state = {"model": get_model_state_dict(model)}
    try:
        dcp.load(state, checkpoint_id=path)
    except Exception as e:  # DCP names the keys it could not find
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
