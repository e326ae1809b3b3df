"""``EPTTrainer`` and ``EPTSeq2SeqTrainer``: transformers' Trainers for an ``EPTModel``.

What they change: the optimizer has DePT's two learning-rate groups (``ept_fast.param_groups``:
``args.learning_rate`` for the prompt and head, ``lowrank_learning_rate`` for A, B and EPT's
fusion, projections and gate); a checkpoint or ``save_model`` writes the adapter's files only
(``adapter_config.json``, ``adapter_model.safetensors``), never the backbone; resuming and
``load_best_model_at_end`` read those files back."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Optional

import torch
from transformers import Seq2SeqTrainer, Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from .adapters import adapter_subfolder
from .config import Method, Readout, TaskType
from .heads import mean_over_attended
from .layout import PromptLayout
from .model import EPTModel
from .optimizer import param_groups
from .serialization import load_adapter

DEFAULT_LOWRANK_LEARNING_RATE = 1e-3  # the command line's default for every method (docs/results.md)
SPREAD_WEIGHT = 25.0  # VICReg's weight of its variance term, the spread floor's
logger = logging.getLogger(__name__)


def spread_shortfall(read: torch.Tensor, frozen: torch.Tensor, floor: float) -> torch.Tensor:
    """VICReg's variance term: the mean over the d dimensions of max(0, floor · std(frozen) −
    std(read)), each std over the batch's rows (read, frozen: (b, d), b ≥ 2)."""
    return torch.relu(floor * frozen.float().std(0) - read.float().std(0)).mean()


def frozen_sentence_embedding(model: EPTModel, inputs: dict) -> torch.Tensor:
    """(b, d): the frozen encoder's mean over each row's real tokens, without any adapter, no
    gradient (the encoder alone, as the linear probe reads it: no pooler or head, and only the
    last layer's hidden states kept)."""
    mask = inputs.get("attention_mask")
    extra = {"token_type_ids": inputs["token_type_ids"]} if inputs.get("token_type_ids") is not None else {}
    with torch.no_grad():
        hidden = model.get_base_model().base_model(input_ids=inputs["input_ids"], attention_mask=mask,
                                                  **extra).last_hidden_state
    return mean_over_attended(hidden, mask)


