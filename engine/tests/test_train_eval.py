"""Evaluation during training: held-out loss over the eval plan (checked against a direct
computation), its fall as the model learns, exact match by generation, the best checkpoint, eval
figures in checkpoints' metadata, per-dataset loss, and the loggers (TensorBoard, W&B offline)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_fixtures as F  # noqa: E402

from tessera_engine.data.cache import PreparedCache, TrainingPlan  # noqa: E402
from tessera_engine.train import checkpoint, loop  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model = F.tiny_model(root / "model")
    cache = F.write_cache(root / "train", model, n_samples=32)
    held = F.write_cache(root / "held", model, n_samples=8, seed=5)
    eval_plan = F.write_plan(root / "eval-plan", held, steps=4, slots_per_step=1, world_size=1)
    return root, model, cache, held, eval_plan


def _direct_loss(model_dir: Path, held: Path, eval_plan: Path) -> float:
    """Token-mean loss of every learned token of the eval plan, one sample at a time."""
    from tessera_engine.data.pixels import load_tiles
    from tessera_engine.model.load import load_internvl
    from tessera_engine.model.packed import packed_forward

    torch.manual_seed(0)
    model = load_internvl(str(model_dir), dtype=torch.float32, device="cpu").model.eval()
    cache = PreparedCache(str(held))
    plan = TrainingPlan(str(eval_plan), cache=cache)
    total, n = 0.0, 0
    with torch.no_grad():
        for m in range(plan.total_steps):
            for row in plan.micro_batch(m).rows:
                for i in row.samples.tolist():
                    s = cache.sample(i)
                    tiles = [load_tiles(im.path, im.wh, im.cols, im.rows, im.thumbnail, 28) for im in s.images]
                    px = torch.from_numpy(np.concatenate(tiles)) if tiles else None
                    ids = torch.from_numpy(s.input_ids.astype(np.int64))
                    out = packed_forward(model, ids, None, None, px, torch.from_numpy(s.labels.astype(np.int64)))
                    total += float(out.token_losses.sum())
                    n += out.token_losses.numel()
    return total / n


def test_held_out_loss_falls_best_checkpoint_and_metadata(data, monkeypatch):
    root, model, cache, held, eval_plan = data
    (eval_plan / "generate.json").write_text(json.dumps({"samples": [0, 3, 5]}))
    plan = F.write_plan(root / "plan", cache, steps=16, slots_per_step=2, world_size=1)
    events = []
    real_emit = loop.emit
    monkeypatch.setattr(loop, "emit", lambda ev, **f: (events.append((ev, f)), real_emit(ev, **f)))
    job = F.job(model, cache, plan, root / "run", lr=2e-2, warmup_ratio=0.1, min_lr=2e-3, eval_interval=4,
                save_best="eval_loss", checkpoint_interval=8)
    job.update(eval_cache_dir=str(held), eval_plan_dir=str(eval_plan))
    r = loop.train(job)
    evals = [f for ev, f in events if ev == "eval"]
    assert [e["step"] for e in evals] == [0, 4, 8, 12, 16]
    losses = [e["eval_loss"] for e in evals]
    # Before any step, the figure is the token mean over every held-out learned token.
    assert losses[0] == pytest.approx(_direct_loss(model, held, eval_plan), rel=1e-5)
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(0.0 <= e["eval_exact_match"] <= 1.0 for e in evals)
    assert evals[-1]["eval_tokens"] == int(np.sum(TrainingPlan(str(eval_plan)).cols["step_learned"]))

    # The best checkpoint holds the lowest held-out loss; interval and final checkpoints
    # carry the latest evaluation in their metadata.
    best = checkpoint.read_meta(str(root / "run" / "checkpoints" / "best"))
    assert best["eval"]["eval_loss"] == pytest.approx(min(losses[1:]))
    assert not best["has_optimizer"]
    assert r["best"]["value"] == pytest.approx(min(losses[1:]))
    step8 = checkpoint.read_meta(str(root / "run" / "checkpoints" / "step-00000008"))
    assert step8["eval"]["step"] == 8 and step8["eval"]["eval_loss"] == pytest.approx(losses[2])
    end = checkpoint.read_meta(r["checkpoint"])
    assert end["eval"]["step"] == 16
    # Resuming is not confused by the best checkpoint: it is not a step checkpoint.
    assert [Path(p).name for p in checkpoint.list_checkpoints(str(root / "run"))] == ["step-00000008",
                                                                                     "step-00000016"]


def test_exact_match_counts_greedy_answers(data, monkeypatch):
    from tessera_engine.train import evaluate

    root, model, cache, held, eval_plan = data
    (eval_plan / "generate.json").write_text(json.dumps({"samples": [0, 1, 2, 3]}))
    ev = evaluate.Evaluator({"eval_cache_dir": str(held), "eval_plan_dir": str(eval_plan)}, "token",
                            loop.parallel.World(rank=0, local_rank=0, size=1, device=torch.device("cpu")),
                            torch.device("cpu"), loop.Tiling(tile=28, max_num=4), 0, 0)
    from tessera_engine.model.load import load_internvl

    loaded = load_internvl(str(model), dtype=torch.float32, device="cpu")
    answers = {i: ev._question(i, loaded.info)[2] for i in ev.questions}
    # A model that answers exactly the references of questions 1 and 3.
    calls = iter([answers[0][:-1] + [7], answers[1], [], answers[3]])
    monkeypatch.setattr("tessera_engine.model.packed.generate", lambda *a, **k: [next(calls)])
    assert ev._exact_match(loaded.model, loaded.info, torch.float32, False) == 0.5
    assert answers[0] == [500, 600, 700]  # colour 0, i % 3 == 0: the fixture's answer tokens


def test_per_dataset_loss_and_loggers(tmp_path, monkeypatch):
    """Two datasets: the metric lines carry each one's loss; TensorBoard and W&B get every value."""
    root = tmp_path
    model = F.tiny_model(root / "model")
    cache = F.write_cache(root, model, n_samples=16)
    _split_datasets(cache)
    plan = F.write_plan(root / "plan", cache, steps=3, slots_per_step=2, world_size=1)
    events = []
    real_emit = loop.emit
    monkeypatch.setattr(loop, "emit", lambda ev, **f: (events.append((ev, f)), real_emit(ev, **f)))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    loop.train(F.job(model, cache, plan, root / "run", report_to=["tensorboard", "wandb"]))
    metrics = [f for ev, f in events if ev == "metric"]
    assert len(metrics) == 3
    for m in metrics:
        by = m["loss_by_dataset"]
        assert set(by) <= {"first", "second"} and by
        assert min(by.values()) - 1e-6 <= m["loss"] <= max(by.values()) + 1e-6

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(root / "run" / "tensorboard"))
    acc.Reload()
    for key in ("loss", "lr", "tokens_per_s_per_gpu", "loss_by_dataset/first"):
        got = {e.step: e.value for e in acc.Scalars(key)}
        want = {m["step"]: (m["loss_by_dataset"]["first"] if "/" in key else m[key]) for m in metrics
                if "/" not in key or "first" in m["loss_by_dataset"]}
        assert got.keys() == want.keys()
        for s in want:
            assert got[s] == pytest.approx(want[s], rel=1e-6)
    runs = list((root / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def _split_datasets(cache_dir: Path) -> None:
    """Describe the fixture's one dataset folder as two datasets (samples 0-7 and 8-15)."""
    import shutil

    m = json.loads((cache_dir / "manifest.json").read_text())
    d = m["datasets"][0]
    src = cache_dir / d["dir"]
    info = json.loads((src / "dataset.json").read_text())
    from tessera_engine.data.cache import PreparedCache as C

    c = C(str(cache_dir))
    cols = c.datasets[0].cols
    entries = []
    for name, lo, hi in (("first", 0, 8), ("second", 8, 16)):
        out = cache_dir / f"ds-{name}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t0, t1 = int(cols["tok_offset"][lo]), int(cols["tok_offset"][hi])
        i0, i1 = int(cols["img_offset"][lo]), int(cols["img_offset"][hi])
        p0, p1 = int(cols["img_path_offset"][i0]), int(cols["img_path_offset"][i1])
        arrays = {
            "tok_offset": np.asarray(cols["tok_offset"][lo:hi + 1]) - t0,
            "length": cols["length"][lo:hi], "learned": cols["learned"][lo:hi], "line": cols["line"][lo:hi],
            "flags": cols["flags"][lo:hi], "img_offset": np.asarray(cols["img_offset"][lo:hi + 1]) - i0,
            "input_ids": cols["input_ids"][t0:t1], "labels": cols["labels"][t0:t1],
            "img_path_offset": np.asarray(cols["img_path_offset"][i0:i1 + 1]) - p0,
            "img_paths": cols["img_paths"][p0:p1],
        }
        for k in ("img_w", "img_h", "img_cols", "img_rows", "img_tiles", "img_thumbnail", "img_frame",
                  "img_context_start"):
            arrays[k] = cols[k][i0:i1]
        spec = {k: F._col(out, k, np.asarray(v).astype(np.dtype(info["columns"][k]["dtype"])),
                          info["columns"][k]["file"].split(".")[-1]) for k, v in arrays.items()}
        fp = f"{d['fingerprint'][:50]}-{name}"
        (out / "dataset.json").write_text(json.dumps({**info, "name": name, "fingerprint": fp, "samples": hi - lo,
                                                      "columns": spec}))
        entries.append({**d, "name": name, "dir": out.name, "fingerprint": fp, "first_sample": lo,
                        "samples": hi - lo})
    m["datasets"] = entries
    (cache_dir / "manifest.json").write_text(json.dumps(m))
