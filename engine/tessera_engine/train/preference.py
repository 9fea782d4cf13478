"""Preference optimisation (DPO, MPO) on packed pairs.

The planner writes each pair as two consecutive pieces, chosen then rejected (src/plan/pairs.ts),
so the per-sequence log-probabilities of a micro-batch come out of one packed forward: the sum,
over a sequence's learned tokens, of log p(token), i.e. minus its token losses.

Losses, with logits = (πc − πr) − (ρc − ρr) (π policy, ρ reference, summed log-probabilities):
    sigmoid   −(1−ε)·log σ(β·logits) − ε·log σ(−β·logits)              (DPO; ε label smoothing)
    hinge     max(0, 1 − β·logits)
    ipo       (logits' − 1/(2β))²   logits' from per-token mean log-probabilities (IPO's length norm)
    bco_pair  −log σ(β(πc−ρc) − δ) − log σ(−(β(πr−ρr) − δ))              δ: running mean reward
The terms are weighted and summed per pair, averaged over the step's pairs; rpo_alpha adds the
chosen sides' cross-entropy, averaged over the step's chosen learned tokens. Rewards are
β(π − ρ) per side; accuracy is the share of pairs whose chosen reward is the higher.

The BCO baseline δ of step g is the running mean of the per-step mean rewards of the steps before
g (0 at the first step, where the policy is the reference and every reward is 0). The official
trainer updates it with the current batch before the loss; doing so here would need every
micro-batch's forward of the step before any backward, and it would tie the values to how the
step is split over ranks and accumulation slots. It is kept in the checkpoint, so a resumed run
continues with the same δ.

The reference log-probabilities are computed once, in a pass over the plan before training, and
stored next to the cache (`CACHE/reference/<key>/`): training then holds one model, and a resumed
run reads them back. `reference: frozen` keeps a frozen copy of the model instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import integrity
from ..data.cache import PreparedCache, StepTotals, TrainingPlan
from ..protocol import emit
from . import parallel
from .slots import empty_slot_loss, pixels_or_touch

TERMS = ("sigmoid", "bco_pair", "ipo", "hinge")


@dataclass(frozen=True)
class PreferenceSettings:
    method: str
    loss_type: tuple[str, ...]
    loss_weights: tuple[float, ...]
    beta: float = 0.1
    rpo_alpha: float = 0.0
    label_smoothing: float = 0.0
    reference: str = "precomputed"

    @classmethod
    def from_config(cls, cfg: dict) -> "PreferenceSettings | None":
        """None for supervised training. The TypeScript config resolved the defaults; this checks."""
        method = cfg.get("method") or "sft"
        if method == "sft":
            return None
        if method not in ("dpo", "mpo"):
            raise ValueError(f"method must be sft, dpo or mpo, got {method!r}")
        terms = cfg.get("loss_type") or ("sigmoid,bco_pair" if method == "mpo" else "sigmoid")
        terms = tuple(t.strip() for t in (terms.split(",") if isinstance(terms, str) else terms) if t.strip())
        for t in terms:
            if t not in TERMS:
                raise ValueError(f"unknown loss term {t!r} (known: {', '.join(TERMS)})")
        weights = cfg.get("loss_weights")
        if weights is None:
            weights = [0.8, 0.2] if terms == ("sigmoid", "bco_pair") and method == "mpo" else [1.0] * len(terms)
        if len(weights) != len(terms):
            raise ValueError(f"{len(weights)} loss weight(s) for {len(terms)} loss term(s)")
        rpo = cfg.get("rpo_alpha")
        return cls(method=method, loss_type=terms, loss_weights=tuple(float(w) for w in weights),
                   beta=float(cfg.get("beta") or 0.1),
                   rpo_alpha=float(rpo if rpo is not None else (1.0 if method == "mpo" else 0.0)),
                   label_smoothing=float(cfg.get("label_smoothing") or 0.0),
                   reference=cfg.get("reference") or "precomputed")


# ------------------------------------------------------------------ log-probabilities and losses


def sequence_logps(token_losses: torch.Tensor, sample_index: torch.Tensor, num_samples: int,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Σ log p over each sequence's learned tokens (minus the sum of its token losses)."""
    out = torch.zeros(num_samples, dtype=dtype, device=token_losses.device)
    return out.index_add(0, sample_index, -token_losses.to(dtype))


