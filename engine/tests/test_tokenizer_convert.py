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
