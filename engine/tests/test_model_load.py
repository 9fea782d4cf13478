"""Loading original InternVL2 folders: every family, every weight layout, loud failures, no remote code."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tessera_engine.model.load import load_internvl, read_special_tokens
from tessera_engine.model.tiny import build_tiny, small_tokenizer_json


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return small_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def weights(model):
    return {k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("llm,vision,native", [("qwen2", "300m", "Qwen2Model"), ("internlm2", "6b", "LlamaModel"),
                                               ("llama", "6b", "LlamaModel"), ("phi3", "300m", "Phi3Model")])
def test_every_family_loads_as_native(tmp_path, tok, llm, vision, native):
    folder = build_tiny(tmp_path / "m", llm=llm, vision=vision, tokenizer_json=tok, tile_size=28)
    loaded = load_internvl(folder)
    m, info = loaded.model, loaded.info
    assert type(m).__name__ == "InternVLForConditionalGeneration"
    assert type(m.model.language_model).__name__ == native
    assert info.family == llm and info.vision_style == vision
    assert info.tile_size == 28 and info.tokens_per_tile == 1
    special = read_special_tokens(folder)
    assert info.img_context_token_id == special["<IMG_CONTEXT>"] == m.config.image_token_id
    end = "<|end|>" if llm == "phi3" else "<|im_end|>"
    assert info.eos_token_ids[0] == special[end]
    assert info.template == {"qwen2": "Hermes-2", "internlm2": "internlm2-chat", "llama": "Hermes-2",
                             "phi3": "phi3-chat"}[llm]
    layer = m.model.vision_tower.encoder.layer[0]
    assert (type(layer.layernorm_before).__name__ == "InternVLVisionRMSNorm") == (vision == "6b")
    assert (layer.attention.q_proj.bias is None) == (vision == "6b")
    ids = torch.tensor([[5, 6, info.img_context_token_id, 7]])
    with torch.no_grad():
        logits = m(input_ids=ids, pixel_values=torch.randn(1, 3, 28, 28)).logits
    assert logits.shape == (1, 4, m.config.text_config.vocab_size) and torch.isfinite(logits).all()
    assert not any(name.startswith("transformers_modules") for name in sys.modules)  # no remote code


def test_default_tokenizer_is_real_qwen2_vocab_with_internvl_tokens(tmp_path):
    folder = build_tiny(tmp_path / "m", llm="internlm2", vision="300m", llm_layers=1, vision_layers=1)
    t = json.loads((folder / "tokenizer.json").read_text())
    added = {a["content"]: a["id"] for a in t["added_tokens"]}
    assert added["<|im_start|>"] == 151644 and added["<|im_end|>"] == 151645  # the base vocab's own tokens
    base_max = max(v for k, v in added.items() if k.startswith("<|") or k in ("<think>", "</think>",
                                                                              "<tool_call>", "</tool_call>"))
    names = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
    assert [added[n] for n in names] == list(range(base_max + 1, base_max + 1 + 9))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "internvl_chat" and cfg["architectures"] == ["InternVLChatModel"]
    assert cfg["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert cfg["llm_config"]["vocab_size"] == len(t["model"]["vocab"]) + sum(
        1 for a in t["added_tokens"] if a["content"] not in t["model"]["vocab"])
    for key in ("template", "downsample_ratio", "ps_version", "select_layer", "force_image_size",
                "dynamic_image_size", "use_thumbnail", "max_dynamic_patch", "min_dynamic_patch"):
        assert key in cfg
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    assert tc["eos_token"] == "<|im_end|>" and tc["bos_token"] == "<s>" and tc["model_max_length"] > 0
    assert {v["content"] for v in tc["added_tokens_decoder"].values()} >= set(names)
    from tokenizers import Tokenizer

    enc = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("<img><IMG_CONTEXT></img>")
    assert enc.ids == [added["<img>"], added["<IMG_CONTEXT>"], added["</img>"]]


def test_llm_config_without_architectures_loads(tmp_path, tok):
    folder = build_tiny(tmp_path / "m", llm="internlm2", tokenizer_json=tok, tile_size=28)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["llm_config"]["architectures"]
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_internvl(folder).info.family == "internlm2"


def test_sharded_and_bin_weights_load_identically(tmp_path, tok):
    folder = build_tiny(tmp_path / "m", llm="qwen2", tokenizer_json=tok, tile_size=28)
    ref = weights(load_internvl(folder).model)
    sd = load_file(folder / "model.safetensors")
    keys = sorted(sd)
    # sharded safetensors with an index
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (sharded / f).write_bytes((folder / f).read_bytes())
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    wm = {}
    for i, part in enumerate(halves):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, str(sharded / name))
        wm.update({k: name for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    # a single .bin
    binf = tmp_path / "bin"
    binf.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (binf / f).write_bytes((folder / f).read_bytes())
    torch.save(sd, binf / "pytorch_model.bin")
    for other in (sharded, binf):
        got = weights(load_internvl(other).model)
        assert got.keys() == ref.keys()
        assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_missing_or_unexpected_keys_fail_loudly(tmp_path, tok):
    folder = build_tiny(tmp_path / "m", llm="internlm2", vision="6b", tokenizer_json=tok, tile_size=28)
    sd = load_file(folder / "model.safetensors")
    missing = dict(sd)
    del missing["vision_model.encoder.layers.0.attn.q_norm.weight"]
    save_file(missing, str(folder / "model.safetensors"))
    with pytest.raises(KeyError, match="missing"):
        load_internvl(folder)
    extra = dict(sd)
    extra["vision_model.encoder.layers.0.attn.surprise"] = torch.zeros(3)
    save_file(extra, str(folder / "model.safetensors"))
    with pytest.raises(KeyError, match="surprise"):
        load_internvl(folder)
    extra = dict(sd)
    extra["language_model.model.layers.0.attention.surprise.weight"] = torch.zeros(3)
    save_file(extra, str(folder / "model.safetensors"))
    with pytest.raises(KeyError, match="surprise"):
        load_internvl(folder)
    # a buffer old checkpoints saved is recomputed, not an error
    ok = dict(sd)
    ok["language_model.model.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(ok, str(folder / "model.safetensors"))
    load_internvl(folder)


def test_load_errors_name_the_checkpoint_keys_and_shapes(tmp_path, tok):
    """Missing, unexpected and wrongly shaped weights are reported under the checkpoint's own names
    (never only the converted ones), with the shape config.json asks for and the shape found."""
    folder = build_tiny(tmp_path / "m", llm="internlm2", vision="300m", tokenizer_json=tok, tile_size=28)
    sd = load_file(folder / "model.safetensors")
    wqkv = "language_model.model.layers.1.attention.wqkv.weight"
    rows, cols = sd[wqkv].shape
    proj = tuple(sd["mlp1.1.weight"].shape)

    def load_with(change):
        bad = dict(sd)
        change(bad)
        save_file(bad, str(folder / "model.safetensors"))
        return load_internvl(folder)

    with pytest.raises(KeyError) as e:
        load_with(lambda d: d.pop("mlp1.1.weight"))
    assert f"missing 1: mlp1.1.weight (expected shape {proj})" in str(e.value)
    assert "multi_modal_projector" not in str(e.value)
    with pytest.raises(ValueError) as e:
        load_with(lambda d: d.__setitem__(wqkv, torch.zeros(rows - 16, cols)))
    assert f"{wqkv}: expected shape {(rows, cols)}, found {(rows - 16, cols)}" in str(e.value)
    assert "q_proj" not in str(e.value)
    with pytest.raises(ValueError) as e:
        load_with(lambda d: d.__setitem__("mlp1.1.weight", torch.zeros(proj[0], proj[1] + 1)))
    assert f"mlp1.1.weight: expected shape {proj}, found {(proj[0], proj[1] + 1)}" in str(e.value)
    with pytest.raises(KeyError) as e:
        load_with(lambda d: d.__setitem__("mlp1.4.weight", torch.zeros(2, 3)))
    assert "unexpected 1: mlp1.4.weight (found shape (2, 3))" in str(e.value)


def test_ps_version_missing_is_the_official_v1_and_refused(tmp_path, tok):
    folder = build_tiny(tmp_path / "m", llm="qwen2", tokenizer_json=tok, tile_size=28)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["ps_version"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no ps_version, which the official code reads as 'v1'"):
        load_internvl(folder)
    cfg["ps_version"] = "v1"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="ps_version 'v1'.*only 'v2'"):
        load_internvl(folder)


def test_tied_embeddings_load_and_share(tmp_path, tok):
    folder = build_tiny(tmp_path / "m", llm="qwen2", tokenizer_json=tok, tile_size=28, tie_word_embeddings=True)
    assert "language_model.lm_head.weight" not in load_file(folder / "model.safetensors")
    m = load_internvl(folder).model
    assert m.lm_head.weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()


def test_build_tiny_job(tmp_path, tok):
    from tessera_engine.jobs import build_tiny as job

    res = job.run({"kind": "build-tiny", "protocol": 1, "out": str(tmp_path / "j"), "llm": "phi3",
                   "vision": "6b", "tile_size": 28, "tokenizer_json": str(tok)})
    assert res["template"] == "phi3-chat" and res["tile_size"] == 28
    assert load_internvl(res["folder"]).info.img_context_token_id == res["img_context_token_id"]
    with pytest.raises(ValueError, match="unknown"):
        job.run({"kind": "build-tiny", "out": str(tmp_path / "k"), "colour": "red"})


def test_cli_builds_folder(tmp_path, tok):
    from tessera_engine.model.tiny import main

    assert main(["--out", str(tmp_path / "c"), "--llm", "llama", "--vision", "6b", "--tile-size", "28",
                 "--tokenizer-json", str(tok)]) == 0
    assert load_internvl(tmp_path / "c").info.native_family == "llama"


def test_released_llm_configs_convert():
    """llm_config shapes as the released InternVL2 folders write them (legacy generation keys, remote-code
    keys, Phi-3's "su" rope scaling, InternLM2's dynamic rope scaling)."""
    from tessera_engine.model import convert

    legacy = {"_name_or_path": "./pretrained/x", "add_cross_attention": False, "attn_implementation":
              "flash_attention_2", "bad_words_ids": None, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
              "max_length": 20, "top_k": 50, "torch_dtype": "bfloat16", "transformers_version": "4.37.2",
              "use_bfloat16": True}
    qwen2 = {**legacy, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
             "intermediate_size": 4864, "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
             "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False, "vocab_size": 151655,
             "tie_word_embeddings": False, "max_window_layers": 24, "rms_norm_eps": 1e-6}
    c = convert.native_text_config(qwen2)
    assert type(c).__name__ == "Qwen2Config" and c.num_key_value_heads == 2 and c.architectures == ["Qwen2ForCausalLM"]
    phi3 = {**legacy, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "auto_map": {"AutoConfig": "x.y"},
            "hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32, "num_hidden_layers": 32,
            "num_key_value_heads": 32, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_scaling": {"long_factor": [1.5] * 48, "short_factor": [1.0] * 48, "type": "su"},
            "vocab_size": 32020}
    c = convert.native_text_config(phi3)
    assert c.rope_parameters["rope_type"] == "longrope" and c.rope_parameters["long_factor"][0] == 1.5
    internlm2 = {"model_type": "internlm2", "auto_map": {"AutoConfig": "x.y"}, "hidden_size": 2048,
                 "intermediate_size": 8192, "num_attention_heads": 16, "num_key_value_heads": 8,
                 "num_hidden_layers": 24, "max_position_embeddings": 32768, "rope_theta": 1000000,
                 "rope_scaling": {"type": "dynamic", "factor": 2.0}, "vocab_size": 92553, "bias": False}
    c = convert.native_text_config(internlm2)  # no `architectures`: the family comes from model_type
    assert type(c).__name__ == "LlamaConfig" and c.architectures == ["LlamaForCausalLM"]
    assert c.rope_parameters["rope_type"] == "dynamic" and c.rope_parameters["factor"] == 2.0
    assert c.rope_parameters["rope_theta"] == 1000000
    with pytest.raises(ValueError, match="unsupported LLM"):
        convert.llm_family({"model_type": "mistral"})