def pair_losses(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, s: PreferenceSettings,
                delta: float = 0.0, nc: torch.Tensor | None = None, nr: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
    """Per-pair loss of each term, and the rewards. pc/pr: policy log-probabilities of the chosen and
    rejected sides, rc/rr the reference's; nc/nr learned tokens of each side (for ipo)."""
    beta = s.beta
    logits = (pc - pr) - (rc - rr)
    out: dict[str, torch.Tensor] = {}
    for t in s.loss_type:
        if t == "sigmoid":
            ls = s.label_smoothing
            out[t] = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
        elif t == "hinge":
            out[t] = torch.relu(1 - beta * logits)
        elif t == "ipo":
            if nc is None or nr is None:
                raise ValueError("ipo needs the learned token counts of each side")
            mean_logits = (pc / nc - pr / nr) - (rc / nc - rr / nr)
            out[t] = (mean_logits - 1 / (2 * beta)) ** 2
        elif t == "bco_pair":
            out[t] = -F.logsigmoid(beta * (pc - rc) - delta) - F.logsigmoid(-(beta * (pr - rr) - delta))
    out["chosen_rewards"] = (beta * (pc - rc)).detach()
    out["rejected_rewards"] = (beta * (pr - rr)).detach()
    return out


class BcoBaseline:
    """Running mean of the per-step mean rewards (the bco_pair loss's δ)."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.count = 0

    def update(self, step_mean: float) -> None:
        self.count += 1
        self.mean += (step_mean - self.mean) / self.count

    def state(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load(self, state: dict) -> None:
        self.mean = float(state["mean"])
        self.count = int(state["count"])


# ------------------------------------------------------------------ the module each rank runs


class PreferenceModule(nn.Module):
    """The root module of a preference run: one packed forward over a micro-batch of pairs and its
    share of the step's loss (sums over pairs and tokens divided by the step's global totals, so
    micro-batches and ranks add up to the loss of the whole step)."""

    def __init__(self, model: nn.Module, tile: int, s: PreferenceSettings, plan: TrainingPlan):
        super().__init__()
        self.model = model
        self.tile = tile
        self.s = s
        if "step_pairs" not in plan.cols:
            raise RuntimeError(f"{plan.path} is not a plan of pairs: prepare and plan with --method {s.method}")
        self._step_pairs = plan.cols["step_pairs"]
        self._step_chosen = plan.cols["step_chosen_learned"]
        self._plan = plan
        self.baseline = BcoBaseline()
        self.reference: ReferenceLogps | None = None
        self.learned_seen = 0
        self.begin_step(0)

    def begin_step(self, g: int) -> None:
        self.g = g
        self.pairs_total = float(self._step_pairs[g])
        self.chosen_total = float(self._step_chosen[g])
        self.delta = self.baseline.mean
        # pairs, correct, Σ chosen reward, Σ rejected reward, Σ nll (token sum), then Σ of each term
        self.stats = torch.zeros(5 + len(self.s.loss_type), dtype=torch.float64)

    def forward(self, item: dict, totals: StepTotals, device: torch.device) -> torch.Tensor:
        from ..model.packed import packed_forward

        self.learned_seen = 0
        # As TrainModule: every rank runs the vision tower in the same order.
        pixels, touch = pixels_or_touch(self.model, self.tile, item, device)
        if item["empty"]:
            loss = empty_slot_loss(self.model, device)
            return loss if touch is None else loss + touch
        out = packed_forward(
            self.model,
            item["input_ids"].to(device, non_blocking=True),
            item["position_ids"].to(device, non_blocking=True),
            [c.to(device) for c in item["cu_seqlens"]],
            pixels,
            item["labels"].to(device, non_blocking=True),
            image_spans=item.get("image_spans"),
        )
        self.learned_seen = out.token_losses.numel()
        samples = self._plan.micro_batch(item["index"]).samples
        if out.num_samples != len(samples) or len(samples) % 2:
            raise RuntimeError(f"micro-batch {item['index']}: {out.num_samples} sequences, the plan lists "
                               f"{len(samples)}; a micro-batch of pairs holds an even number")
        # The planner writes pair k as samples 2k (chosen), 2k+1 (rejected), side by side.
        if (samples[0::2] % 2).any() or (samples[1::2] != samples[0::2] + 1).any():
            raise RuntimeError(f"micro-batch {item['index']}: its sequences are not whole pairs "
                               f"(chosen 2k then rejected 2k+1): {samples.tolist()[:8]}")
        logps = sequence_logps(out.token_losses, out.sample_index, out.num_samples)
        ref = self.reference(item, samples, device) if self.reference is not None else None
        if ref is None:
            raise RuntimeError("no reference log-probabilities")
        counts = out.learned_counts.to(logps.dtype)
        pc, pr = logps[0::2], logps[1::2]
        rc, rr = ref[0::2].to(logps.dtype), ref[1::2].to(logps.dtype)
        terms = pair_losses(pc, pr, rc, rr, self.s, self.delta, counts[0::2].clamp(min=1), counts[1::2].clamp(min=1))
        loss = logps.new_zeros(())
        st = torch.zeros_like(self.stats)
        for k, (t, w) in enumerate(zip(self.s.loss_type, self.s.loss_weights)):
            loss = loss + w * terms[t].sum() / self.pairs_total
            st[5 + k] = terms[t].detach().sum().double()
        chosen_tok = out.token_losses[(out.sample_index % 2) == 0]
        nll = chosen_tok.sum()
        if self.s.rpo_alpha:
            loss = loss + self.s.rpo_alpha * nll / max(self.chosen_total, 1.0)
        cr, rj = terms["chosen_rewards"], terms["rejected_rewards"]
        st[0] = float(pc.numel())
        st[1] = (cr > rj).double().sum()
        st[2] = cr.double().sum()
        st[3] = rj.double().sum()
        st[4] = nll.detach().double()
        self.stats += st.cpu()
        return loss if touch is None else loss + touch

    def end_step(self, world: parallel.World) -> dict:
        """Sum the step's statistics over ranks, update the BCO baseline, return the metrics."""
        tot = parallel.all_reduce_sum(self.stats, world)
        pairs = max(float(tot[0]), 1.0)
        m = {
            "rewards_chosen": float(tot[2]) / pairs,
            "rewards_rejected": float(tot[3]) / pairs,
            "reward_margin": float(tot[2] - tot[3]) / pairs,
            "reward_accuracy": float(tot[1]) / pairs,
            "nll_loss": float(tot[4]) / max(self.chosen_total, 1.0),
            "bco_baseline": self.delta,
        }
        for k, t in enumerate(self.s.loss_type):
            m[f"loss_{t}"] = float(tot[5 + k]) / pairs
        self.baseline.update((float(tot[2]) + float(tot[3])) / (2 * pairs))
        return m

    def state(self) -> dict:
        return {"bco_baseline": self.baseline.state()}

    def load_state(self, state: dict | None) -> None:
        if state is not None:
            self.baseline.load(state["bco_baseline"])


