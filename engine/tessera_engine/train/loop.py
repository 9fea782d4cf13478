"""The training loop, top to bottom.

    world    = init_distributed()             one process, or a torchrun rank
    model    = load_internvl(folder)          float32 master weights
    freeze, LoRA, activation checkpointing, FSDP2 / DDP
    optimizer, scheduler
    resume from the latest checkpoint         weights, optimizer, scheduler, RNG, plan position
    for each step of the plan (this rank's micro-batches):
        forward + backward each micro-batch   loss normalised by the step's global totals
        clip, step, schedule
        metrics; checkpoint every N steps or when SIGTERM/SIGINT asks
    final checkpoint; export (LoRA merged or kept as an adapter)

The plan decides everything about data (which samples, packs, how many micro-batches);
this loop only executes it and checks what it can.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..data.cache import PreparedCache, StepTotals, TrainingPlan
from ..data.loader import BadSampleError, Tiling, describe_bad, micro_batches
from ..protocol import emit
from . import checkpoint, lora, parallel, preference
from . import sequence_parallel as seqpar
from .slots import empty_slot_loss, pixels_or_touch, zero_loss
from .optim import build_optimizer, build_scheduler


@dataclass
class TrainSettings:
    """The resolved config's fields the engine uses (the TypeScript schema owns the defaults)."""

    lr: float
    min_lr: float = 0.0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    loss_reduction: str = "token"
    seed: int = 42
    freeze_vit: bool = True
    freeze_llm: bool = False
    freeze_mlp: bool = False
    llm_lora_rank: int = 0
    llm_lora_alpha: float | None = None
    llm_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    vit_lora_rank: int = 0
    vit_lora_alpha: float | None = None
    vit_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2")
    lora_export: str = "merged"
    lora_dropout: float = 0.0
    lora_rslora: bool = False
    lora_dora: bool = False
    gradient_checkpointing: bool = True
    shard_strategy: str = "zero2"
    precision: str = "auto"
    device: str = "auto"
    num_workers: int = 2
    checkpoint_interval: int = 0
    checkpoint_keep: int = 2
    checkpoint_drop_optimizer: bool = False
    log_interval: int = 1
    bad_sample_policy: str = "skip"
    export: str = "original"
    export_dtype: str = "auto"
    eval_interval: int = 0
    save_best: str | None = None
    report_to: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainSettings":
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in cfg.items() if k in known and v is not None}
        for k in ("llm_lora_targets", "vit_lora_targets", "report_to"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


# ------------------------------------------------------------------ model preparation


def frozen_parts(s: TrainSettings) -> dict[str, bool]:
    """Which parts are not trained in full: frozen, or adapted by LoRA (their base weights frozen)."""
    return {"vit": s.freeze_vit or s.vit_lora_rank > 0, "mlp": s.freeze_mlp,
            "llm": s.freeze_llm or s.llm_lora_rank > 0}


def freeze(model: nn.Module, s: TrainSettings) -> None:
    inner = model.model
    modules = {"vit": [inner.vision_tower], "mlp": [inner.multi_modal_projector],
               "llm": [inner.language_model, model.lm_head]}
    for part, frozen in frozen_parts(s).items():
        for m in modules[part]:
            m.requires_grad_(not frozen)
    for name, p in model.named_parameters():
        if lora.is_lora_param(name):
            p.requires_grad_(True)


def lora_spec(s: TrainSettings) -> lora.LoraSpec:
    return lora.LoraSpec(llm_rank=s.llm_lora_rank, llm_alpha=s.llm_lora_alpha, llm_targets=tuple(s.llm_lora_targets),
                         vit_rank=s.vit_lora_rank, vit_alpha=s.vit_lora_alpha, vit_targets=tuple(s.vit_lora_targets),
                         dropout=s.lora_dropout, rslora=s.lora_rslora, dora=s.lora_dora)


def add_lora(model: nn.Module, s: TrainSettings) -> list[str]:
    """PEFT's LoRA layers in place; then every part's trainability as the settings say."""
    names = lora.apply_lora(model, lora_spec(s))
    freeze(model, s)
    return names


class TrainModule(nn.Module):
    """The root module every rank runs once per micro-batch: the packed forward and its loss.

    Every call runs the vision tower and reaches the head, even for a text-only or an empty
    micro-batch (with zero weight), so all ranks take part in the same collectives and every
    trainable parameter gets a gradient.
    """

    def __init__(self, model: nn.Module, tile: int, reduction: str, sp: "seqpar.SequenceParallel | None" = None):
        super().__init__()
        self.model = model
        self.tile = tile
        self.reduction = reduction
        self.sp = sp  # sequence parallelism: this rank runs its shard of each row
        # learned tokens of the last micro-batch, checked against the plan's totals
        self.learned_seen = 0
        # [2, datasets]: summed token losses and learned tokens per dataset of the last
        # micro-batch (when the data has several datasets), for per-dataset loss curves
        self.dataset_stats: torch.Tensor | None = None

    def forward(self, item: dict, totals: StepTotals, device: torch.device) -> torch.Tensor:
        from ..model.loss import reduce_loss
        from ..model.packed import packed_forward

        self.learned_seen = 0
        self.dataset_stats = None
        pixels, touch = pixels_or_touch(self.model, self.tile, item, device)
        if item["empty"]:
            loss = empty_slot_loss(self.model, device)
        elif self.sp is not None:
            loss, self.learned_seen = seqpar.shard_loss(self.model, self.sp, item, pixels, _global_norm(totals),
                                                        self.reduction, device)
        else:
            out = packed_forward(
                self.model,
                item["input_ids"].to(device, non_blocking=True),
                item["position_ids"].to(device, non_blocking=True),
                [c.to(device) for c in item["cu_seqlens"]],
                pixels,
                item["labels"].to(device, non_blocking=True),
                image_spans=item["image_spans"],
            )
            # What the engine learns from, counted here; the loop checks it against the plan.
            self.learned_seen = out.token_losses.numel()
            n_ds = int(item.get("datasets", 1))
            if n_ds > 1 and self.sp is None:
                ds = item["piece_dataset"].to(device)[out.sample_index]
                tl = out.token_losses.detach().double()
                self.dataset_stats = torch.stack([
                    torch.zeros(n_ds, dtype=torch.float64, device=device).index_add_(0, ds, tl),
                    torch.bincount(ds, minlength=n_ds).double()])
            if out.token_losses.numel():
                loss = reduce_loss(out.token_losses, out.sample_index, self.reduction, _global_norm(totals),
                                   num_samples=out.num_samples)
            else:
                loss = zero_loss(out.token_losses)
        return loss if touch is None else loss + touch


def _global_norm(t: StepTotals):
    from ..model.loss import GlobalNorm

    # The plan's totals over every rank and micro-batch of the step: the loss denominators.
    return GlobalNorm(tokens=float(t.learned_tokens), samples=float(t.learned_samples), sqrt_sum=float(t.sqrt_learned))


def compute_dtype(s: TrainSettings, device: torch.device) -> torch.dtype:
    if s.precision == "bf16":
        return torch.bfloat16
    if s.precision == "fp32":
        return torch.float32
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ------------------------------------------------------------------ the run


class _StopFlag:
    """SIGTERM/SIGINT ask for a checkpoint at the end of the current step, then a clean stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def train(job: dict) -> dict:
    s = TrainSettings.from_config(job["config"])
    work_dir = job["work_dir"]
    world = parallel.init_distributed(s.device)
    device = world.device
    stop = _StopFlag()
    stop.install()
    closers: list = []
    try:
        return _run(job, s, world, device, work_dir, stop, closers)
    finally:
        for close in closers:
            close()
        stop.restore()
        parallel.shutdown(world)


def _run(job: dict, s: TrainSettings, world: parallel.World, device: torch.device, work_dir: str, stop: _StopFlag,
         closers: list) -> dict:
    from ..model.load import load_internvl
    from .evaluate import Evaluator
    from .report import Reporters

    # Data: the plan must be the same file on every rank and fit this world.
    cache = PreparedCache(job["cache_dir"], check="full" if job.get("verify") else "fast")
    plan = TrainingPlan(job["plan_dir"], cache=cache)
    if plan.world_size != world.size:
        raise RuntimeError(f"the plan was made for {plan.world_size} ranks, this run has {world.size}")
    checkpoint.agree(plan.fingerprint, world, "plan fingerprint")
    sp = seqpar.setup(world, plan.sp_size, plan.ring_size)

    # Model: float32 master weights; the same seed on every rank makes LoRA start identical.
    torch.manual_seed(s.seed)
    loaded = load_internvl(job["model"], dtype=torch.float32, device=device)
    model, info = loaded.model, loaded.info
    if info.tokens_per_tile != cache.tokens_per_tile:
        raise RuntimeError(f"the cache has {cache.tokens_per_tile} tokens per tile, the model {info.tokens_per_tile}")
    for d in cache.datasets:
        if d.context_id >= 0 and d.context_id != info.img_context_token_id:
            raise RuntimeError(f"dataset {d.name}: the cache's image context token is {d.context_id}, "
                               f"the model's {info.img_context_token_id}; prepare the cache with this model")
    if sp is not None:
        seqpar.prepare_model(model, sp)
        emit("log", level="info", message=seqpar.attention_check(sp))
    freeze(model, s)
    dtype = compute_dtype(s, device)
    tiling = Tiling(tile=info.tile_size, min_num=info.min_dynamic_patch,
                    max_num=int(job.get("max_dynamic_patch") or info.max_dynamic_patch),
                    use_thumbnail=info.use_thumbnail)
    pref = preference.PreferenceSettings.from_config(job["config"])
    if pref is not None and sp is not None:
        raise RuntimeError("preference training does not run with sequence parallelism yet: "
                           "set sp_size and ring_size to 1")
    reference = None
    if pref is not None:
        # Before LoRA and sharding: the reference is the model as loaded.
        autocast_spec = (device.type, dtype, dtype != torch.float32)
        if pref.reference == "frozen":
            reference = preference.ReferenceLogps(frozen=preference.frozen_copy(model), autocast=autocast_spec)
        else:
            reference = preference.precompute_reference(
                model, job, cache, plan, world, device,
                lambda: micro_batches(job["cache_dir"], job["plan_dir"], world.rank, 0, tiling, s.num_workers, s.seed),
                autocast_spec)
    lora_names = add_lora(model, s)
    model.train()
    if s.gradient_checkpointing:
        parallel.apply_ac(model)
    if pref is None:
        train_module = TrainModule(model, info.tile_size, s.loss_reduction, sp)
    else:
        train_module = preference.PreferenceModule(model, info.tile_size, pref, plan)
        train_module.reference = reference
    root: nn.Module = train_module
    if world.distributed and s.shard_strategy in ("zero2", "zero3"):
        parallel.inputs_require_grad(model)
        parallel.apply_fsdp(root, world, s.shard_strategy, dtype)
        autocast = False
    elif world.distributed:
        root = parallel.apply_ddp(root, world)
        autocast = dtype != torch.float32
    else:
        autocast = dtype != torch.float32
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    total = plan.total_steps
    optimizer = build_optimizer(root, s.lr, s.weight_decay, device.type)
    scheduler = build_scheduler(optimizer, total, s.warmup_ratio, s.lr, s.min_lr)

    # Resume: weights, optimizer, scheduler, RNG and the plan position.
    start = 0
    if job.get("resume"):
        path = checkpoint.latest(work_dir)
        if path is None:
            raise RuntimeError(f"--resume: no checkpoint in {checkpoint.checkpoint_dir(work_dir)}")
        meta = checkpoint.load(path, world, root, None if s.checkpoint_drop_optimizer else optimizer, scheduler,
                               full_check=bool(job.get("verify")))
        if meta["plan_fingerprint"] != plan.fingerprint:
            raise RuntimeError(f"{path} was written for another plan ({meta['plan_fingerprint'][:12]}); "
                               f"this run's plan is {plan.fingerprint[:12]}")
        start = int(meta["steps_done"])
        if pref is not None:
            train_module.load_state(meta.get("preference"))
        emit("log", level="info", message=f"resuming from {path} after step {start} of {total}")
        # The driver cuts metrics.jsonl back to this step: the steps after it are logged again.
        emit("resume", step=start, path=path)
    else:
        if job.get("init_from"):
            # A new plan from trained weights: the optimizer, schedule and position start afresh.
            checkpoint.load_weights(job["init_from"], root)
            emit("log", level="info", message=f"starting from the weights of {job['init_from']}")
        torch.manual_seed(s.seed + world.rank)

    emit("log", level="info", message=f"training {trainable:,} parameters over {total} steps "
         f"× {plan.micro_batches_per_step} micro-batches × {world.size} ranks"
         + (f"; LoRA on {len(lora_names)} layers" if lora_names else ""))

    last_eval: dict = {}

    def save(steps_done: int, reason: str, name: str | None = None) -> str:
        meta = {"steps_done": steps_done, "total_steps": total, "plan_fingerprint": plan.fingerprint, "reason": reason}
        if pref is not None:
            meta["preference"] = train_module.state()
        if last_eval:
            meta["eval"] = dict(last_eval)
        # the best checkpoint keeps weights only: it is for using, not for resuming
        opt = None if s.checkpoint_drop_optimizer or name else optimizer
        path = checkpoint.save(work_dir, world, root, opt, scheduler, meta, s.checkpoint_keep, name=name)
        emit("log", level="info", message=f"checkpoint {path} ({reason})")
        emit("checkpoint", step=steps_done, path=path, reason=reason)
        return path

    # The run's skip list (TypeScript keeps it in the work dir): these images are masked
    # without being loaded, exactly as when they failed, so a resumed run is the unbroken one.
    skip = frozenset((int(x["sample"]), str(x["path"])) for x in job.get("skip_samples") or [])
    reporters = Reporters(list(s.report_to), work_dir, job["config"], world.is_main)
    closers.append(reporters.close)
    evaluator = None
    if job.get("eval_plan_dir"):
        if pref is not None or sp is not None:
            raise RuntimeError("evaluation during training (eval_meta) is for supervised fine-tuning (method sft) "
                               "without sequence parallelism")
        evaluator = Evaluator(job, s.loss_reduction, world, device, tiling, s.num_workers, s.seed)
    # The best value so far survives a resume in the best checkpoint's meta.
    best_meta = checkpoint.read_meta(os.path.join(checkpoint.checkpoint_dir(work_dir), "best")) if s.save_best else None
    best: dict = {"value": (best_meta or {}).get("eval", {}).get(s.save_best) if job.get("resume") else None}

    def run_eval(steps_done: int) -> None:
        r = evaluator.run(root, train_module, model, info, dtype, autocast)
        last_eval.clear()
        last_eval.update(r, step=steps_done)
        if world.is_main:
            emit("eval", step=steps_done, total=total, **r)
            reporters.log(steps_done, r)
        v = r.get(s.save_best) if s.save_best else None
        if v is not None and steps_done > 0:
            lower = s.save_best.endswith("loss")
            if best["value"] is None or (v < best["value"] if lower else v > best["value"]):
                best["value"] = v
                save(steps_done, f"best {s.save_best} {v:.4g}", name="best")

    loader = micro_batches(job["cache_dir"], job["plan_dir"], sp.dp_rank if sp else world.rank, start, tiling,
                           s.num_workers, s.seed, shard=sp.shard if sp else None, skip=skip)
    batches = iter(loader)
    per_step = plan.micro_batches_per_step
    pack_len = plan.pack_max_length or 0
    n_ds = len(cache.datasets)
    ds_acc = torch.zeros(2, n_ds, dtype=torch.float64, device=device)  # since the last metric line
    if evaluator is not None and start == 0:
        run_eval(0)  # the starting point of the held-out curve
    losses: list[float] = []
    last_ckpt: str | None = None
    steps_done = start
    stopped_by: int | None = None
    for g in range(start, total):
        t0 = time.perf_counter()
        data_wait = 0.0
        totals = plan.step_totals(*plan.position(g))
        local = torch.zeros(5, dtype=torch.float64)  # loss, tokens, pieces, rows, learned tokens
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # no host sync per micro-batch
        if pref is not None:
            train_module.begin_step(g)
        for a in range(per_step):
            tw = time.perf_counter()
            item = next(batches)
            data_wait += time.perf_counter() - tw
            if item["global_step"] != g or item["slot"] != a:
                raise RuntimeError(f"data loader out of step: got ({item['global_step']}, {item['slot']}), want ({g}, {a})")
            for bad in item.get("bad") or []:
                # Reported through the protocol; TypeScript records it in the skip list.
                emit("bad_sample", step=g + 1, policy=s.bad_sample_policy, **bad)
                if s.bad_sample_policy == "stop" or pref is not None:
                    raise BadSampleError(f"a sample cannot be loaded: {describe_bad(bad)}"
                                         + ("" if pref is None else " (preference training cannot skip one side of a pair)"))
            _set_grad_sync(root, a == per_step - 1)
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                loss = root(item, totals, device)
            # FSDP and DDP average gradients over ranks; the loss is already normalised by the
            # global batch, so scale it back up to get the sum.
            (loss * world.size).backward()
            loss_sum += loss.detach().double()
            if not item["empty"]:
                local[1] += item["tokens"]
                local[2] += item["pieces"]
                local[3] += item["rows"]
                # Masked pieces (bad samples) learn nothing; the plan counted their tokens.
                local[4] += train_module.learned_seen + item.get("masked_learned", 0)
                stats = getattr(train_module, "dataset_stats", None)
                if stats is not None:
                    ds_acc += stats
        grad_norm = _clip(root, s.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        steps_done = g + 1

        local[0] = loss_sum.cpu()
        summed = parallel.all_reduce_sum(local, world)
        pref_metrics = train_module.end_step(world) if pref is not None else {}
        step_time = time.perf_counter() - t0
        step_loss = float(summed[0])
        # The planner computed the step's learned tokens (the loss denominator); the engine
        # must have learned from exactly those.
        if int(summed[4]) != int(totals.learned_tokens):
            raise RuntimeError(
                f"step {steps_done}: the engine learned from {int(summed[4])} tokens, the plan says "
                f"{int(totals.learned_tokens)}: the prepared cache and the plan disagree (run `tessera data prepare` again)")
        losses.append(step_loss)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss is {step_loss} at step {steps_done}")
        if steps_done % s.log_interval == 0 or steps_done == total or steps_done == start + 1:
            by_ds = None
            if n_ds > 1:
                d = parallel.all_reduce_sum(ds_acc.cpu().clone(), world)  # then reset: never a view of it
                ds_acc.zero_()
                by_ds = {c.name: float(d[0, k] / d[1, k]) for k, c in enumerate(cache.datasets) if d[1, k] > 0}
            if world.is_main:
                tokens = float(summed[1])
                epoch, step_in_epoch = plan.position(g)
                fields = dict(step=steps_done, total=total, epoch=epoch, loss=step_loss, lr=lr, grad_norm=grad_norm,
                              tokens=int(tokens), tokens_per_s_per_gpu=tokens / step_time / world.size,
                              samples_per_s=float(summed[2]) / step_time, step_time=step_time, data_wait=data_wait,
                              peak_memory=peak_memory(device),
                              pack_fill=tokens / (pack_len * float(summed[3])) if pack_len and float(summed[3])
                              else None, **pref_metrics)
                if by_ds:
                    fields["loss_by_dataset"] = by_ds
                emit("metric", **fields)
                reporters.log(steps_done, fields)

        # A signal on any rank stops every rank at the same step.
        flag = parallel.all_reduce_max(torch.tensor([stop.signal or 0]), world)
        if int(flag[0]):
            stopped_by = int(flag[0])
            last_ckpt = save(steps_done, f"signal {signal.Signals(stopped_by).name}")
            break
        if evaluator is not None and ((s.eval_interval and steps_done % s.eval_interval == 0) or steps_done == total):
            run_eval(steps_done)
        if s.checkpoint_interval and steps_done % s.checkpoint_interval == 0 and steps_done < total:
            last_ckpt = save(steps_done, "interval")

    del batches, loader
    result = {"steps_done": steps_done, "total_steps": total, "losses": losses, "start_step": start,
              "trainable_parameters": trainable, "eval": dict(last_eval) or None}
    if s.save_best and best["value"] is not None:
        result["best"] = {"metric": s.save_best, "value": best["value"],
                          "path": os.path.join(checkpoint.checkpoint_dir(work_dir), "best")}
    if stopped_by is not None:
        result.update(stopped=True, checkpoint=last_ckpt)
        return result
    if total > start or not checkpoint.latest(work_dir):
        last_ckpt = save(steps_done, "end")
    result.update(stopped=False, checkpoint=last_ckpt or checkpoint.latest(work_dir))
    result["export"] = export(job, s, world, root, model, info)
    return result


def _set_grad_sync(root: nn.Module, sync: bool) -> None:
    # Gradients of accumulation micro-batches stay local; the last one reduces them all.
    if hasattr(root, "set_requires_gradient_sync"):
        root.set_requires_gradient_sync(sync)
    elif hasattr(root, "require_backward_grad_sync"):
        root.require_backward_grad_sync = sync


def _clip(root: nn.Module, max_norm: float) -> float:
    params = [p for p in root.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=False)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# ------------------------------------------------------------------ export


def export(job: dict, s: TrainSettings, world: parallel.World, root: nn.Module, model: nn.Module, info) -> dict | None:
    """Write the trained model (rank 0) in the configured format; LoRA merged or as an adapter."""
    if s.export == "none":
        return None
    full = checkpoint.full_state_dict(root)
    out = None
    if world.is_main:
        # The root is TrainModule: drop its `model.` prefix to get the model's own names.
        sd = {k.removeprefix("model."): v for k, v in full.items()}
        out_dir = job.get("export_dir") or os.path.join(job["work_dir"], "export")
        out = write_exports(sd, s, out_dir, job["model"])
    parallel.barrier(world)
    return out


def write_exports(sd: dict[str, torch.Tensor], s: TrainSettings, out_dir: str, source: str,
                  fmt: str | None = None, lora_export: str | None = None) -> dict:
    """The training model's state dict (`sd`, LoRA layers and all) -> the export folder.

    Without LoRA: the model in `fmt` (original | native). With LoRA, `adapter`: a PEFT adapter in
    out_dir/adapter for the native base; `merged`: the plain model (W + scale·B·A) in `fmt`."""
    from ..model.export import export_native, export_original, parse_dtype, source_dtype
    from ..model.load import load_internvl

    fmt = fmt or s.export
    lora_export = lora_export or s.lora_export
    spec = lora_spec(s)
    dtype = parse_dtype(s.export_dtype) or source_dtype(source)
    plain = load_internvl(source, dtype=torch.float32, device="cpu").model
    result = {"dir": out_dir, "format": fmt, "dtype": str(dtype).removeprefix("torch.")}
    if spec.active:
        peft = lora.peft_model_from_trained(plain, sd, spec, lora.full_parts(frozen_parts(s), spec))
        if lora_export == "adapter":
            folder = os.path.join(out_dir, "adapter")
            lora.save_adapter(peft.to(dtype), folder, source)
            result.update(format="adapter", adapter=folder)
            return result
        plain = peft.merge_and_unload()
    else:
        if getattr(plain.config, "tie_word_embeddings", False):
            sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        missing, unexpected = plain.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and plain.config.tie_word_embeddings)]
        if missing or unexpected:
            raise KeyError(f"trained weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if fmt == "original":
        export_original(plain, out_dir, source, dtype=dtype)
    elif fmt == "native":
        export_native(plain, out_dir, source, dtype=dtype)
    else:
        raise ValueError(f"export format {fmt!r}: expected original, native or adapter")
    return result
