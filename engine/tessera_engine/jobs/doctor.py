"""Report what the engine's environment has: versions, devices, whether it imports."""

from __future__ import annotations

import platform


def run(job: dict) -> dict:
    import torch

    info: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    try:
        import transformers

        info["transformers"] = transformers.__version__
        from transformers import InternVLForConditionalGeneration  # noqa: F401

        info["native_internvl"] = True
    except Exception as e:  # reported, not raised: doctor explains what is missing
        info["transformers_error"] = f"{type(e).__name__}: {e}"
    try:
        import flash_attn  # noqa: F401

        info["flash_attn"] = flash_attn.__version__
    except Exception:
        info["flash_attn"] = None
    return info
