"""Convert a model folder's tokenizer files into one equivalent `tokenizer.json`.

Two sources, both converted with transformers' own code:
- a SentencePiece `tokenizer.model` (InternLM2, Phi-3, Yi): `SpmConverter.build_tokenizer_from_spm_proto`,
  which follows the model's own normalizer spec (dummy prefix, extra-whitespace removal,
  whitespace escaping, precompiled charsmap), ranks BPE merges by piece score, keeps byte
  fallback and emits user-defined pieces whole. Each text segment between added tokens is
  encoded as the slow tokenizer encodes it (see convert_sentencepiece for `legacy`).
- `vocab.json` + `merges.txt` (Qwen2 byte-level BPE): the folder's tokenizer class from
  transformers, whose backend is a `tokenizers` pipeline.

Added tokens (tokenizer_config.json `added_tokens_decoder`, added_tokens.json, special tokens)
are registered with their ids and their flags (lstrip, rstrip, normalized, single_word);
`add_bos_token` / `add_eos_token` become the post-processor.
"""

from __future__ import annotations

import json
import os


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _added_tokens(src: str) -> list[tuple[int, str, bool, dict]]:
    """(id, content, special, flags) for every token the folder adds on top of the model's vocabulary;
    flags are the AddedToken keywords tokenizer_config.json gives (lstrip, rstrip, normalized, single_word)."""
    cfg = _read_json(os.path.join(src, "tokenizer_config.json"))
    found: dict[int, tuple[str, bool, dict]] = {}
    for sid, spec in (cfg.get("added_tokens_decoder") or {}).items():
        special = bool(spec.get("special", True))
        flags = {
            "lstrip": bool(spec.get("lstrip", False)),
            "rstrip": bool(spec.get("rstrip", False)),
            "single_word": bool(spec.get("single_word", False)),
            "normalized": bool(spec.get("normalized", not special)),
        }
        found[int(sid)] = (spec["content"], special, flags)
    for content, tid in _read_json(os.path.join(src, "added_tokens.json")).items():
        found.setdefault(int(tid), (content, True, {"normalized": False}))
    return sorted((i, c, s, f) for i, (c, s, f) in found.items())


def _token_name(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def convert_sentencepiece(src: str):
    """`legacy` (tokenizer_config.json, LlamaTokenizer's meaning; absent is True): legacy encodes each
    text segment between added tokens as `SentencePieceProcessor.encode(segment)`, with the model's
    dummy prefix on every segment. `legacy: false` turns the dummy prefix off, as the slow tokenizer
    does; the one `▁` it puts before a whole text is added by tessera where a text starts (src/text)."""
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    model_pb2 = import_protobuf()
    proto = model_pb2.ModelProto()
    with open(os.path.join(src, "tokenizer.model"), "rb") as f:
        proto.ParseFromString(f.read())
    cfg = _read_json(os.path.join(src, "tokenizer_config.json"))
    if cfg.get("legacy") is False:
        proto.normalizer_spec.add_dummy_prefix = False
    added = _added_tokens(src)
    declared = {i: (c, s, fl) for i, c, s, fl in added}
    # A folder may give a piece of the model another name (InternLM2 names its unused pieces
    # `<|im_start|>` ...): the piece keeps its id under the folder's name.
    names = [declared[i][0] if i in declared else p.piece for i, p in enumerate(proto.pieces)]
    if proto.trainer_spec.model_type == 2:  # BPE
        vocab = {name: i for i, name in enumerate(names)}
    else:  # Unigram
        vocab = [(name, p.score) for name, p in zip(names, proto.pieces)]
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if tok is None:
        raise ValueError(f"{src}/tokenizer.model: unsupported SentencePiece model type {proto.trainer_spec.model_type}")
    # control pieces (<s>, </s>, ...) are special: never produced from text, matched whole
    for i, p in enumerate(proto.pieces):
        if p.type in (2, 3):
            _, _, fl = declared.get(i, (p.piece, True, {}))
            tok.add_special_tokens([AddedToken(names[i], special=True, **{"normalized": False, **fl})])
    _register(tok, added, src)
    add_bos = cfg.get("add_bos_token", True)
    add_eos = cfg.get("add_eos_token", False)
    bos = _token_name(cfg.get("bos_token"))
    bos = bos or (names[proto.trainer_spec.bos_id] if proto.trainer_spec.bos_id >= 0 else None)
    eos = _token_name(cfg.get("eos_token"))
    eos = eos or (names[proto.trainer_spec.eos_id] if proto.trainer_spec.eos_id >= 0 else None)
    first = [bos] if add_bos and bos is not None and tok.token_to_id(bos) is not None else []
    last = [eos] if add_eos and eos is not None and tok.token_to_id(eos) is not None else []
    if first or last:
        single = " ".join([*first, "$A", *last])
        pair = " ".join([*first, "$A", *last, *first, "$B", *last])
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys(first + last)]
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


def _register(tok, added: list[tuple[int, str, bool, dict]], src: str) -> None:
    from tokenizers import AddedToken

    for tid, content, special, flags in added:
        token = AddedToken(content, special=special, **{"normalized": False, **flags})
        have = tok.token_to_id(content)
        if have is None:
            size = tok.get_vocab_size(with_added_tokens=True)
            if tid != size:
                raise ValueError(
                    f"{src}: added token {content!r} has id {tid} but the next free id is {size}; "
                    "the tokenizer files disagree"
                )
            tok.add_special_tokens([token]) if special else tok.add_tokens([token])
        elif have != tid:
            raise ValueError(f"{src}: token {content!r} is id {have} in the vocabulary but {tid} in the added tokens")
        elif special:
            tok.add_special_tokens([token])


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
