"""Export: original folder format round trip (bit-identical) and transformers' native format."""

from __future__ import annotations

import json

import pytest
import torch

from tessera_engine.model.export import export_native, export_original
from tessera_engine.model.load import load_internvl
from tessera_engine.model.tiny import build_tiny, small_tokenizer_json


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return small_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("llm,vision,tied", [("qwen2", "300m", True), ("internlm2", "6b", False),
                                             ("phi3", "6b", False)])
def test_original_round_trip_is_bit_identical(tmp_path, tok, llm, vision, tied):
    from transformers import AutoConfig

    src = build_tiny(tmp_path / "src", llm=llm, vision=vision, tokenizer_json=tok, tile_size=28,
                     tie_word_embeddings=tied)
    # an old checkpoint whose llm_config lacks `architectures`: export must write it back
    cfg = json.loads((src / "config.json").read_text())
    del cfg["llm_config"]["architectures"]
    (src / "config.json").write_text(json.dumps(cfg))
    loaded = load_internvl(src)
    with torch.no_grad():  # a trained model differs from its source: the export must carry the new values
        loaded.model.model.multi_modal_projector.linear_2.bias.add_(0.25)
    out = export_original(loaded, tmp_path / "out")
    again = load_internvl(out)
    same_weights(loaded.model, again.model)
    exported = json.loads((out / "config.json").read_text())
    llm_cfg = exported["llm_config"]
    arch = {"qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM", "phi3": "Phi3ForCausalLM"}[llm]
    assert llm_cfg["architectures"] == [arch]
    assert exported["model_type"] == "internvl_chat" and exported["template"] == cfg["template"]
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (out / "tokenizer_config.json").exists()
    if llm != "internlm2":  # InternLM2 has no transformers class: its config is only readable by remote code
        c = AutoConfig.for_model(llm_cfg["model_type"], **{k: v for k, v in llm_cfg.items() if k != "model_type"})
        assert c.hidden_size == llm_cfg["hidden_size"] and c.architectures == [arch]
    # the same config, saved and reread through AutoConfig, keeps the architectures
    from tessera_engine.model import convert

    native_text = convert.native_text_config(llm_cfg)
    native_text.save_pretrained(tmp_path / "llm_cfg")
    reread = AutoConfig.from_pretrained(tmp_path / "llm_cfg")
    assert reread.architectures == native_text.architectures and reread.vocab_size == llm_cfg["vocab_size"]


def test_sharded_export_round_trip(tmp_path, tok):
    src = build_tiny(tmp_path / "src", llm="internlm2", vision="300m", tokenizer_json=tok, tile_size=28)
    loaded = load_internvl(src)
    out = export_original(loaded, tmp_path / "out", max_shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").exists() and not (out / "model.safetensors").exists()
    same_weights(loaded.model, load_internvl(out).model)


def test_native_export_loads_with_from_pretrained(tmp_path, tok):
    from transformers import AutoConfig, InternVLForConditionalGeneration

    src = build_tiny(tmp_path / "src", llm="internlm2", vision="6b", tokenizer_json=tok, tile_size=28)
    loaded = load_internvl(src)
    out = export_native(loaded, tmp_path / "native")
    m = InternVLForConditionalGeneration.from_pretrained(out)
    same_weights(loaded.model, m)
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "internvl" and cfg.text_config.model_type == "llama"
    assert cfg.image_token_id == loaded.info.img_context_token_id
    assert (out / "tokenizer.json").exists()
    ids = torch.tensor([[3, 4, loaded.info.img_context_token_id, 5]])
    px = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m(input_ids=ids, pixel_values=px).logits,
                                   loaded.model(input_ids=ids, pixel_values=px).logits, atol=1e-5, rtol=0)
