"""The Python reader reads exactly what the TypeScript writer wrote (cache and plan)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tessera_engine.data.cache import CacheFormatError, PreparedCache, TrainingPlan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "tsx").exists():
        pytest.fail("node and the npm dependencies are needed to write a cache from TypeScript")
    out = tmp_path_factory.mktemp("cache")
    subprocess.run(
        [node, "--import", "tsx", str(ROOT / "test/plan/fixtures/write-cache.ts"), str(out)],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    return out


def test_samples_read_back_as_written(written: Path):
    expected = json.loads((written / "expected.json").read_text())["samples"]
    cache = PreparedCache(str(written / "cache"))
    assert len(cache) == len(expected) == 40 + 30 + 20
    assert cache.tokens_per_tile == 1
    for i, e in enumerate(expected):
        s = cache.sample(i)
        assert s.dataset == e["dataset"] and s.line == e["line"]
        assert s.input_ids.dtype == np.int32 and s.labels.dtype == np.int32
        assert s.input_ids.tolist() == e["input_ids"]
        assert s.labels.tolist() == e["labels"]
        assert (s.length, s.learned, s.multimodal) == (e["length"], e["learned"], e["multimodal"])
        got = [
            {"path": im.path, "wh": list(im.wh), "cols": im.cols, "rows": im.rows, "thumbnail": im.thumbnail,
             "tiles": im.tiles, "frame": im.frame, "context_start": im.context_start}
            for im in s.images
        ]
        assert got == e["images"]
        assert s.context_starts.tolist() == [im["context_start"] for im in e["images"]]
        for im in s.images:
            assert os.path.isabs(im.path)
    assert cache.lengths.tolist() == [e["length"] for e in expected]
    # The files store each sample without its images' context runs; the reader puts them back.
    context = sum(im["tiles"] * cache.tokens_per_tile for e in expected for im in e["images"])
    assert context > 0
    stored = sum(d.cols.count("input_ids") for d in cache.datasets)
    assert stored == sum(e["length"] for e in expected) - context
    assert stored == sum(d["stored_tokens"] for d in cache.manifest["datasets"])


def test_any_token_range_reads_as_the_same_slice_of_the_whole_sample(written: Path):
    expected = json.loads((written / "expected.json").read_text())["samples"]
    cache = PreparedCache(str(written / "cache"))
    rng = np.random.default_rng(0)
    for i, e in enumerate(expected):
        n = e["length"]
        ranges = [(0, n), (0, 0), (n, n), (0, n + 5)]
        for im in e["images"]:  # edges of every context run
            a, b = im["context_start"], im["context_start"] + im["tiles"] * cache.tokens_per_tile
            ranges += [(a - 1, a + 1), (a, b), (a + 1, b - 1), (b - 1, b + 1), (0, a), (b, n)]
        ranges += [tuple(sorted(rng.integers(0, n + 1, size=2).tolist())) for _ in range(8)]
        for start, end in ranges:
            ids, labels = cache.tokens(i, start, end)
            assert ids.tolist() == e["input_ids"][start:end], (i, start, end)
            assert labels.tolist() == e["labels"][start:end], (i, start, end)


def test_plan_reads_back_as_written(written: Path):
    exp = json.loads((written / "expected.json").read_text())["plan"]
    cache = PreparedCache(str(written / "cache"))
    plan = TrainingPlan(str(written / "plan"), cache=cache)
    assert plan.fingerprint == exp["fingerprint"]
    assert (plan.world_size, plan.micro_batches_per_step) == (2, 2)
    assert plan.epoch_steps == exp["epoch_steps"] and plan.total_steps == sum(exp["epoch_steps"])
    mbs = exp["micro_batches"]
    for rank in range(2):
        for epoch, step, got in plan.iter_steps(rank):
            g = plan.global_step(epoch, step)
            for a, mb in enumerate(got):
                e = mbs[(g * 2 + rank) * 2 + a]
                rows = [[[int(s), int(st), int(n), int(lr)] for s, st, n, lr in zip(r.samples, r.starts, r.lengths, r.learned)] for r in mb.rows]
                assert rows == e["rows"]
                assert (mb.tokens, mb.tiles, mb.learned_tokens) == (e["tokens"], e["tiles"], e["learned"])
                for r in mb.rows:
                    assert r.cu_seqlens.tolist() == [0, *np.cumsum(r.lengths).tolist()]
            t = plan.step_totals(epoch, step)
            assert t.learned_tokens == exp["step_learned"][g]
            assert t.samples == exp["step_samples"][g]
            assert math.isclose(t.sqrt_learned, exp["step_sqrt_learned"][g])


def test_packed_rows_restart_positions_and_match_labels(written: Path):
    cache = PreparedCache(str(written / "cache"))
    plan = TrainingPlan(str(written / "plan"), cache=cache)
    split_seen = False
    for _, _, mbs in plan.iter_steps(0):
        for mb in mbs:
            for row in mb.rows:
                p = cache.pack(row)
                assert len(p.input_ids) == row.tokens <= plan.pack_max_length
                for k, (s, st, n) in enumerate(zip(row.samples, row.starts, row.lengths)):
                    lo = int(p.cu_seqlens[k])
                    assert p.position_ids[lo : lo + n].tolist() == list(range(n))
                    ids, labels = cache.tokens(int(s), int(st), int(st) + int(n))
                    assert p.input_ids[lo : lo + n].tolist() == ids.tolist()
                    # a piece's first token has nothing before it in the row: never learned
                    assert int((labels[1:] != -100).sum()) == int(row.learned[k])
                    split_seen |= int(st) > 0
                for im in p.images:
                    assert 0 <= im.token_lo < im.token_hi <= im.image.tiles * cache.tokens_per_tile
                    assert (p.input_ids[im.row_start : im.row_start + im.token_hi - im.token_lo] == 2).all()
    assert split_seen  # concat packing split at least one sample


def test_resume_from_a_step_yields_the_rest(written: Path):
    plan = TrainingPlan(str(written / "plan"))
    full = [(e, s, [r.samples.tolist() for mb in mbs for r in mb.rows]) for e, s, mbs in plan.iter_steps(1)]
    e, s = plan.position(3)
    resumed = [(e2, s2, [r.samples.tolist() for mb in mbs for r in mb.rows]) for e2, s2, mbs in plan.iter_steps(1, e, s)]
    assert resumed == full[3:]


def test_the_plan_fingerprint_is_recomputed_from_the_files(written: Path, tmp_path: Path):
    plan = TrainingPlan(str(written / "plan"))
    assert plan.verify() == plan.fingerprint
    plan_dir = tmp_path / "plan"
    shutil.copytree(written / "plan", plan_dir)
    with open(plan_dir / "piece_sample.i32", "r+b") as f:
        first = f.read(4)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]) + first[1:])
    with pytest.raises(CacheFormatError, match="hash"):
        TrainingPlan(str(plan_dir)).verify()


def test_a_plan_for_another_cache_is_refused(written: Path, tmp_path: Path):
    plan_dir = tmp_path / "plan"
    shutil.copytree(written / "plan", plan_dir)
    meta = json.loads((plan_dir / "plan.json").read_text())
    meta["cache_fingerprint"] = "0" * 64
    (plan_dir / "plan.json").write_text(json.dumps(meta))
    with pytest.raises(CacheFormatError, match="data plan"):
        TrainingPlan(str(plan_dir), cache=PreparedCache(str(written / "cache")))


def test_a_truncated_column_is_refused(written: Path, tmp_path: Path):
    cache_dir = tmp_path / "cache"
    shutil.copytree(written / "cache", cache_dir)
    ds = next(p for p in cache_dir.iterdir() if p.name.startswith("ds-text"))
    with open(ds / "length.i32", "r+b") as f:
        f.truncate(8)
    with pytest.raises(CacheFormatError, match="bytes"):
        PreparedCache(str(cache_dir))


def test_a_flipped_byte_in_a_cached_labels_file_is_refused_on_load(written: Path, tmp_path: Path):
    cache_dir = tmp_path / "cache"
    shutil.copytree(written / "cache", cache_dir)  # copies change mtimes: every file is hashed
    PreparedCache(str(cache_dir), check="fast")  # as written: accepted
    ds = next(p for p in cache_dir.iterdir() if p.name.startswith("ds-text"))
    info = json.loads((ds / "dataset.json").read_text())
    assert all(len(c["sha256"]) == 64 for c in info["columns"].values())
    labels = ds / info["columns"]["labels"]["file"]
    raw = bytearray(labels.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    labels.write_bytes(bytes(raw))
    with pytest.raises(CacheFormatError, match=rf"{labels.name}: its sha256 differs"):
        PreparedCache(str(cache_dir), check="fast")
    # without checks (a loader worker re-opening a checked cache) only sizes are compared
    PreparedCache(str(cache_dir))
