"""DePT's two learning rates as optimizer groups, for ``EPTTrainer`` and ``ept-fast train``."""

from __future__ import annotations

from typing import List

from .model import EPTModel


def param_groups(model: EPTModel, lr_prompt: float, lr_lowrank: float) -> List[dict]:
    """Optimizer groups for the adapters of ``model`` that train (the active one, or those of
    ``set_trainable_adapters``): each one's soft prompt P and head at ``lr_prompt``; its low-rank
    pair A, B, and EPT's fusion scale, projections and gate at ``lr_lowrank``. (EPT's extra parts
    at the prompt's rate made it unstable and worse than DePT on the MiniLM tasks of
    docs/results.md.) Only parameters that train are in a group; an empty group is left out."""
    slow = [p for encoder in model.prompt_encoders.values() for n, p in encoder.named_parameters()
            if p.requires_grad and n != "prompt"]
    fast = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in slow)]
    return [g for g in ({"params": fast, "lr": lr_prompt}, {"params": slow, "lr": lr_lowrank}) if g["params"]]
