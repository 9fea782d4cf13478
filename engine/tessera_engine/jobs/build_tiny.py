"""Build a tiny random InternVL2 model folder (original format) for tests and the demo.

Job fields: out (required), and any keyword of tessera_engine.model.tiny.build_tiny
(llm, vision, tokenizer_json, template, tile_size, patch_size, hidden sizes/layers, seed...).
"""

from __future__ import annotations

import inspect

from ..protocol import emit


def run(job: dict) -> dict:
    from ..model.load import read_original_config, read_special_tokens
    from ..model.tiny import build_tiny

    allowed = set(inspect.signature(build_tiny).parameters) - {"out_dir"}
    args = {k: v for k, v in job.items() if k in allowed}
    unknown = sorted(set(job) - allowed - {"kind", "protocol", "out"})
    if unknown:
        raise ValueError(f"build-tiny: unknown field(s) {unknown}; known: {sorted(allowed | {'out'})}")
    if not job.get("out"):
        raise ValueError("build-tiny: 'out' (the folder to write) is required")
    emit("progress", stage="build-tiny", message=f"writing {job['out']}")
    out = build_tiny(job["out"], **args)
    cfg = read_original_config(out)
    special = read_special_tokens(out)
    return {
        "folder": str(out),
        "template": cfg["template"],
        "llm": args.get("llm", "qwen2"),
        "vision": args.get("vision", "300m"),
        "tile_size": cfg["force_image_size"],
        "vocab_size": cfg["llm_config"]["vocab_size"],
        "img_context_token_id": special["<IMG_CONTEXT>"],
    }
