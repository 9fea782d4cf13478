"""The SentencePiece → tokenizer.json conversion encodes exactly as SentencePiece itself."""

from __future__ import annotations

import json
import random

import sentencepiece as spm
from tokenizers import Tokenizer

from tessera_engine.jobs.tokenizer_convert import run

PIECES = ["hello", "world", "数据", "训练", "你好", "😀", "👍🏽", " ", "  ", "\t", "\n", "42", "3.14", "naïve", "ＡＢＣ", "①"]


def _strings(n: int, seed: int) -> list[str]:
    r = random.Random(seed)
    return ["".join(r.choice(PIECES) for _ in range(r.randint(1, 12))) for _ in range(n)]


def test_internlm2_style_model_converts_exactly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(s.replace("\n", " ") for s in _strings(3000, 1)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
    )
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"add_bos_token": True, "bos_token": "<s>", "added_tokens_decoder": {"400": {"content": "<IMG_CONTEXT>", "special": True}}})
    )
    out = tmp_path / "converted" / "tokenizer.json"
    r = run({"dir": str(tmp_path), "out": str(out)})
    assert r["source"] == "sentencepiece"
    tok = Tokenizer.from_file(str(out))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    for s in _strings(1000, 2):
        assert tok.encode(s, add_special_tokens=False).ids == sp.encode(s), repr(s)
    assert tok.token_to_id("<IMG_CONTEXT>") == 400
    # BOS from add_bos_token; the image token is matched whole inside text.
    ids = tok.encode("a<IMG_CONTEXT>b").ids
    assert ids[0] == sp.bos_id() and 400 in ids


def test_tokenizer_config_settings_reach_the_converted_file(tmp_path):
    """legacy: false turns the per-segment dummy prefix off; add_bos/add_eos become the
    post-processor; added tokens keep their flags; a folder's name for a model piece wins."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(s.replace("\n", " ") for s in _strings(3000, 3)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, user_defined_symbols=["[UNUSED_0]"], minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    unused = sp.piece_to_id("[UNUSED_0]")

    def convert(name: str, **cfg) -> Tokenizer:
        base = {"bos_token": "<s>", "eos_token": "</s>", "added_tokens_decoder": {
            str(unused): {"content": "<|end|>", "special": True, "rstrip": True},
            "400": {"content": "<ref>", "special": True, "lstrip": True, "single_word": True}}}
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**base, **cfg}))
        out = tmp_path / name / "tokenizer.json"
        run({"dir": str(tmp_path), "out": str(out)})
        return Tokenizer.from_file(str(out))

    legacy = convert("legacy")
    modern = convert("modern", legacy=False, add_bos_token=False, add_eos_token=True)
    text = "hello world"
    assert legacy.encode(text, add_special_tokens=False).ids == sp.encode(text)  # the dummy prefix
    assert not modern.encode(text, add_special_tokens=False).tokens[0].startswith("▁")
    assert legacy.encode(text).ids[0] == sp.bos_id() and legacy.encode(text).ids[-1] != sp.eos_id()
    assert modern.encode(text).ids[0] != sp.bos_id() and modern.encode(text).ids[-1] == sp.eos_id()
    added = {t["content"]: t for t in json.loads((tmp_path / "modern" / "tokenizer.json").read_text())["added_tokens"]}
    assert added["<|end|>"]["id"] == unused and added["<|end|>"]["rstrip"] is True
    assert added["<ref>"]["id"] == 400 and added["<ref>"]["lstrip"] is True and added["<ref>"]["single_word"] is True
    assert modern.token_to_id("[UNUSED_0]") is None
