"""EPT on a frozen Hugging Face backbone: ``get_ept_model`` and ``EPTModel`` (PEFT-style API)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .config import EPTConfig, PromptInit, TaskType, infer_task_type
from .prompt_encoder import EPTPromptEncoder
from .serialization import load_adapter, save_adapter

logger = logging.getLogger(__name__)

_DEFAULT_HEADS = ("classifier", "score")  # PEFT's automatic modules_to_save for SEQ_CLS
_FAST = "prompt_encoder.prompt"  # the soft prompt itself trains at lr_prompt, with any head


def _input_embeddings(model: nn.Module) -> nn.Embedding:
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    if not isinstance(embeddings, nn.Embedding):
        raise ValueError(
            f"model: expected a backbone whose get_input_embeddings() returns an nn.Embedding, "
            f"got {type(embeddings).__name__} from {type(model).__name__}"
        )
    if type(embeddings).forward is not nn.Embedding.forward:
        raise ValueError(
            f"model: its input embedding {type(embeddings).__name__} changes the lookup (for example by "
            f"scaling it); ept_fast assembles inputs from the plain table and does not support it yet"
        )
    return embeddings


class EPTModel(nn.Module):
    """A frozen backbone with an EPT prompt in front of its input.

    Forwards the keyword arguments the backbone takes; ``input_ids`` is required (the prompt
    and the low-rank update are built from it). Build with ``get_ept_model`` or
    ``EPTModel.from_pretrained``.
    """

    def __init__(self, model: nn.Module, config: EPTConfig, tokenizer=None, initialize_prompt: bool = True) -> None:
        super().__init__()
        embeddings = _input_embeddings(model)
        self.base_model = model
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        task_type = config.task_type or infer_task_type(model)
        self.heads: List[str] = self._find_heads(config.modules_to_save) if task_type is TaskType.SEQ_CLS else []
        for head in self.heads:
            model.get_submodule(head).requires_grad_(True)
        name = getattr(getattr(model, "config", None), "name_or_path", None) or None
        config = dataclasses.replace(config, task_type=task_type, modules_to_save=self.heads or config.modules_to_save,
                                     base_model_name_or_path=config.base_model_name_or_path or name)
        if initialize_prompt and config.prompt_init is PromptInit.TEXT and tokenizer is None:
            tokenizer = _load_tokenizer(config)
        # The encoder completes token_dim from the table (and checks a given one against it).
        self.prompt_encoder = EPTPromptEncoder(config, embeddings, tokenizer, initialize_prompt).to(
            embeddings.weight.device
        )
        self.config = self.prompt_encoder.config
        # The data the adapter is for (name, label names, metrics), saved with it when known.
        self.task_metadata: Optional[dict] = None
        self._merged_prompt: Optional[torch.Tensor] = None

    def _find_heads(self, modules_to_save: Optional[List[str]]) -> List[str]:
        names = modules_to_save or [n for n in _DEFAULT_HEADS if hasattr(self.base_model, n)]
        missing = [n for n in names if not isinstance(getattr(self.base_model, n, None), nn.Module)]
        if not names or missing:
            raise ValueError(
                f"modules_to_save: SEQ_CLS trains the classification head, but {type(self.base_model).__name__} "
                f"has no module {missing or list(_DEFAULT_HEADS)}; name the head in EPTConfig(modules_to_save=[...])"
            )
        return list(names)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # ------------------------------------------------------------------ inputs
    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.base_model.get_input_embeddings()

    def ept_prompt(self) -> torch.Tensor:
        """P* (m, d): the cached copy after ``merge_prompt()``, else computed now."""
        return self._merged_prompt if self._merged_prompt is not None else self.prompt_encoder()

    def assemble_inputs(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The backbone's ``inputs_embeds`` (b, m+T, d) and ``attention_mask`` (b, m+T)."""
        return self.prompt_encoder.assemble_inputs(input_ids, attention_mask, self.word_embeddings,
                                                   prompt_out=self.ept_prompt())

    def _check_inputs(self, input_ids, inputs_embeds) -> None:
        if inputs_embeds is not None:
            raise ValueError(
                "inputs_embeds: EPT builds the backbone's inputs_embeds from input_ids (prompt prefix + low-rank "
                "update); pass input_ids only, not both"
                if input_ids is not None else
                "inputs_embeds: EPT needs input_ids to build the prompted input; pass input_ids instead"
            )
        if input_ids is None:
            raise ValueError("input_ids: required (EPT builds the prompted input from it)")

    def _drop_unsupported(self, kwargs: dict) -> None:
        if kwargs.pop("position_ids", None) is not None:
            logger.warning("position_ids: ignored, as PEFT does for prompt tuning (the prompt shifts every position)")

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        self._check_inputs(input_ids, inputs_embeds)
        self._drop_unsupported(kwargs)
        embeds, mask = self.assemble_inputs(input_ids, attention_mask)
        m = self.config.num_virtual_tokens
        task = self.config.task_type
        if task is TaskType.CAUSAL_LM and labels is not None:
            labels = torch.cat([labels.new_full((labels.shape[0], m), -100), labels], dim=1)
        if task is not TaskType.SEQ_2_SEQ_LM and kwargs.get("token_type_ids") is not None:
            token_types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([token_types.new_zeros((token_types.shape[0], m)), token_types], 1)
        if labels is not None:
            kwargs["labels"] = labels
        return self.base_model(inputs_embeds=embeds, attention_mask=mask, **kwargs)

    @torch.no_grad()
    def generate(self, **kwargs):
        """Generation with the same prefix as ``forward`` (PEFT's keyword-only form: ``input_ids=``
        is required). Seq2seq models return the decoder's tokens; causal LMs return ``input_ids``
        followed by the new tokens, as the backbone's own ``generate(input_ids=...)`` does."""
        task = self.config.task_type
        if task not in (TaskType.SEQ_2_SEQ_LM, TaskType.CAUSAL_LM):
            raise ValueError(f"generate: needs task_type SEQ_2_SEQ_LM or CAUSAL_LM, this model is {task.value}")
        kwargs = dict(kwargs)
        input_ids = kwargs.pop("input_ids", None)
        self._check_inputs(input_ids, kwargs.pop("inputs_embeds", None))
        self._drop_unsupported(kwargs)
        if kwargs.pop("encoder_outputs", None) is not None:
            logger.warning("encoder_outputs: ignored; the encoder runs on the prompted input")
        embeds, mask = self.assemble_inputs(input_ids, kwargs.pop("attention_mask", None))
        output = self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        if task is TaskType.CAUSAL_LM:
            sequences = output.sequences if hasattr(output, "sequences") else output
            beams = sequences.shape[0] // input_ids.shape[0]
            sequences = torch.cat([input_ids.repeat_interleave(beams, dim=0), sequences], dim=1)
            if hasattr(output, "sequences"):
                output.sequences = sequences
                return output
            return sequences
        return output

    # ---------------------------------------------------------- prompt caching
    @torch.no_grad()
    def merge_prompt(self) -> None:
        """Compute P* once and reuse it (inference): generation then skips the prompt generator."""
        self._merged_prompt = self.prompt_encoder().detach()

    def unmerge_prompt(self) -> None:
        self._merged_prompt = None

    def train(self, mode: bool = True):
        if mode:
            self.unmerge_prompt()  # a cached P* would go stale as the parameters train
        return super().train(mode)

    # ------------------------------------------------------ parameters (PEFT)
    def get_nb_trainable_parameters(self) -> Tuple[int, int]:
        """(trainable parameters, all parameters), backbone included."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def param_groups(self, lr_prompt: float, lr_lowrank: float) -> List[dict]:
        """Optimizer groups for DePT's two learning rates: the soft prompt P and any trained head
        at ``lr_prompt``; the low-rank pair A, B, and EPT's fusion scale, projections and gate at
        ``lr_lowrank``. (EPT's extra parts at the prompt's rate made it unstable and worse than
        DePT on the MiniLM tasks of docs/results.md; at the low-rank rate it wins there.)"""
        slow = [p for n, p in self.prompt_encoder.named_parameters() if p.requires_grad and f"prompt_encoder.{n}" != _FAST]
        fast = [p for p in self.parameters() if p.requires_grad and all(p is not q for q in slow)]
        return [g for g in ({"params": fast, "lr": lr_prompt}, {"params": slow, "lr": lr_lowrank}) if g["params"]]

    # ----------------------------------------------------------- save / load
    def adapter_state_dict(self) -> Dict[str, torch.Tensor]:
        """The tensors an adapter file holds: the eight encoder parameters (fp32) and the heads."""
        tensors = {f"prompt_encoder.{name}": p.detach().float() for name, p in self.prompt_encoder.named_parameters()}
        for head in self.heads:
            for name, tensor in self.base_model.get_submodule(head).state_dict().items():
                tensors[f"base_model.{head}.{name}"] = tensor.detach()
        return tensors

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (each written, then renamed)."""
        save_adapter(save_directory, self.config.to_dict(), self.adapter_state_dict(), task=self.task_metadata)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, model_id: Union[str, os.PathLike], is_trainable: bool = False
    ) -> "EPTModel":
        """Load an adapter saved by ``save_pretrained`` onto ``model`` (a local folder)."""
        files = load_adapter(model_id)
        wrapper = cls(model, EPTConfig.from_dict(files.config), initialize_prompt=False)  # the saved tensors replace
        wrapper.load_adapter_state_dict(files.tensors, str(model_id))  # the initial prompt
        wrapper.task_metadata = files.task
        if not is_trainable:
            for parameter in wrapper.parameters():
                parameter.requires_grad_(False)
            wrapper.eval()
            wrapper.merge_prompt()
        return wrapper

    def load_adapter_state_dict(self, tensors: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load tensors in the form of ``adapter_state_dict()``; shapes and names are checked."""
        self.unmerge_prompt()  # a cached P* would belong to the old parameters
        expected = self.adapter_state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(f"adapter {source}: tensors do not match this model (missing {missing}, "
                             f"unexpected {unexpected})")
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(
                    f"adapter {source}: {name} has shape {tuple(tensor.shape)}, but this backbone needs "
                    f"{tuple(expected[name].shape)} (was it saved for a backbone of another hidden size?)"
                )
        with torch.no_grad():
            for name, parameter in self.prompt_encoder.named_parameters():
                parameter.copy_(tensors[f"prompt_encoder.{name}"])
            for head in self.heads:
                module = self.base_model.get_submodule(head)
                prefix = f"base_model.{head}."
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def _load_tokenizer(config: EPTConfig):
    source = config.tokenizer_name_or_path or config.base_model_name_or_path
    if not source:
        raise ValueError(
            "tokenizer: prompt_init='TEXT' tokenizes prompt_init_text, but no tokenizer was given; pass "
            "tokenizer= to get_ept_model, set EPTConfig(tokenizer_name_or_path=...), or use prompt_init='RANDOM_VOCAB'"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def get_ept_model(model: nn.Module, config: EPTConfig, tokenizer=None) -> EPTModel:
    """Wrap ``model`` (frozen) with a new EPT adapter built from ``config``; ``token_dim`` and,
    when unset, ``task_type`` come from the model. ``prompt_init='TEXT'`` uses ``tokenizer``, or
    loads one from ``config.tokenizer_name_or_path`` (else the model's name)."""
    return EPTModel(model, copy.deepcopy(config), tokenizer=tokenizer)
