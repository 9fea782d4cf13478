"""Convert a model folder's tokenizer files into one equivalent `tokenizer.json`.

Two sources, both converted with transformers' own code:
- a SentencePiece `tokenizer.model` (InternLM2, Phi-3, Yi): `SpmConverter.build_tokenizer_from_spm_proto`,
  which follows the model's own normalizer spec (dummy prefix, extra-whitespace removal,
  whitespace escaping, precompiled charsmap), ranks BPE merges by piece score, keeps byte
  fallback and emits user-defined pieces whole; `legacy=True` so each text segment between
  added tokens is encoded as `SentencePieceProcessor.encode(segment)`, as the slow tokenizers do.
- `vocab.json` + `merges.txt` (Qwen2 byte-level BPE): the folder's tokenizer class from
  transformers, whose backend is a `tokenizers` pipeline.

Added tokens (tokenizer_config.json `added_tokens_decoder`, added_tokens.json, special tokens)
are registered with their ids, as special tokens.
"""

from __future__ import annotations

import json
import os


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _added_tokens(src: str) -> list[tuple[int, str, bool]]:
    """(id, content, special) for every token the folder adds on top of the model's vocabulary."""
    cfg = _read_json(os.path.join(src, "tokenizer_config.json"))
    found: dict[int, tuple[str, bool]] = {}
    for sid, spec in (cfg.get("added_tokens_decoder") or {}).items():
        found[int(sid)] = (spec["content"], bool(spec.get("special", True)))
    for content, tid in _read_json(os.path.join(src, "added_tokens.json")).items():
        found.setdefault(int(tid), (content, True))
    return sorted((i, c, s) for i, (c, s) in found.items())


def convert_sentencepiece(src: str):
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    model_pb2 = import_protobuf()
    proto = model_pb2.ModelProto()
    with open(os.path.join(src, "tokenizer.model"), "rb") as f:
        proto.ParseFromString(f.read())
    if proto.trainer_spec.model_type == 2:  # BPE
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    else:  # Unigram
        vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if tok is None:
        raise ValueError(f"{src}/tokenizer.model: unsupported SentencePiece model type {proto.trainer_spec.model_type}")
    # control pieces (<s>, </s>, ...) are special: never produced from text, matched whole
    controls = [(i, p.piece) for i, p in enumerate(proto.pieces) if p.type in (2, 3)]
    tok.add_special_tokens([AddedToken(c, special=True, normalized=False) for _, c in controls])
    _register(tok, _added_tokens(src), src)
    cfg = _read_json(os.path.join(src, "tokenizer_config.json"))
    add_bos = cfg.get("add_bos_token", True)
    bos = cfg.get("bos_token")
    if isinstance(bos, dict):
        bos = bos.get("content")
    bos = bos or (proto.pieces[proto.trainer_spec.bos_id].piece if proto.trainer_spec.bos_id >= 0 else None)
    if add_bos and bos is not None and tok.token_to_id(bos) is not None:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok


def convert_bpe_files(src: str):
    import transformers

    cfg = _read_json(os.path.join(src, "tokenizer_config.json"))
    name = cfg.get("tokenizer_class") or "Qwen2Tokenizer"
    cls = getattr(transformers, name, None) or getattr(transformers, name.removesuffix("Fast"), None)
    if cls is None:
        raise ValueError(f"{src}/tokenizer_config.json: unknown tokenizer_class {name!r}")
    hf = cls.from_pretrained(src)
    tok = hf.backend_tokenizer
    _register(tok, _added_tokens(src), src)
    return tok


def _register(tok, added: list[tuple[int, str, bool]], src: str) -> None:
    from tokenizers import AddedToken

    for tid, content, special in added:
        have = tok.token_to_id(content)
        if have is None:
            size = tok.get_vocab_size(with_added_tokens=True)
            if tid != size:
                raise ValueError(
                    f"{src}: added token {content!r} has id {tid} but the next free id is {size}; "
                    "the tokenizer files disagree"
                )
            tok.add_special_tokens([AddedToken(content, special=True, normalized=False)]) if special else tok.add_tokens(
                [AddedToken(content, special=False, normalized=False)]
            )
        elif have != tid:
            raise ValueError(f"{src}: token {content!r} is id {have} in the vocabulary but {tid} in the added tokens")
        elif special:
            tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])


def run(job: dict) -> dict:
    src = job["dir"]
    out = job["out"]
    if os.path.exists(os.path.join(src, "tokenizer.model")) and not os.path.exists(os.path.join(src, "vocab.json")):
        tok, kind = convert_sentencepiece(src), "sentencepiece"
    elif os.path.exists(os.path.join(src, "vocab.json")) and os.path.exists(os.path.join(src, "merges.txt")):
        tok, kind = convert_bpe_files(src), "vocab+merges"
    else:
        raise FileNotFoundError(f"{src}: no tokenizer.json, tokenizer.model or vocab.json + merges.txt")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    tok.save(tmp)
    os.replace(tmp, out)
    return {"out": out, "source": kind, "vocab_size": tok.get_vocab_size(with_added_tokens=True)}
