"""LoRA through PEFT on the native classes: configs, variants, and adapters that PEFT applies to the
native base with the fully trained projector, equal to the merged export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tessera_engine.model.export import export_native
from tessera_engine.model.load import load_internvl
from tessera_engine.model.tiny import build_tiny, small_tokenizer_json
from tessera_engine.train import lora, loop


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    tok = small_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return build_tiny(tmp_path_factory.mktemp("m") / "src", llm="qwen2", vision="300m", tokenizer_json=tok,
                      tile_size=28, tie_word_embeddings=True, seed=4)


def settings(**kw) -> loop.TrainSettings:
    return loop.TrainSettings.from_config({"lr": 1e-3, **kw})


def inputs(info):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (1, 16), generator=g)
    ids[0, 2:2 + info.tokens_per_tile] = info.img_context_token_id
    return ids, torch.randn(1, 3, 28, 28, generator=g)


def test_both_towers_with_their_ranks_and_peft_variants(src):
    loaded = load_internvl(src)
    model, info = loaded.model, loaded.info
    ids, px = inputs(info)
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values=px).logits
    s = settings(llm_lora_rank=4, llm_lora_alpha=8, vit_lora_rank=2, vit_lora_alpha=6, lora_dropout=0.1,
                 lora_rslora=True, freeze_mlp=True)
    names = loop.add_lora(model, s)
    layers = lora.lora_layers(model)
    assert names and set(names) == set(layers)
    q_llm = model.model.language_model.layers[0].self_attn.q_proj
    q_vit = model.model.vision_tower.encoder.layer[0].attention.q_proj
    assert q_llm.r["default"] == 4 and q_vit.r["default"] == 2
    assert q_llm.scaling["default"] == pytest.approx(8 / 4 ** 0.5)  # rsLoRA: alpha / sqrt(r)
    assert q_vit.scaling["default"] == pytest.approx(6 / 2 ** 0.5)
    assert q_llm.lora_dropout["default"].p == 0.1
    assert not any("multi_modal_projector" in n or "lm_head" in n for n in layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(lora.is_lora_param(n) for n in trainable)  # projector frozen, towers adapted
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=px).logits, before)  # B starts at zero

    dora = load_internvl(src).model
    loop.add_lora(dora, settings(llm_lora_rank=2, lora_dora=True))
    assert any("lora_magnitude_vector" in n for n, _ in dora.named_parameters())
    assert all(p.requires_grad for n, p in dora.named_parameters() if "multi_modal_projector" in n)
    with pytest.raises(ValueError, match="match no linear"):
        loop.add_lora(load_internvl(src).model, settings(llm_lora_rank=2, llm_lora_targets=["nothing"]))


def test_peft_adapter_with_projector_applied_to_native_base_equals_merged_export(src, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    s = settings(llm_lora_rank=4, llm_lora_alpha=8, freeze_vit=True, freeze_mlp=False)
    trained = load_internvl(src).model
    loop.freeze(trained, s)
    loop.add_lora(trained, s)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # "training": LoRA factors and the projector move
        for n, p in trained.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    sd = {k: v.detach().clone() for k, v in trained.state_dict().items()}

    r = loop.write_exports(sd, s, str(tmp_path / "a"), str(src), fmt="native", lora_export="adapter")
    adapter = tmp_path / "a" / "adapter"
    assert r["adapter"] == str(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["modules_to_save"] == ["model.multi_modal_projector"]
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert any("multi_modal_projector" in k for k in tensors)
    assert any(k.endswith("lora_A.weight") and "language_model" in k for k in tensors)
    merged = tmp_path / "merged"
    loop.write_exports(sd, s, str(merged), str(src), fmt="original", lora_export="merged")

    base = export_native(load_internvl(src), tmp_path / "base")
    with_adapter = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter).eval()
    plain = load_internvl(merged).model.eval()
    info = load_internvl(src).info
    ids, px = inputs(info)
    with torch.no_grad():
        a = with_adapter(input_ids=ids, pixel_values=px).logits
        b = plain(input_ids=ids, pixel_values=px).logits
        untrained = load_internvl(src).model(input_ids=ids, pixel_values=px).logits
        trained.eval()
        t = trained(input_ids=ids, pixel_values=px).logits
    assert (a - untrained).abs().max() > 0.1  # the adapter changes something
    from tessera_engine.jobs.generate import load_model  # chat/eval --adapter: the original folder + adapter

    with torch.no_grad():
        c = load_model({"model": str(src), "adapter": str(adapter), "device": "cpu"}).model(
            input_ids=ids, pixel_values=px).logits
    torch.testing.assert_close(c, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(t, b, atol=1e-4, rtol=0)


def test_lora_with_dropout_resumes_exactly(tmp_path):
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import train_fixtures as F

    model = F.tiny_model(tmp_path / "model")
    cache = F.write_cache(tmp_path, model, n_samples=12)
    plan = F.write_plan(tmp_path / "plan", cache, steps=6, slots_per_step=2, world_size=1)
    cfg = dict(lr=1e-2, llm_lora_rank=4, vit_lora_rank=2, lora_dropout=0.2, lora_dora=True, checkpoint_interval=3,
               checkpoint_keep=5, export="none")
    whole = loop.train(F.job(model, cache, plan, tmp_path / "run", **cfg))
    assert whole["steps_done"] == 6
    shutil.rmtree(Path(whole["checkpoint"]))  # back to the checkpoint after step 3
    again = loop.train({**F.job(model, cache, plan, tmp_path / "run", **cfg), "resume": True})
    assert again["start_step"] == 3
    assert again["losses"] == pytest.approx(whole["losses"][3:], abs=1e-6)

    # Any checkpoint exports, not only the last: the run's model rebuilt from its config.
    from tessera_engine.jobs import export as export_job

    job = F.job(model, cache, plan, tmp_path / "run", **cfg)
    step3 = str(Path(whole["checkpoint"]).parent / "step-00000003")
    r = export_job.run({"model": str(model), "checkpoint": step3, "config": job["config"],
                        "out": str(tmp_path / "ad"), "format": "adapter"})
    assert r["steps_done"] == 3 and json.loads((Path(r["adapter"]) / "adapter_config.json").read_text())[
        "modules_to_save"] == ["model.multi_modal_projector"]
    r = export_job.run({"model": str(model), "checkpoint": step3, "config": job["config"],
                        "out": str(tmp_path / "orig"), "format": "original", "dtype": "bf16"})
    merged = load_file(tmp_path / "orig" / "model.safetensors")
    before = load_file(Path(model) / "model.safetensors")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16} and r["dtype"] == "bfloat16"
    assert any(not torch.equal(merged[k], before[k].to(torch.bfloat16)) for k in before if k.startswith("language"))
    with pytest.raises(FileExistsError, match="--force"):
        export_job.run({"model": str(model), "checkpoint": step3, "config": job["config"],
                        "out": str(tmp_path / "orig"), "format": "native"})
    assert (tmp_path / "orig" / "model.safetensors").exists()  # nothing written is lost
