"""InternVL2 in PyTorch on transformers' native classes (see docs/model.md).

    load_internvl(folder, dtype, device)            -> LoadedModel(.model, .info)      load.py
    packed_forward(model, input_ids, ...)           -> PackedOutput                   packed.py
    generate(model, prompts, pixel_values, ...)     -> new token ids per prompt       packed.py
    reduce_loss(token_losses, sample_index, mode, global_norm)                        loss.py
    global_norm_from_counts(per-sample learned counts, all_reduce)                     loss.py
    export_original(loaded, out_dir, source_folder, dtype) / export_native(...)      export.py
    write_processor(source, out_dir, config)   processor files of a native export      processor.py
    build_tiny(out_dir, llm=..., vision=..., ...)                                     tiny.py
"""

from __future__ import annotations

_EXPORTS = {
    "load_internvl": "load", "LoadedModel": "load", "ModelInfo": "load",
    "packed_forward": "packed", "PackedOutput": "packed", "generate": "packed",
    "reduce_loss": "loss", "GlobalNorm": "loss", "global_norm_from_counts": "loss", "token_weights": "loss",
    "export_original": "export", "export_native": "export",
    "build_tiny": "tiny",
}


def __getattr__(name: str):
    # Lazy, so importing the package does not pay for torch/transformers until something is used.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)


__all__ = sorted(_EXPORTS)
