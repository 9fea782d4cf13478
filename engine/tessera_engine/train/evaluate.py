"""Evaluation during training: held-out loss over a plan the TypeScript planner made for the
eval data (every step one micro-batch per rank), and optionally exact match of greedy answers
to a few questions the planner picked.

The held-out loss uses the training's reduction over the whole eval set: each micro-batch gives
its numerator (token losses weighted 1, 1/n or 1/sqrt(n)), the plan's totals give the
denominator (learned tokens, learned samples or the sum of sqrt(n)), so the result does not
depend on how the eval set was cut into micro-batches.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from torch import nn

from ..data.cache import IGNORE_INDEX, PreparedCache, StepTotals, TrainingPlan
from ..data.loader import Tiling, micro_batches
from ..data.pixels import load_tiles, load_video_frames
from . import parallel

# Weights 1, 1/n and 1/sqrt(n): reduce_loss then returns the micro-batch's numerator.
_NUMERATOR = StepTotals(tokens=0, learned_tokens=1, samples=0, learned_samples=1, sqrt_learned=1.0)


class Evaluator:
    def __init__(self, job: dict, reduction: str, world: parallel.World, device: torch.device, tiling: Tiling,
                 num_workers: int, seed: int):
        self.cache_dir, self.plan_dir = job["eval_cache_dir"], job["eval_plan_dir"]
        self.cache = PreparedCache(self.cache_dir)
        self.plan = TrainingPlan(self.plan_dir, cache=self.cache)
        if self.plan.world_size != world.size:
            raise RuntimeError(f"the eval plan was made for {self.plan.world_size} ranks, this run has {world.size}")
        self.world, self.device, self.tiling = world, device, tiling
        self.num_workers, self.seed, self.reduction = num_workers, seed, reduction
        self.names = [d.name for d in self.cache.datasets]
        totals = [self.plan.step_totals(*self.plan.position(g)) for g in range(self.plan.total_steps)]
        self.learned_tokens = sum(t.learned_tokens for t in totals)
        self.denominator = {
            "token": float(self.learned_tokens),
            "sample": float(sum(t.learned_samples for t in totals)),
            "square": sum(t.sqrt_learned for t in totals),
        }[reduction]
        gen_path = os.path.join(self.plan_dir, "generate.json")
        self.questions: list[int] = []
        if os.path.exists(gen_path):
            with open(gen_path, encoding="utf-8") as f:
                self.questions = [int(i) for i in json.load(f)["samples"]]

    def run(self, root: nn.Module, train_module: nn.Module, model: nn.Module, info, dtype: torch.dtype,
            autocast: bool) -> dict:
        """Every rank calls this at the same step; returns the figures (the same on every rank)."""
        t0 = time.perf_counter()
        was_training = root.training
        root.eval()
        D = len(self.names)
        local = torch.zeros(2 + 2 * D, dtype=torch.float64)  # numerator, learned tokens, per-dataset sums, counts
        num = torch.zeros((), dtype=torch.float64, device=self.device)
        by_ds = torch.zeros(2, D, dtype=torch.float64, device=self.device)
        loader = micro_batches(self.cache_dir, self.plan_dir, self.world.rank, 0, self.tiling, self.num_workers,
                               self.seed)
        try:
            with torch.no_grad():
                for item in loader:
                    with torch.autocast(self.device.type, dtype=dtype, enabled=autocast):
                        loss = root(item, _NUMERATOR, self.device)
                    num += loss.detach().double()
                    # a piece masked for a bad image learns nothing; the plan counted its tokens
                    local[1] += train_module.learned_seen + item.get("masked_learned", 0)
                    if train_module.dataset_stats is not None:
                        by_ds += train_module.dataset_stats
            local[0] = num.cpu()
            local[2:] = by_ds.cpu().reshape(-1)
            summed = parallel.all_reduce_sum(local, self.world)
            if int(summed[1]) != self.learned_tokens:
                raise RuntimeError(f"evaluation learned from {int(summed[1])} tokens, the eval plan says "
                                   f"{self.learned_tokens}: run `tessera train` again to re-plan the eval data")
            out: dict = {"eval_loss": float(summed[0]) / self.denominator if self.denominator else None,
                         "eval_tokens": self.learned_tokens}
            sums, counts = summed[2:2 + D], summed[2 + D:]
            if D > 1:
                out["eval_loss_by_dataset"] = {n: float(sums[k] / counts[k]) for k, n in enumerate(self.names)
                                               if counts[k] > 0}
            if self.questions:
                out["eval_exact_match"] = self._exact_match(model, info, dtype, autocast)
        finally:
            if was_training:
                root.train()
        out["eval_time"] = time.perf_counter() - t0
        return out

    # -------------------------------------------------------------- exact match

    def _question(self, i: int, info) -> tuple[list[int], torch.Tensor | None, list[int]]:
        """Prompt tokens (up to the first learned token), its tiles, and the reference answer."""
        s = self.cache.sample(i)
        learned = np.nonzero(s.labels != IGNORE_INDEX)[0]
        if not len(learned):
            raise RuntimeError(f"eval sample {i} (dataset {s.dataset}, line {s.line}) has no answer to compare")
        start = int(learned[0])
        end = start
        while end < len(s.labels) and s.labels[end] != IGNORE_INDEX:
            end += 1
        answer = [int(x) for x in s.labels[start:end]]
        while answer and answer[-1] in info.eos_token_ids:
            answer.pop()
        tiles, videos = [], {}
        for im in s.images:
            if im.context_start >= start:
                break
            if im.frame is not None:
                if im.path not in videos:
                    frames = [x.frame for x in s.images if x.path == im.path and x.frame is not None]
                    videos[im.path] = dict(zip(frames, load_video_frames(im.path, frames, len(frames),
                                                                          self.tiling.tile)))
                tiles.append(videos[im.path][im.frame][None])
            else:
                tiles.append(load_tiles(im.path, im.wh, im.cols, im.rows, im.thumbnail, self.tiling.tile))
        pixels = torch.from_numpy(np.concatenate(tiles)) if tiles else None
        return [int(x) for x in s.input_ids[:start]], pixels, answer

    def _exact_match(self, model: nn.Module, info, dtype: torch.dtype, autocast: bool) -> float:
        from ..model.packed import generate

        # Rank r answers questions r, r + W, ... on its whole copy of the model (a single
        # process or DDP: the TypeScript config refuses generation under sharded weights).
        W, r = self.world.size, self.world.rank
        hits = torch.zeros(2, dtype=torch.float64)
        for i in self.questions[r::W]:
            prompt, pixels, answer = self._question(i, info)
            with torch.autocast(self.device.type, dtype=dtype, enabled=autocast):
                got = generate(model, [prompt], [pixels], max_new_tokens=len(answer) + 1,
                               eos_token_ids=info.eos_token_ids, pad_token_id=info.pad_token_id)[0]
            hits[0] += float(got == answer)
            hits[1] += 1
        summed = parallel.all_reduce_sum(hits, self.world)
        return float(summed[0] / summed[1]) if summed[1] else 0.0