class _EPTTrainerMixin:
    def __init__(self, *args, lowrank_learning_rate: float = DEFAULT_LOWRANK_LEARNING_RATE,
                 spread_floor: float = 0.0, **kwargs):
        self.lowrank_learning_rate = lowrank_learning_rate
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, EPTModel):
            raise TypeError(f"model: {type(self).__name__} trains an EPTModel (get_ept_model), got "
                            f"{type(self.model).__name__}")
        self.spread_floor = check_spread_floor(self.model, spread_floor)
        if self.spread_floor and self.args.n_gpu > 1:  # one process, several GPUs: the head runs once per replica
            raise ValueError(f"spread_floor: measures the spread over one batch on one device; this process drives "
                             f"{self.args.n_gpu} GPUs (DataParallel): run one process per GPU (torchrun, accelerate "
                             f"launch), or set it to 0")
        if self.spread_floor and self.args.per_device_train_batch_size < 2:
            logger.warning("spread_floor %g: measures the spread over each batch's rows, so with "
                           "per_device_train_batch_size %d it never applies; raise the batch size, or set it to 0",
                           self.spread_floor, self.args.per_device_train_batch_size)
        # EPTModel.forward takes **kwargs, so Trainer would pass the batch's token count
        # (num_items_in_batch) for the loss to divide by; a causal LM's loss does, a classifier's and
        # T5's are means: for those Trainer divides by the accumulation steps, and an accumulated step
        # equals the whole batch.
        if self.model.task_type is not TaskType.CAUSAL_LM:
            self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        """The optimizer of ``optimizer_cls_and_kwargs`` or ``args.optim``, over the two groups."""
        if self.optimizer is None:
            ept = self.accelerator.unwrap_model(model if model is not None else self.model)
            if getattr(self, "optimizer_cls_and_kwargs", None) is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
                optimizer_kwargs = dict(optimizer_kwargs)
            else:
                optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, ept)
            optimizer_kwargs.pop("lr", None)  # each group carries its own
            groups = param_groups(ept, self.args.learning_rate, self.lowrank_learning_rate)
            for group in groups:
                group["weight_decay"] = self.args.weight_decay
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        if not self.args.should_save:  # as Trainer._save: only the process that saves writes
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the columns the backbone takes (``token_type_ids``, …), not only EPTModel.forward's."""
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            backbone = inspect.signature(self.accelerator.unwrap_model(self.model).get_base_model().forward)
            self._signature_columns += [name for name in backbone.parameters if name not in self._signature_columns]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss; with ``spread_floor``, while training, plus ``SPREAD_WEIGHT`` times the
        shortfall of the spread of what the active adapter's head reads below ``spread_floor``
        times the frozen backbone's (``spread_shortfall``, a batch of two rows or more)."""
        ept = self.accelerator.unwrap_model(model)
        if not (self.spread_floor and ept.training and inputs["input_ids"].shape[0] > 1):
            return self._loss(model, inputs, return_outputs, num_items_in_batch)
        read = []
        head = ept.head_copies[ept.active_adapter][0]
        handle = head.register_forward_hook(lambda module, args, output: read.append(args[0]))
        try:
            loss, outputs = self._loss(model, inputs, True, num_items_in_batch)
        finally:
            handle.remove()
        loss = loss + SPREAD_WEIGHT * spread_shortfall(read[-1], frozen_sentence_embedding(ept, inputs),
                                                       self.spread_floor)
        return (loss, outputs) if return_outputs else loss

    def _loss(self, model, inputs, return_outputs, num_items_in_batch):
        """A causal LM's logits include the m prompt positions: a loss the Trainer computes itself
        (label smoothing, ``compute_loss_func``) gets labels padded with -100 over them, as the
        model's own loss has, and shifted as for any causal LM."""
        ept = self.accelerator.unwrap_model(model)
        own_loss = self.label_smoother is not None or self.compute_loss_func is not None
        if ept.task_type is not TaskType.CAUSAL_LM or not own_loss or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        labels = PromptLayout(ept.active_peft_config.num_virtual_tokens, labels.shape[1]).place(labels, -100)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        else:
            loss = self.label_smoother(outputs, labels, shift_labels=True)
        return (loss, outputs) if return_outputs else loss

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Read the active adapter's files back (where ``save_pretrained`` put them)."""
        model = self.accelerator.unwrap_model(model or self.model)
        folder = adapter_subfolder(resume_from_checkpoint, model.active_adapter)
        model.load_adapter_state_dict(load_adapter(folder).tensors, str(folder))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


def check_spread_floor(model: EPTModel, floor) -> float:
    """``floor`` (0: off) as a float, for a model whose head reads the mean over the real tokens:
    an encoder classifier with the readout ``mean`` or ``sentence_embedding``, and a prompt or a
    low-rank update that can change what it reads."""
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < float("inf"):
        raise ValueError(f"spread_floor: expected a number >= 0 (0: off), got {floor!r}")
    config = model.active_peft_config
    if floor and (model.task_type is not TaskType.SEQ_CLS or config.readout not in (Readout.MEAN,
                                                                                     Readout.SENTENCE_EMBEDDING)):
        raise ValueError(f"spread_floor: compares what an encoder classifier's head reads, the mean over the real "
                         f"tokens, with the frozen backbone's; this adapter is {model.task_type.value} with readout "
                         f"{config.readout.value!r}")
    if floor and config.method is Method.HEAD:
        raise ValueError("spread_floor: the head alone reads the frozen backbone's features, whose spread nothing "
                         "trains; leave it at 0")
    return float(floor)


class EPTTrainer(_EPTTrainerMixin, Trainer):
    """``transformers.Trainer`` for an ``EPTModel``; ``lowrank_learning_rate`` sets the second group,
    ``spread_floor`` (0: off) a floor under the spread of what a classifier's head reads
    (``compute_loss``; docs/results.md)."""


class EPTSeq2SeqTrainer(_EPTTrainerMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` for an ``EPTModel`` (``predict_with_generate`` uses its ``generate``)."""
