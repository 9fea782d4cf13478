"""Exports that other tools load as they are: dtype kept, tied models untied for the official code,
native exports with a processor (AutoProcessor + AutoModelForImageTextToText, no remote code)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tessera_engine.model.export import export_native, export_original, source_dtype
from tessera_engine.model.load import load_internvl
from tessera_engine.model.tiny import build_tiny, small_tokenizer_json

sys.path.insert(0, str(Path(__file__).parent))
from test_model_reference import ref_forward  # noqa: E402  (the reference forward, from the spec)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return small_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def to_bf16(folder: Path) -> Path:
    sd = load_file(folder / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["torch_dtype"] = cfg["llm_config"]["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_bf16_in_bf16_out_bit_identical_where_untouched(tmp_path, tok):
    src = to_bf16(build_tiny(tmp_path / "src", llm="internlm2", vision="6b", tokenizer_json=tok, tile_size=28))
    assert source_dtype(src) == torch.bfloat16
    loaded = load_internvl(src)  # float32 master weights, as training holds them
    with torch.no_grad():  # "trained": the projector moved, everything else untouched
        loaded.model.model.multi_modal_projector.linear_1.weight.add_(0.125)
    out = export_original(loaded, tmp_path / "out")
    before, after = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert {t.dtype for t in after.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (out / "model.safetensors").stat().st_size < 0.6 * 2 * (src / "model.safetensors").stat().st_size
    for k in before:
        if k.startswith("mlp1.1."):
            continue
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["mlp1.1.weight"], after["mlp1.1.weight"])
    # --dtype chooses
    f32 = export_original(loaded, tmp_path / "f32", dtype="fp32")
    assert {t.dtype for t in load_file(f32 / "model.safetensors").values()} == {torch.float32}
    native = export_native(loaded, tmp_path / "native")
    assert {t.dtype for t in load_file(native / "model.safetensors").values()} == {torch.bfloat16}


def test_tied_model_exports_untied_with_lm_head_and_same_logits(tmp_path, tok):
    from transformers import Qwen2Config

    src = build_tiny(tmp_path / "src", llm="qwen2", vision="300m", tokenizer_json=tok, tile_size=28,
                     tie_word_embeddings=True, seed=2)
    assert "language_model.lm_head.weight" not in load_file(src / "model.safetensors")
    loaded = load_internvl(src)
    out = export_original(loaded, tmp_path / "out")
    sd = load_file(out / "model.safetensors")
    assert torch.equal(sd["language_model.lm_head.weight"], sd["language_model.model.embed_tokens.weight"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["llm_config"]["tie_word_embeddings"] is False
    # the official InternVLChatConfig builds its LLM config from llm_config with the transformers class
    assert Qwen2Config(**cfg["llm_config"]).tie_word_embeddings is False

    ctx = loaded.info.img_context_token_id
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (20,), generator=g)
    ids[3:3 + loaded.info.tokens_per_tile] = ctx
    px = torch.randn(1, 3, 28, 28, generator=g)
    with torch.no_grad():
        ours = loaded.model(input_ids=ids[None], pixel_values=px).logits[0]
        ref = ref_forward(out, ids, px, ctx)
        again = load_internvl(out).model(input_ids=ids[None], pixel_values=px).logits[0]
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ref, ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, ours, atol=1e-5, rtol=0)


def processor_inputs(out: Path, messages: list, image) -> dict:
    """What `AutoProcessor.from_pretrained(out)(text, images)` gives. transformers builds
    InternVLProcessor only where torchvision is installed (its video half needs it); without it,
    the same files are read part by part: the tokenizer and its chat template, the image
    processor, and processor_config.json's image_seq_length, expanded as InternVLProcessor does."""
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        import torchvision  # noqa: F401
    except ImportError:
        tokenizer = AutoTokenizer.from_pretrained(out)
        images = AutoImageProcessor.from_pretrained(out)
        seq = json.loads((out / "processor_config.json").read_text())["image_seq_length"]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        px = images(images=[image], crop_to_patches=True, return_tensors="pt")
        n = int(px["num_patches"][0])
        text = text.replace(tokenizer.context_image_token,
                            tokenizer.start_image_token + tokenizer.context_image_token * seq * n
                            + tokenizer.end_image_token, 1)
        return {"input_ids": torch.tensor([tokenizer(text)["input_ids"]]), "pixel_values": px["pixel_values"]}
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    got = processor(text=[text], images=[image], return_tensors="pt")
    return {"input_ids": got["input_ids"], "pixel_values": got["pixel_values"]}


