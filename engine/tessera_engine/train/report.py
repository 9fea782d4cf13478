"""Loggers besides metrics.jsonl (which the TypeScript driver writes and the dashboard reads):
TensorBoard event files and Weights & Biases runs, through the libraries themselves, on rank 0.

Both are optional dependencies (`tessera setup --with tensorboard|wandb`). Every numeric field of
a metric or eval event is logged under its metrics.jsonl name at its step; a nested mapping such
as loss_by_dataset becomes loss_by_dataset/<name>.
"""

from __future__ import annotations

import os

from ..protocol import emit

SKIP = {"step", "total", "epoch", "time", "rank"}


def scalars(fields: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in fields.items():
        if k in SKIP or v is None or isinstance(v, bool):
            continue
        if isinstance(v, dict):
            out.update(scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out


def _missing(name: str) -> RuntimeError:
    return RuntimeError(f"report_to {name}: the {name} package is not installed in the engine's environment; "
                        f"run `tessera setup --with {name}`")


class Reporters:
    def __init__(self, names: list[str], work_dir: str, config: dict, is_main: bool):
        self.tb = None
        self.wandb = None
        names = [n for n in names if n != "none"]
        if not is_main or not names:
            return
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                try:
                    from tensorboardX import SummaryWriter
                except ImportError:
                    raise _missing("tensorboard") from None
            path = os.path.join(work_dir, "tensorboard")
            self.tb = SummaryWriter(log_dir=path)
            emit("log", level="info", message=f"tensorboard: {path} (tensorboard --logdir {path})")
        if "wandb" in names:
            try:
                import wandb
            except ImportError:
                raise _missing("wandb") from None
            mode = os.environ.get("WANDB_MODE")
            if not mode and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
                # Not logged in: log offline rather than stop to ask; `wandb sync` uploads it later.
                mode = "offline"
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "tessera"),
                                    name=os.environ.get("WANDB_NAME", os.path.basename(os.path.abspath(work_dir))),
                                    dir=work_dir, config=config, mode=mode)
            where = getattr(self.wandb, "dir", None) or work_dir
            emit("log", level="info", message=f"wandb: {mode or 'online'} run in {where}"
                 + (" (upload it later with `wandb sync`)" if mode == "offline" else ""))

    def log(self, step: int, fields: dict) -> None:
        values = scalars(fields)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _netrc_has_wandb() -> bool:
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        with open(path, encoding="utf-8") as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False
