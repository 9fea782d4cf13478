"""Distributed setup and the parallelisms, each applied by one small function.

- `init_distributed`: the process group from torchrun's environment (gloo on CPU, nccl on GPU).
- `apply_ac`: activation checkpointing per transformer layer (vision and language).
- `apply_fsdp`: FSDP2 (`fully_shard`) per layer then the root; zero2 keeps parameters
  gathered after forward (reshard_after_forward=False), zero3 frees them.
- `apply_ddp`: plain data parallelism (a full replica per rank).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device
    mesh: object | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> World:
    """One process, or every rank of a torchrun launch (WORLD_SIZE > 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for, but torch sees no GPU")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if size == 1:
        return World(rank=0, local_rank=0, size=1, device=dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(dev.type, (size,), mesh_dim_names=("dp",))
    return World(rank=rank, local_rank=local, size=size, device=dev, mesh=mesh)


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The vision encoder's and the LLM's layers: the units of sharding and recomputation."""
    inner = model
    while not hasattr(inner, "vision_tower"):  # TrainModule -> ForConditionalGeneration -> InternVLModel
        inner = inner.model
    return list(inner.vision_tower.encoder.layer) + list(inner.language_model.layers)


def apply_ac(model: nn.Module) -> None:
    """Recompute each layer's activations in backward (non-reentrant, per layer)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def inputs_require_grad(model: nn.Module) -> None:
    """Make the outputs of the (possibly frozen) vision and text embeddings require grad.

    FSDP2 reduces a layer's gradients when the gradient of that layer's input is computed.
    With frozen embeddings and no image in a micro-batch, the first LLM layer's input needs
    no gradient, so that layer would reduce at the end of backward on one rank and in order
    on another: the ranks' collectives would no longer pair up.
    """
    inner = model
    while not hasattr(inner, "vision_tower"):
        inner = inner.model

    def hook(_module, _inputs, output):
        if torch.is_grad_enabled():
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor) and not out.requires_grad:
                out.requires_grad_(True)
        return output

    inner.language_model.get_input_embeddings().register_forward_hook(hook)
    inner.vision_tower.embeddings.register_forward_hook(hook)


def apply_fsdp(model: nn.Module, world: World, strategy: str, param_dtype: torch.dtype) -> nn.Module:
    """FSDP2 over the data-parallel mesh; parameters stay float32, gradients reduce in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    reshard = strategy == "zero3"
    for layer in transformer_layers(model):
        fully_shard(layer, mesh=world.mesh, mp_policy=mp, reshard_after_forward=reshard)
    # The vision tower's embeddings, the projector, the LLM's embeddings and head go with the root.
    fully_shard(model, mesh=world.mesh, mp_policy=mp, reshard_after_forward=reshard)
    return model


def apply_ddp(model: nn.Module, world: World) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    # Every micro-batch runs the vision tower (a zero-weighted dummy tile when it has no
    # image), so every trainable parameter gets a gradient and no unused-parameter search is needed.
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def _all_reduce(x: torch.Tensor, world: World, op) -> torch.Tensor:
    if not world.distributed:
        return x
    # NCCL reduces only device tensors; gloo only CPU ones. The result comes back on the CPU.
    y = x.to(world.device)
    dist.all_reduce(y, op=op)
    return y.cpu()


def all_reduce_sum(x: torch.Tensor, world: World) -> torch.Tensor:
    return _all_reduce(x, world, dist.ReduceOp.SUM)


def all_reduce_max(x: torch.Tensor, world: World) -> torch.Tensor:
    return _all_reduce(x, world, dist.ReduceOp.MAX)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(obj, world: World):
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