def test_native_export_loads_with_auto_classes_and_generates_as_tessera(tmp_path, tok):
    from PIL import Image
    from tokenizers import Tokenizer
    from transformers import AutoModelForImageTextToText

    from tessera_engine.data.pixels import find_grid, load_tiles
    from tessera_engine.model.packed import generate
    from tessera_engine.reference.internvl import conv_template, image_tokens

    src = build_tiny(tmp_path / "src", llm="qwen2", vision="300m", tokenizer_json=tok, tile_size=28,
                     tie_word_embeddings=True, max_dynamic_patch=4, seed=5)
    loaded = load_internvl(src)
    out = export_native(loaded, tmp_path / "native")
    assert not list(out.glob("*.py"))
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == "InternVLProcessor"
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model).__name__ == "InternVLForConditionalGeneration"

    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 255, (40, 90, 3), dtype=np.uint8)).save(path)
    question = "what is in the image?"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    inputs = processor_inputs(out, messages, Image.open(path))

    # tessera's prompt and pixels for the same question: the official template, tiles and tokens
    info = loaded.info
    cols, rows = find_grid(90, 40, info.min_dynamic_patch, info.max_dynamic_patch, info.tile_size)
    thumb = cols * rows > 1 and info.use_thumbnail
    n_tiles = cols * rows + int(thumb)
    conv = conv_template(info.template)
    prompt = conv.prompt([(conv.roles[0], image_tokens(n_tiles * info.tokens_per_tile) + "\n" + question),
                          (conv.roles[1], "")])
    ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(prompt).ids
    assert inputs["input_ids"][0].tolist() == ids
    pixels = torch.from_numpy(load_tiles(str(path), (90, 40), cols, rows, thumb, info.tile_size))
    assert inputs["pixel_values"].shape == pixels.shape
    torch.testing.assert_close(inputs["pixel_values"].float(), pixels, atol=0.02, rtol=0)

    ours = generate(loaded.model, [ids], [pixels], max_new_tokens=12, eos_token_ids=info.eos_token_ids,
                    pad_token_id=info.pad_token_id)[0]
    with torch.no_grad():
        theirs = model.generate(input_ids=inputs["input_ids"], attention_mask=torch.ones_like(inputs["input_ids"]),
                                pixel_values=inputs["pixel_values"], max_new_tokens=12,
                                do_sample=False)[0, len(ids):].tolist()
    eos = set(info.eos_token_ids)
    theirs = theirs[:next((i for i, t in enumerate(theirs) if t in eos), len(theirs))]
    assert len(ours) > 0 and theirs == ours


def test_internlm2_native_export_has_no_dangling_auto_map(tmp_path, tok):
    from transformers import AutoTokenizer

    src = build_tiny(tmp_path / "src", llm="internlm2", vision="300m", tokenizer_json=tok, tile_size=28)
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    tc["tokenizer_class"] = "InternLM2Tokenizer"
    (src / "tokenizer_config.json").write_text(json.dumps(tc))
    (src / "tokenization_internlm2.py").write_text("raise ImportError('remote code')\n")
    out = export_native(load_internvl(src), tmp_path / "native")
    written = json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in written and not (out / "tokenization_internlm2.py").exists()
    for f in out.iterdir():  # nothing refers to a .py file
        if f.suffix == ".json":
            assert ".py" not in f.read_text() or "auto_map" not in f.read_text(), f.name
    t = AutoTokenizer.from_pretrained(out)
    assert t.convert_tokens_to_ids("<IMG_CONTEXT>") == load_internvl(src).info.img_context_token_id
    assert t("hello world")["input_ids"][0] == t.convert_tokens_to_ids("<s>")  # InternLM2 starts with BOS
    assert len(t) == load_internvl(src).model.config.text_config.vocab_size  # no token added on the way
