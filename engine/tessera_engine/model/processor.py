"""The processor of a native export: what `AutoProcessor.from_pretrained` needs, no remote code.

- image processor: transformers' GotOcr2 one (the InternVL processor's), PIL backend, set to
  the model's tiling: tile size, min/max tiles, bicubic resize, ImageNet mean/std, thumbnail;
- tokenizer: the source's tokenizer.json (or one converted from tokenizer.model / vocab+merges),
  saved by transformers, with the image tokens InternVLProcessor reads (`<img>`, `</img>`,
  `<IMG_CONTEXT>`) and no `auto_map`: nothing points at a file the export does not hold;
- chat template: the model's conversation template (Hermes-2, internlm2-chat, phi3-chat,
  internvl2_5) in Jinja, an image part written as `<IMG_CONTEXT>\\n` before the text as the
  official `<image>\\n` placeholder is, so the processor expands it to the same tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .load import read_original_config, read_special_tokens

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

SYSTEM_V2 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
SYSTEM_V25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

# name -> (system prefix, user prefix, assistant prefix, turn end, after turn end, strip turns, system)
_IM = ("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>")
TEMPLATES = {
    "Hermes-2": (*_IM, "", False, SYSTEM_V2),
    "internlm2-chat": (*_IM, "", True, SYSTEM_V2),
    "phi3-chat": ("<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>", "", False, SYSTEM_V2),
    "internvl2_5": (*_IM, "\n", False, SYSTEM_V25),
}


def chat_template(name: str) -> str:
    """A Jinja chat template that renders messages as the named conversation template does."""
    if name not in TEMPLATES:
        raise ValueError(f"no chat template for {name!r}; known: {sorted(TEMPLATES)}")
    sys_p, user_p, asst_p, end, after, strip, system = TEMPLATES[name]
    j = json.dumps  # Jinja string literals: JSON's escaping is valid Jinja
    trim = " | trim" if strip else ""
    return (
        "{%- set ns = namespace(system=" + j(system) + ", text='') -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- if messages[0]['content'] is string -%}{%- set ns.system = messages[0]['content'] -%}"
        "{%- else -%}{%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
        " | map(attribute='text') | join('') -%}{%- endif -%}{%- endif -%}"
        "{{- " + j(sys_p) + " + ns.system + " + j(end + after) + " -}}"
        "{%- for m in messages -%}{%- if m['role'] != 'system' -%}"
        "{%- if m['content'] is string -%}{%- set ns.text = m['content'] -%}"
        "{%- else -%}{%- set ns.text = '' -%}{%- for c in m['content'] -%}"
        "{%- if c['type'] == 'image' -%}{%- set ns.text = ns.text + '<IMG_CONTEXT>\\n' -%}"
        "{%- elif c['type'] == 'video' -%}{%- set ns.text = ns.text + '<video>\\n' -%}"
        "{%- elif c['type'] == 'text' -%}{%- set ns.text = ns.text + c['text'] -%}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{- (" + j(user_p) + " if m['role'] == 'user' else " + j(asst_p) + ") + (ns.text" + trim + ") + "
        + j(end + after) + " -}}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + j(asst_p) + " -}}{%- endif -%}"
    )


def _token(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def backend_tokenizer(source: str | os.PathLike, tc: dict):
    """The source's tokenizer as one `tokenizers.Tokenizer` (converted when it has no tokenizer.json),
    starting every text with BOS where the source's tokenizer_config says `add_bos_token`."""
    from tokenizers import Tokenizer, processors

    src = Path(source)
    if not (src / "tokenizer.json").exists():
        return _converted(src)
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    bos = _token(tc.get("bos_token"))
    bos_id = tok.token_to_id(bos) if bos else None
    if tc.get("add_bos_token") and bos_id is not None and tok.encode("a").ids[:1] != [bos_id]:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    return tok


def _converted(src: Path):
    from ..jobs.tokenizer_convert import convert_bpe_files, convert_sentencepiece

    if (src / "tokenizer.model").exists() and not (src / "vocab.json").exists():
        return convert_sentencepiece(str(src))
    if (src / "vocab.json").exists() and (src / "merges.txt").exists():
        return convert_bpe_files(str(src))
    raise FileNotFoundError(f"{src}: no tokenizer.json, tokenizer.model or vocab.json + merges.txt")


def build_parts(source: str | os.PathLike, config):
    """(image processor, tokenizer, chat template, image_seq_length) for an original folder and the
    native config it was converted to."""
    from transformers import GotOcr2ImageProcessorPil, PreTrainedTokenizerFast

    src = Path(source)
    orig = read_original_config(src)
    tc_path = src / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.exists() else {}
    special = read_special_tokens(src)
    for t in ("<img>", "</img>", "<IMG_CONTEXT>"):
        if t not in special:
            raise ValueError(f"{src}: the tokenizer has no {t} token")
    template = chat_template(orig.get("template") or "Hermes-2")
    kw = {k: _token(tc.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    kw = {k: v for k, v in kw.items() if v}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend_tokenizer(src, tc),
        model_max_length=int(tc.get("model_max_length") or 8192),
        clean_up_tokenization_spaces=bool(tc.get("clean_up_tokenization_spaces", False)),
        # InternVL2 has no video token (a video is frames of <image>): the context token stands in
        extra_special_tokens={**IMAGE_TOKENS, "video_token": "<video>" if "<video>" in special else "<IMG_CONTEXT>"},
        chat_template=template,
        **kw,
    )
    size = config.vision_config.image_size
    tile = int(size[0] if isinstance(size, (list, tuple)) else size)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=bool(orig.get("dynamic_image_size", True)),
        min_patches=int(orig.get("min_dynamic_patch", 1)),
        max_patches=int(orig.get("max_dynamic_patch", 12)),
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    return image_processor, tokenizer, template, int(config.image_seq_length)


# The names InternVLProcessor reads from its tokenizer.
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}


def write_processor(source: str | os.PathLike, out_dir: str | os.PathLike, config) -> None:
    """The files `InternVLProcessor.from_pretrained` reads, each written by its own class.

    Written part by part rather than through InternVLProcessor: building that object needs its
    video processor, which needs torchvision, and an export must not."""
    out = Path(out_dir)
    image_processor, tokenizer, template, seq = build_parts(source, config)
    image_processor.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    tile = image_processor.size["height"]
    video = {"video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor",
             "size": {"height": tile, "width": tile}, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
             "resample": 3, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": True, "do_convert_rgb": True}
    _update_json(out / "video_preprocessor_config.json", video)
    _update_json(out / "preprocessor_config.json", {"processor_class": "InternVLProcessor"})
    _update_json(out / "tokenizer_config.json", {"processor_class": "InternVLProcessor"})
    _update_json(out / "processor_config.json", {"processor_class": "InternVLProcessor", "image_seq_length": seq})


def _update_json(path: Path, values: dict) -> None:
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**old, **values}, f, indent=2, ensure_ascii=False)
