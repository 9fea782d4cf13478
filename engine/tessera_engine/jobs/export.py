"""Export any checkpoint, not only at the end of a run.

Job fields:
  model: the original InternVL2 folder the run started from (or the folder to convert)
  checkpoint: a training checkpoint folder (WORK_DIR/checkpoints/step-N), or absent to export `model`
  config: the run's resolved config (freezes, LoRA, ...); needed with `checkpoint`
  out: the output folder (written under a temporary name, renamed into place when complete)
  format: original | native | adapter
  dtype: auto (the source's) | bf16 | fp16 | fp32
  force: replace `out` if it exists
Result: {dir, format, dtype, adapter?, steps_done?}
"""

from __future__ import annotations

import os
import shutil

from ..protocol import emit


def run(job: dict) -> dict:
    import torch

    from ..train import loop

    out = os.path.abspath(job["out"])
    fmt = job.get("format", "original")
    if fmt not in ("original", "native", "adapter"):
        raise ValueError(f"format {fmt!r}: expected original, native or adapter")
    if os.path.exists(out) and os.listdir(out) and not job.get("force"):
        raise FileExistsError(f"{out} exists and is not empty (--force replaces it)")
    cfg = dict(job.get("config") or {})
    cfg.setdefault("lr", 0.0)
    cfg["export_dtype"] = job.get("dtype") or "auto"
    s = loop.TrainSettings.from_config(cfg)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    result: dict = {}
    try:
        if job.get("checkpoint"):
            sd, meta = _checkpoint_state_dict(job["checkpoint"], job["model"], s)
            if fmt == "adapter" and not loop.lora_spec(s).active:
                raise ValueError(f"{job['checkpoint']}: this run trained no LoRA, so there is no adapter; "
                                 "use --format original or native")
            emit("log", level="info", message=f"exporting {job['checkpoint']} (after step {meta['steps_done']})")
            result = loop.write_exports(sd, s, tmp, job["model"], fmt="native" if fmt == "adapter" else fmt,
                                        lora_export="adapter" if fmt == "adapter" else "merged")
            result["steps_done"] = int(meta["steps_done"])
        else:
            if fmt == "adapter":
                raise ValueError(f"{job['model']} is a model folder, not a LoRA checkpoint: no adapter to export")
            from ..model.export import export_native, export_original, parse_dtype, source_dtype
            from ..model.load import load_internvl

            # A model folder converts as it is: one copy in memory, in float32 until written.
            plain = load_internvl(job["model"], dtype=torch.float32, device="cpu").model
            dtype = parse_dtype(s.export_dtype) or source_dtype(job["model"])
            (export_original if fmt == "original" else export_native)(plain, tmp, job["model"], dtype=dtype)
            result = {"format": fmt, "dtype": str(dtype).removeprefix("torch.")}
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["dir"] = out
    if result.get("adapter"):
        result["adapter"] = os.path.join(out, "adapter")
    return result


def _checkpoint_state_dict(path: str, model_dir: str, s) -> tuple[dict, dict]:
    """The training model's weights at a checkpoint: the run's model built as in training (freezes,
    LoRA), the checkpoint loaded into it whatever world size wrote it."""
    import torch

    from ..model.load import load_internvl
    from ..train import checkpoint, loop, parallel

    if not os.path.exists(os.path.join(path, "meta.json")):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no meta.json)")
    model = load_internvl(model_dir, dtype=torch.float32, device="cpu").model
    loop.freeze(model, s)
    loop.add_lora(model, s)
    root = loop.TrainModule(model, 0, s.loss_reduction)
    world = parallel.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    meta = checkpoint.load(path, world, root, None, None)
    sd = {k.removeprefix("model."): v for k, v in root.state_dict().items()}
    return sd, meta