# ------------------------------------------------------------------ reference log-probabilities


def _model_stamp(model_dir: str) -> list:
    out = []
    for root, _, files in sorted(os.walk(model_dir)):
        for f in sorted(files):
            p = os.path.join(root, f)
            st = os.stat(p)
            out.append([os.path.relpath(p, model_dir), st.st_size, st.st_mtime_ns])
    return out


def reference_key(cache: PreparedCache, model_dir: str, dtype: torch.dtype) -> str:
    """What the stored reference log-probabilities depend on: the cache, the model's files, the dtype."""
    blob = json.dumps([cache.fingerprint, os.path.abspath(model_dir), _model_stamp(model_dir), str(dtype)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ReferenceLogps:
    """The reference's log-probability of every sequence, by global sample index (float64)."""

    def __init__(self, values: np.ndarray | None = None, frozen: nn.Module | None = None,
                 autocast: tuple[str, torch.dtype, bool] | None = None):
        self.values = values
        # a plain attribute, not a submodule: never sharded, saved or optimised
        self.__dict__["frozen"] = frozen
        self.autocast = autocast

    def __call__(self, item: dict, samples: np.ndarray, device: torch.device) -> torch.Tensor:
        if self.values is not None:
            v = self.values[np.asarray(samples, dtype=np.int64)]
            if np.isnan(v).any():
                raise RuntimeError("a sequence of the plan has no stored reference log-probability")
            return torch.from_numpy(v).to(device)
        return frozen_logps(self.frozen, item, device, self.autocast)


@torch.no_grad()
def frozen_logps(model: nn.Module, item: dict, device: torch.device,
                 autocast: tuple[str, torch.dtype, bool] | None = None) -> torch.Tensor:
    """Per-sequence log-probabilities of one micro-batch under `model` (no gradient), float64."""
    from ..model.packed import packed_forward

    pixels = item["pixel_values"].to(device)
    dev_type, dtype, enabled = autocast or (device.type, torch.float32, False)
    with torch.autocast(dev_type, dtype=dtype, enabled=enabled):
        out = packed_forward(model, item["input_ids"].to(device), item["position_ids"].to(device),
                             [c.to(device) for c in item["cu_seqlens"]], pixels if pixels.shape[0] else None,
                             item["labels"].to(device), image_spans=item.get("image_spans"))
    return sequence_logps(out.token_losses.detach(), out.sample_index, out.num_samples, torch.float64)


def frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def precompute_reference(model: nn.Module, job: dict, cache: PreparedCache, plan: TrainingPlan,
                         world: parallel.World, device: torch.device, loader_factory,
                         autocast: tuple[str, torch.dtype, bool]) -> ReferenceLogps:
    """Read the stored reference log-probabilities of this cache and model, or compute the missing
    ones in a pass over the plan (each rank its own micro-batches), store them, and return them."""
    key = reference_key(cache, job["model"], autocast[1] if autocast[2] else torch.float32)
    folder = os.path.join(cache.path, "reference", key)
    path = os.path.join(folder, "logps.f64")
    n = len(cache)
    values = np.full(n, np.nan)
    if os.path.exists(path) and os.path.getsize(path) == 8 * n:
        try:  # checked against the checksum written with it; a changed file is recomputed
            with open(os.path.join(folder, "reference.json"), encoding="utf-8") as f:
                integrity.check(path, json.load(f)["file"])
            values = np.fromfile(path, dtype="<f8").astype(np.float64)
        except (OSError, ValueError, KeyError, TypeError) as e:
            emit("log", level="warning", message=f"{path}: not used, computed again ({e})")
    needed = np.unique(np.asarray(plan.cols["piece_sample"], dtype=np.int64))
    missing = int(np.isnan(values[needed]).sum())
    flag = parallel.all_reduce_max(torch.tensor([missing]), world)
    if int(flag[0]) == 0:
        emit("log", level="info", message=f"reference log-probabilities read from {folder}")
        return ReferenceLogps(values=values)
    emit("log", level="info", message=f"computing the reference log-probabilities of {len(needed)} sequences "
         f"(stored in {folder})")
    was_training = model.training
    model.eval()
    fresh = np.zeros(n)
    have = np.zeros(n)
    for item in loader_factory():
        if item["empty"]:
            continue
        samples = np.asarray(plan.micro_batch(item["index"]).samples, dtype=np.int64)
        lp = frozen_logps(model, item, device, autocast).cpu().numpy()
        fresh[samples] = lp
        have[samples] = 1
    model.train(was_training)
    # Every rank computed its own micro-batches: each sequence's value is the same wherever it ran.
    summed = parallel.all_reduce_sum(torch.from_numpy(np.stack([fresh * (have > 0), have])), world).numpy()
    got = summed[1] > 0
    values[got] = summed[0][got] / summed[1][got]
    if world.is_main:
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        values.astype("<f8").tofile(tmp)
        os.replace(tmp, path)
        meta = {"cache_fingerprint": cache.fingerprint, "model": os.path.abspath(job["model"]),
                "file": integrity.record(path),
                "sequences": int(np.isfinite(values).sum()), "dtype": str(autocast[1] if autocast[2] else torch.float32)}
        with open(os.path.join(folder, "reference.json.tmp"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        os.replace(os.path.join(folder, "reference.json.tmp"), os.path.join(folder, "reference.json"))
    parallel.barrier(world)
    if math.isnan(float(values[needed].sum())):
        raise RuntimeError("the reference pass left sequences of the plan without a log-probability")
    return ReferenceLogps(values=values)
