"""LoRA through PEFT on transformers' native InternVL classes.

Training injects PEFT's LoRA layers in place (`inject_adapter_in_model`): the model stays an
InternVLForConditionalGeneration, a LoRA'd Linear keeps its weight as `….base_layer.weight`
and adds `….lora_A.default.weight` / `….lora_B.default.weight` (DoRA: `….lora_magnitude_vector…`).
One LoraConfig covers both towers: the language model's rank/alpha as the default, the vision
tower's through PEFT's rank/alpha patterns. rsLoRA, DoRA and dropout are PEFT's own.

Exports go through a PeftModel on a fresh base with the trained values: `save_pretrained` writes a
standard adapter (with `modules_to_save` carrying every part trained in full, e.g. the projector)
that `PeftModel.from_pretrained` applies to the native base, and `merge_and_unload` gives the plain
model for merged exports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

LLM = "model.language_model"
VIT = "model.vision_tower"
# Parts of the model that are trained whole or not at all, by their module names.
PARTS = {"vit": [VIT], "mlp": ["model.multi_modal_projector"], "llm": [LLM, "lm_head"]}


@dataclass
class LoraSpec:
    llm_rank: int = 0
    llm_alpha: float | None = None
    llm_targets: tuple[str, ...] = ()
    vit_rank: int = 0
    vit_alpha: float | None = None
    vit_targets: tuple[str, ...] = ()
    dropout: float = 0.0
    rslora: bool = False
    dora: bool = False

    @property
    def active(self) -> bool:
        return self.llm_rank > 0 or self.vit_rank > 0


def _target_regex(prefix: str, names: tuple[str, ...]) -> str:
    return rf"{re.escape(prefix)}\..*\.(?:{'|'.join(re.escape(n) for n in names)})"


def lora_config(spec: LoraSpec, modules_to_save: list[str] | None = None):
    """One PEFT LoraConfig for both towers, or None when LoRA is off."""
    from peft import LoraConfig

    if not spec.active:
        return None
    parts = []
    if spec.llm_rank > 0:
        if not spec.llm_targets:
            raise ValueError("llm_lora_targets is empty")
        parts.append(_target_regex(LLM, spec.llm_targets))
    if spec.vit_rank > 0:
        if not spec.vit_targets:
            raise ValueError("vit_lora_targets is empty")
        parts.append(_target_regex(VIT, spec.vit_targets))
    llm_alpha = spec.llm_alpha or 2 * spec.llm_rank
    vit_alpha = spec.vit_alpha or 2 * spec.vit_rank
    r, alpha = (spec.llm_rank, llm_alpha) if spec.llm_rank > 0 else (spec.vit_rank, vit_alpha)
    rank_pattern, alpha_pattern = {}, {}
    if spec.llm_rank > 0 and spec.vit_rank > 0:
        key = rf"{re.escape(VIT)}\..*"
        rank_pattern[key] = spec.vit_rank
        alpha_pattern[key] = vit_alpha
    return LoraConfig(
        r=r, lora_alpha=alpha, target_modules="|".join(f"(?:{p})" for p in parts), lora_dropout=spec.dropout,
        use_rslora=spec.rslora, use_dora=spec.dora, bias="none", rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern, modules_to_save=modules_to_save or None,
    )


def apply_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Inject the LoRA layers in place; returns the names of the adapted Linear layers.

    PEFT leaves only the adapters trainable; the caller sets the other parts' trainability after."""
    from peft import inject_adapter_in_model

    cfg = lora_config(spec)
    if cfg is None:
        return []
    before = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    try:
        inject_adapter_in_model(cfg, model)
    except ValueError as e:  # PEFT: "Target modules ... not found in the base model"
        raise ValueError(f"LoRA targets match no linear layer: {e}") from None
    return sorted(n for n in lora_layers(model) if n in before)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def is_lora_param(name: str) -> bool:
    return ".lora_" in name


def full_parts(frozen: dict[str, bool], spec: LoraSpec) -> list[str]:
    """Module names of the parts trained in full (not frozen, no LoRA inside): PEFT's modules_to_save."""
    adapted = {"vit": spec.vit_rank > 0, "llm": spec.llm_rank > 0, "mlp": False}
    return [m for part, names in PARTS.items() if not frozen[part] and not adapted[part] for m in names]


def peft_model_from_trained(base: nn.Module, sd: dict[str, torch.Tensor], spec: LoraSpec,
                            modules_to_save: list[str]):
    """A PeftModel on `base` (a fresh model of the source) holding the trained values of `sd`
    (the training model's state dict: LoRA layers injected, fully trained parts in place)."""
    from peft import get_peft_model

    cfg = lora_config(spec, modules_to_save)
    peft = get_peft_model(base, cfg)
    inner = peft.base_model.model
    own = inner.state_dict()
    wrapped = tuple(f"{m}." for m in modules_to_save)
    values = {}
    for k, v in sd.items():
        if k.startswith(wrapped) or k in modules_to_save:
            m = next(p for p in modules_to_save if k.startswith(f"{p}."))
            rest = k[len(m) + 1:]
            values[f"{m}.modules_to_save.default.{rest}"] = v
            values[f"{m}.original_module.{rest}"] = own[f"{m}.original_module.{rest}"]
        else:
            values[k] = v
    tied = getattr(inner.config, "tie_word_embeddings", False)
    missing = [k for k in set(own) - set(values) if not (tied and "lm_head" in k)]
    unexpected = sorted(set(values) - set(own))
    if missing or unexpected:
        raise KeyError(f"trained weights do not match the LoRA model: missing {sorted(missing)[:5]}, "
                       f"unexpected {unexpected[:5]}")
    inner.load_state_dict(values, strict=False)
    return peft


def save_adapter(peft, folder: str, base_model: str) -> None:
    """PEFT's own adapter files: adapter_config.json + adapter_model.safetensors."""
    peft.peft_config["default"].base_model_name_or_path = base_model
    peft.save_pretrained(folder)
