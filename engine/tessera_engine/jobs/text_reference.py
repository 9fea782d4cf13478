"""Parity checks: answer a batch of questions about tokenization, templates and tiling with
Python's reference (transformers' tokenizers, SentencePiece, the official preprocessing and
transformers' InternVL image processor), all in one process."""

from __future__ import annotations

import os


def load_tokenizer(d: str):
    """The folder's tokenizer.json exactly as written (transformers 5 rebuilds some classes, e.g.
    LlamaTokenizer, from its own defaults instead); the slow tokenizer the official training runs
for SentencePiece folders; AutoTokenizer for vocab.json + merges.txt folders."""
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = os.path.join(d, "tokenizer.json")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(d, "tokenizer.model")):
            # What the official training loads (use_fast=False): the slow SentencePiece tokenizer.
            from ..reference.slow_tokenizer import load

            return load(d)
        return AutoTokenizer.from_pretrained(d)
    cfg_path = os.path.join(d, "tokenizer_config.json")
    cfg = json.load(open(cfg_path, encoding="utf-8")) if os.path.exists(cfg_path) else {}
    names = {}
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
        v = cfg.get(k)
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str):
            names[k] = v
    return PreTrainedTokenizerFast(tokenizer_file=path, **names)


def run(job: dict) -> dict:
    from ..reference import internvl

    tokenizers: dict = {}
    sps: dict = {}

    def hf(d: str):
        if d not in tokenizers:
            tokenizers[d] = load_tokenizer(d)
        return tokenizers[d]

    def sp(path: str):
        if path not in sps:
            import sentencepiece

            sps[path] = sentencepiece.SentencePieceProcessor(model_file=path)
        return sps[path]

    out = []
    for q in job["questions"]:
        op = q["op"]
        if op == "encode":  # transformers' tokenizer on whole texts, without BOS/EOS
            t = hf(q["dir"])
            out.append([t(s, add_special_tokens=False).input_ids for s in q["texts"]])
        elif op == "encode_full":  # tokenizer(text).input_ids: BOS/EOS as the folder says
            t = hf(q["dir"])
            out.append([t(s).input_ids for s in q["texts"]])
        elif op == "spm_from_vocab":  # a SentencePiece BPE model holding a tokenizer.json's vocabulary
            out.append(_spm_from_vocab(q["tokenizer_json"], q["out"]))
        elif op == "spm_encode":
            p = sp(q["model"])
            out.append([p.encode(s) for s in q["texts"]])
        elif op == "spm_train":
            import sentencepiece

            os.makedirs(q["dir"], exist_ok=True)
            corpus = os.path.join(q["dir"], "corpus.txt")
            with open(corpus, "w", encoding="utf-8") as f:
                f.write("\n".join(q["corpus"]))
            sentencepiece.SentencePieceTrainer.train(
                input=corpus, model_prefix=os.path.join(q["dir"], "tokenizer"), minloglevel=2, **q["options"]
            )
            out.append(os.path.join(q["dir"], "tokenizer.model"))
        elif op == "preprocess":
            t = hf(q["dir"])
            internvl.add_internvl_tokens(t)
            results = []
            for case in q["cases"]:
                conv = internvl.normalize_record(case["conversations"], case.get("num_images", 0), case.get("video_frames"))
                r = internvl.preprocess(q["template"], conv, t, case.get("tokens_per_image", []))
                r.pop("text")
                results.append(r)
            out.append(results)
        elif op == "isspace":  # every code point Python's str.isspace() is true for
            out.append([c for c in range(0x110000) if chr(c).isspace()])
        elif op == "strip":  # Python's str.strip / lstrip / rstrip
            out.append([[s.strip(), s.lstrip(), s.rstrip()] for s in q["texts"]])
        elif op == "tiles":  # the official rule
            out.append(
                [
                    internvl.num_tiles(w, h, q["min_num"], q["max_num"], q["image_size"], q["use_thumbnail"])
                    for w, h in q["sizes"]
                ]
            )
        elif op == "hf_tiles":  # transformers' InternVL image processor (GotOcr2's crop-to-patches)
            from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

            s = q["image_size"]
            res = []
            for w, h in q["sizes"]:
                cols, rows = get_optimal_tiled_canvas((h, w), (s, s), q["min_num"], q["max_num"])
                res.append([cols, rows])
            out.append(res)
        elif op == "grids":
            out.append([[list(g) for g in internvl.candidate_grids(a, b)] for a, b in q["budgets"]])
        else:
            raise ValueError(f"unknown question {op!r}")
    return {"answers": out}


def _spm_from_vocab(tokenizer_json: str, out: str) -> str:
    """Write a SentencePiece BPE model (Llama style: identity normalization, dummy prefix, byte
    fallback) whose pieces are a Llama-2 style tokenizer.json's vocabulary, in id order, scored by
    rank: a SentencePiece folder with that real vocabulary, as Phi-3's is."""
    import json

    from transformers.convert_slow_tokenizer import import_protobuf

    pb = import_protobuf()
    with open(tokenizer_json, encoding="utf-8") as f:
        t = json.load(f)
    m = pb.ModelProto()
    for piece, i in sorted(t["model"]["vocab"].items(), key=lambda kv: kv[1]):
        p = m.pieces.add()
        p.piece = piece
        if piece == t["model"].get("unk_token"):
            p.type = 2
        elif piece in ("<s>", "</s>"):
            p.type = 3
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            p.type = 6
        else:
            p.type, p.score = 1, -float(i)
    ts = m.trainer_spec
    ts.model_type, ts.vocab_size, ts.byte_fallback, ts.split_digits = 2, len(m.pieces), True, True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = m.normalizer_spec
    ns.name, ns.add_dummy_prefix, ns.remove_extra_whitespaces, ns.escape_whitespaces = "identity", True, False, True
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(m.SerializeToString())
    return out
