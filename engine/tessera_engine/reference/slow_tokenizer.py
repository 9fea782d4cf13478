"""The slow SentencePiece tokenizer the official training runs (`AutoTokenizer(..., use_fast=False)`),
for parity tests only.

transformers 5 keeps the slow machinery (`SentencePieceBackend`: `PreTrainedTokenizer.tokenize`
splits on added tokens and applies their lstrip/rstrip/single_word flags; `_tokenize` encodes
each segment with SentencePiece, without the dummy prefix when `legacy` is false) but its
`LlamaTokenizer` is now the fast one. The two pieces of the slow `LlamaTokenizer` of transformers
4.x that InternVL2 was trained with are restated here: with `legacy: false` one `▁` goes before
the whole text (dropped when the text starts with a token of the special-tokens map), and
`add_bos_token`/`add_eos_token` put BOS/EOS around a sequence. InternLM2's remote-code tokenizer
is the same with `legacy` true (`sp_model.encode` per segment, the model's own dummy prefix).
"""

from __future__ import annotations

from transformers.tokenization_utils_sentencepiece import SPIECE_UNDERLINE, SentencePieceBackend


class SlowSentencePieceTokenizer(SentencePieceBackend):
    def __init__(self, vocab_file=None, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token=None,
                 add_bos_token=True, add_eos_token=False, legacy=None, add_prefix_space=True, **kwargs):
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.add_prefix_space = True if add_prefix_space is None else add_prefix_space
        kwargs.pop("tokenizer_class", None)
        super().__init__(vocab_file=vocab_file, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
                         pad_token=pad_token, legacy=True if legacy is None else legacy, **kwargs)

    def tokenize(self, text, **kwargs):
        if self.legacy or len(text) == 0:
            return super().tokenize(text, **kwargs)
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        tokens = super().tokenize(text, **kwargs)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            out = out + bos + token_ids_1 + eos
        return out


def load(folder: str) -> SlowSentencePieceTokenizer:
    return SlowSentencePieceTokenizer.from_pretrained(folder)
