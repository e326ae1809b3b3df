"""``EPTTrainer`` and ``EPTSeq2SeqTrainer``: transformers' Trainers for an ``EPTModel``.

What they change: the optimizer has DePT's two learning-rate groups (``EPTModel.param_groups``:
``args.learning_rate`` for the prompt and head, ``lowrank_learning_rate`` for A, B and EPT's
fusion, projections and gate); a checkpoint or ``save_model`` writes the adapter's files only
(``adapter_config.json``, ``adapter_model.safetensors``), never the backbone; resuming and
``load_best_model_at_end`` read those files back."""

from __future__ import annotations

import os
from typing import Optional

import torch
from transformers import Seq2SeqTrainer, Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from .model import EPTModel
from .serialization import load_adapter

DEFAULT_LOWRANK_LEARNING_RATE = 1e-3  # the command line's default for every method (docs/results.md)


class _EPTTrainerMixin:
    def __init__(self, *args, lowrank_learning_rate: float = DEFAULT_LOWRANK_LEARNING_RATE, **kwargs):
        self.lowrank_learning_rate = lowrank_learning_rate
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, EPTModel):
            raise TypeError(f"model: {type(self).__name__} trains an EPTModel (get_ept_model), got "
                            f"{type(self.model).__name__}")

    def create_optimizer(self, model=None):
        """The Trainer's optimizer class and settings (``args.optim``), over the two groups."""
        if self.optimizer is None:
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)  # each group carries its own
            groups = self.model.param_groups(self.args.learning_rate, self.lowrank_learning_rate)
            for group in groups:
                group["weight_decay"] = self.args.weight_decay
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        model.load_adapter_state_dict(load_adapter(resume_from_checkpoint).tensors, str(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


class EPTTrainer(_EPTTrainerMixin, Trainer):
    """``transformers.Trainer`` for an ``EPTModel``; ``lowrank_learning_rate`` sets the second group."""


class EPTSeq2SeqTrainer(_EPTTrainerMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` for an ``EPTModel`` (``predict_with_generate`` uses its ``generate``)."""
