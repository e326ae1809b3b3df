"""EPT on a frozen Hugging Face backbone: ``get_ept_model`` and ``EPTModel`` (PEFT's model API:
named adapters, ``disable_adapter``, ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import EPTConfig, PromptInit, Readout, TaskType, infer_task_type
from .heads import (
    head_copy, heads_replaced, hooked, last_attended_pooled, read_out, rowwise, sequence_output_module, together,
)
from .hub import CARD_NAME, adapter_folder, model_card, push_folder
from .interop import dept_checkpoint, export_peft_prompt_tuning
from .prompt_encoder import EPTPromptEncoder, assemble_mixed_inputs, embedding_scale
from .serialization import AdapterFiles, load_adapter as read_adapter, save_adapter

logger = logging.getLogger(__name__)

DEFAULT_ADAPTER = "default"
_ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]+")  # also a folder name in save_pretrained


_DEFAULT_HEADS = ("classifier", "score")  # PEFT's automatic modules_to_save for SEQ_CLS
# Adapter and hub methods of PEFT and transformers that EPTModel does not have: they must never
# reach the backbone through __getattr__ (its push_to_hub would upload the whole model).
_NOT_FORWARDED = frozenset({
    "active_adapters", "add_weighted_adapter", "create_or_update_model_card", "delete_adapters", "disable_adapters",
    "enable_adapters", "enable_peft_hotswap", "get_adapter_state_dict", "get_prompt", "get_prompt_embedding_to_save",
    "merge_adapter", "merge_and_unload", "set_additional_trainable_modules", "unload", "unmerge_adapter",
    "_hf_peft_config_loaded", "_dispatch_accelerate_model", "_prepare_peft_hotswap_kwargs",
})


def check_adapter_name(name, argument: str = "adapter_name") -> None:
    """An adapter's name: letters, digits, '_' or '-', and not an attribute of nn.ModuleDict."""
    if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name) or hasattr(nn.ModuleDict(), name):
        raise ValueError(f"{argument}: expected letters, digits, '_' or '-' (and not an attribute of "
                         f"nn.ModuleDict), got {name!r}")


def _input_embeddings(model: nn.Module) -> nn.Embedding:
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    if not isinstance(embeddings, nn.Embedding):
        raise ValueError(
            f"model: expected a backbone whose get_input_embeddings() returns an nn.Embedding, "
            f"got {type(embeddings).__name__} from {type(model).__name__}"
        )
    embedding_scale(embeddings)  # a lookup that does more than scale is refused here
    return embeddings


class EPTModel(nn.Module):
    """A frozen backbone with an EPT prompt in front of its input.

    Holds one or more named adapters (``peft_config[name]``, ``prompt_encoders[name]``, and for
    a classifier a copy of the head each); ``active_adapter`` is the one ``forward`` and
    ``generate`` use. Only the active adapter's parameters train, and only if it was created
    or loaded trainable. Build with ``get_ept_model`` or ``EPTModel.from_pretrained``.

    Forwards the keyword arguments the backbone takes; ``input_ids`` is required (the prompt
    and the low-rank update are built from it).
    """

    def __init__(self, model: nn.Module, config: EPTConfig, tokenizer=None, initialize_prompt: bool = True,
                 adapter_name: str = DEFAULT_ADAPTER) -> None:
        super().__init__()
        _input_embeddings(model)
        self.base_model = model
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.task_type = config.task_type or infer_task_type(model)
        self.prompt_encoders = nn.ModuleDict()
        self.peft_config: Dict[str, EPTConfig] = {}
        self.heads: List[str] = []  # the backbone's trained head modules (SEQ_CLS); each adapter has copies
        self.head_copies = nn.ModuleDict()  # adapter name -> its copies, in the order of self.heads
        self.adapter_task_metadata: Dict[str, Optional[dict]] = {}
        self._trainable: Dict[str, bool] = {}
        self._merged_prompts: Dict[str, torch.Tensor] = {}
        self._active_adapter = adapter_name
        self._adapters_disabled = False
        self._create_adapter(adapter_name, config, tokenizer, initialize_prompt)
        self.set_adapter(adapter_name)

    # ------------------------------------------------------------ adapters
    def _create_adapter(self, name: str, config: EPTConfig, tokenizer, initialize_prompt: bool) -> None:
        check_adapter_name(name)
        if name in self.peft_config:
            raise ValueError(f"adapter_name: an adapter named {name!r} exists already; delete_adapter it first")
        task_type = config.task_type or self.task_type
        if task_type is not self.task_type:
            raise ValueError(f"config.task_type: this model's adapters are {self.task_type.value}, got {task_type.value}")
        heads = self._find_heads(config.modules_to_save) if task_type is TaskType.SEQ_CLS else []
        if self.heads and heads != self.heads:
            raise ValueError(f"config.modules_to_save: this model's adapters train {self.heads}, got {heads}")
        embeddings = self.word_embeddings
        name_or_path = getattr(getattr(self.base_model, "config", None), "name_or_path", None) or None
        config = dataclasses.replace(config, task_type=task_type, modules_to_save=heads or config.modules_to_save,
                                     base_model_name_or_path=config.base_model_name_or_path or name_or_path)
        if config.readout is not Readout.BACKBONE:
            if "score" in heads:
                raise ValueError(f"readout: a decoder classifier (head 'score') reads each row's last token; "
                                 f"{config.readout.value!r} is for encoder classifiers, use 'backbone'")
            sequence_output_module(self.base_model)  # an encoder whose output can be read out
        if initialize_prompt and config.prompt_init is PromptInit.TEXT and tokenizer is None \
                and config.num_virtual_tokens > 0:
            tokenizer = _load_tokenizer(config)
        # The encoder completes token_dim from the table (and checks a given one against it).
        encoder = EPTPromptEncoder(config, embeddings, tokenizer, initialize_prompt).to(embeddings.weight.device)
        self.prompt_encoders[name] = encoder
        self.peft_config[name] = encoder.config
        self.heads = heads
        self.head_copies[name] = nn.ModuleList(head_copy(self.base_model.get_submodule(head)) for head in heads)
        self.adapter_task_metadata[name] = None
        self._trainable[name] = True

    def _find_heads(self, modules_to_save: Optional[List[str]]) -> List[str]:
        names = modules_to_save or [n for n in _DEFAULT_HEADS if hasattr(self.base_model, n)]
        missing = [n for n in names if not isinstance(getattr(self.base_model, n, None), nn.Module)]
        if not names or missing:
            raise ValueError(
                f"modules_to_save: SEQ_CLS trains the classification head, but {type(self.base_model).__name__} "
                f"has no module {missing or list(_DEFAULT_HEADS)}; name the head in EPTConfig(modules_to_save=[...])"
            )
        return list(names)

    def _heads_routed(self, replacements: Sequence, attention_mask: torch.Tensor):
        """While the backbone runs for this model its heads answer with ``replacements`` (the
        adapters' copies), and a decoder classifier's head, ``score``, also pools each row's last
        attended position of ``attention_mask`` (``heads.last_attended_pooled``): right-padded rows
        classify as they do unpadded."""
        replacements = [last_attended_pooled(replacement, attention_mask) if head == "score" else replacement
                        for head, replacement in zip(self.heads, replacements)]
        return heads_replaced([self.base_model.get_submodule(head) for head in self.heads], replacements)

    def _check_adapter(self, name: str) -> None:
        if name not in self.peft_config:
            raise ValueError(f"adapter_name: no adapter named {name!r}; this model has {sorted(self.peft_config)}")

    def add_adapter(self, adapter_name: str, config: EPTConfig, tokenizer=None) -> None:
        """Add a new, trainable adapter built from ``config`` (not made active: see ``set_adapter``)."""
        self._create_adapter(adapter_name, copy.deepcopy(config), tokenizer, initialize_prompt=True)
        self.set_adapter(self._active_adapter)

    def load_adapter(self, model_id: Union[str, os.PathLike], adapter_name: str, is_trainable: bool = False,
                     revision: Optional[str] = None, subfolder: Optional[str] = None,
                     token: Optional[str] = None) -> None:
        """Load a saved adapter (a local folder or a hub id) as ``adapter_name``, beside the others
        (not made active: see ``set_adapter``)."""
        folder = adapter_folder(model_id, revision=revision, subfolder=subfolder, token=token)
        files = read_adapter(folder)
        self._create_adapter(adapter_name, EPTConfig.from_dict(files.config), None, initialize_prompt=False)
        try:
            self._load_files(adapter_name, files, str(model_id), is_trainable)
        except BaseException:
            self._forget(adapter_name)  # no half-loaded adapter stays behind
            raise
        self.set_adapter(self._active_adapter)

    def _load_files(self, name: str, files: AdapterFiles, source: str, is_trainable: bool) -> None:
        self.load_adapter_state_dict(files.tensors, source, adapter_name=name)
        self.adapter_task_metadata[name] = files.task
        self._trainable[name] = is_trainable

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the one ``forward`` and ``generate`` use (and the one that trains)."""
        self._check_adapter(adapter_name)
        self._active_adapter = adapter_name
        for name, encoder in self.prompt_encoders.items():
            trains = name == adapter_name and self._trainable[name]
            for parameter_name, parameter in encoder.named_parameters():
                # An empty parameter (the head alone has no P, A or B) must not make the backbone's input need
                # a gradient: that would run the backward through the whole frozen backbone for nothing.
                parameter.requires_grad_(trains and parameter.numel() > 0
                                         and (parameter_name != "fusion_scale" or encoder.config.trains_fusion))
        for name, heads in self.head_copies.items():
            heads.requires_grad_(name == adapter_name and self._trainable[name])

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter; deleting the active one makes the first remaining one active."""
        self._check_adapter(adapter_name)
        if len(self.peft_config) == 1:
            raise ValueError(f"adapter_name: {adapter_name!r} is this model's only adapter; use get_base_model() "
                             f"for the backbone alone")
        self._forget(adapter_name)
        self.set_adapter(self._active_adapter if self._active_adapter in self.peft_config else next(iter(self.peft_config)))

    def _forget(self, name: str) -> None:
        del self.prompt_encoders[name]
        del self.head_copies[name]
        for store in (self.peft_config, self.adapter_task_metadata, self._trainable, self._merged_prompts):
            store.pop(name, None)

    @property
    def active_adapter(self) -> str:
        return self._active_adapter

    @property
    def active_peft_config(self) -> EPTConfig:
        """The active adapter's configuration. (``config`` is the backbone's, as in PEFT.)"""
        return self.peft_config[self._active_adapter]

    @property
    def prompt_encoder(self) -> EPTPromptEncoder:
        """The active adapter's prompt encoder."""
        return self.prompt_encoders[self._active_adapter]

    @property
    def task_metadata(self) -> Optional[dict]:
        """The data the active adapter is for (name, label names, metrics), saved with it when known."""
        return self.adapter_task_metadata[self._active_adapter]

    @task_metadata.setter
    def task_metadata(self, value: Optional[dict]) -> None:
        self.adapter_task_metadata[self._active_adapter] = value

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the block the backbone runs alone: no prompt, no low-rank update, its own head."""
        outer, self._adapters_disabled = self._adapters_disabled, True
        try:
            yield
        finally:
            self._adapters_disabled = outer

    def get_base_model(self) -> nn.Module:
        """The backbone, unchanged (the adapters' heads are copies held by this model, used only
        while it runs the backbone)."""
        return self.base_model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model" or name in _NOT_FORWARDED:
                raise AttributeError(f"{type(self).__name__} has no attribute {name!r}") from None
            return getattr(self.base_model, name)

    def _apply(self, fn, recurse: bool = True):
        """``.to(dtype)``, ``.half()`` and the like cast the backbone; the adapters' parameters
        move with it but stay float32 (a round trip through 16 bits would lose their precision)."""
        def move_only(tensor: torch.Tensor) -> torch.Tensor:
            converted = fn(tensor)
            if converted.is_floating_point() and converted.dtype != tensor.dtype:
                return tensor.to(converted.device)
            return converted

        for child in self.children():
            child._apply(move_only if child is self.prompt_encoders else fn, recurse)
        self._merged_prompts = {name: move_only(prompt) for name, prompt in self._merged_prompts.items()}
        return self

    # ------------------------------------------------------------------ inputs
    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.base_model.get_input_embeddings()

    def ept_prompt(self) -> torch.Tensor:
        """P* (m, d) of the active adapter: the cached copy after ``merge_prompt()``, else computed now."""
        merged = self._merged_prompts.get(self._active_adapter)
        return merged if merged is not None else self.prompt_encoder()

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
    def _prompted(self, input_ids, attention_mask, adapter_names: Optional[Sequence[str]]):
        """The backbone's (inputs_embeds, attention_mask), the prefix length m, each row's own
        prompt length (None for one adapter) and the head routing, for the active adapter or,
        with ``adapter_names``, one adapter per row."""
        if adapter_names is None:
            embeds, mask = self.assemble_inputs(input_ids, attention_mask)
            m = self.active_peft_config.num_virtual_tokens
            readout = self._read_out([self.active_peft_config.readout], None, attention_mask, input_ids, None, m)
            heads = together(self._heads_routed(self.head_copies[self._active_adapter], mask), readout)
            return embeds, mask, m, None, heads
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) != input_ids.shape[0]:
            raise ValueError(f"adapter_names: expected one name per row of input_ids ({input_ids.shape[0]}), "
                             f"got {len(names)}")
        if not all(isinstance(name, str) for name in names):
            raise ValueError(f"adapter_names: expected one adapter name (a str) per row, got "
                             f"{[name for name in names if not isinstance(name, str)][:3]} among them")
        unknown = sorted(set(names) - set(self.peft_config))
        if unknown:
            raise ValueError(f"adapter_names: no adapter named {unknown}; this model has {sorted(self.peft_config)}")
        used = list(dict.fromkeys(names))
        adapter_ids = torch.tensor([used.index(name) for name in names], device=input_ids.device)
        prompts = [self._merged_prompts.get(name) for name in used]
        prompts = [self.prompt_encoders[name]() if p is None else p for name, p in zip(used, prompts)]
        embeds, mask, lengths = assemble_mixed_inputs([self.prompt_encoders[name] for name in used], prompts, adapter_ids,
                                                      input_ids, attention_mask, self.word_embeddings,
                                                      self._padding_side)
        m = embeds.shape[1] - input_ids.shape[1]
        heads = together(self._heads_routed([rowwise([self.head_copies[name][i] for name in used], adapter_ids)
                                             for i in range(len(self.heads))], mask),
                         self._read_out([self.peft_config[name].readout for name in used], adapter_ids,
                                        attention_mask, input_ids, lengths, m))
        return embeds, mask, m, lengths, heads

    def _read_out(self, readouts: Sequence[Readout], adapter_ids: Optional[torch.Tensor],
                  attention_mask: Optional[torch.Tensor], input_ids: torch.Tensor, lengths: Optional[torch.Tensor],
                  m: int):
        """While the backbone runs, each row's position 0 of its last hidden states holds what its
        adapter's readout (``readouts[adapter_ids[i]]``, one adapter when ``adapter_ids`` is None)
        reads: the first prompt row as it is (backbone), the first real token, or the mean over the
        real tokens (``heads.read_out``)."""
        if all(readout is Readout.BACKBONE for readout in readouts):
            return contextlib.nullcontext()
        attended = (attention_mask != 0 if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool))
        attended = attended.float()
        first = torch.nn.functional.one_hot(attended.argmax(dim=1), attended.shape[1]).float()
        mean = attended / attended.sum(dim=1, keepdim=True).clamp(min=1)
        kinds = torch.tensor([list(Readout).index(readout) for readout in readouts], device=input_ids.device)
        kind = kinds[adapter_ids] if adapter_ids is not None else kinds.expand(input_ids.shape[0])
        weights = self._place_tokens(torch.where((kind == list(Readout).index(Readout.MEAN))[:, None], mean, first),
                                     lengths, m, 0.0)
        position0 = torch.zeros_like(weights)
        position0[:, 0] = 1.0
        weights = torch.where((kind == list(Readout).index(Readout.BACKBONE))[:, None], position0, weights)
        return hooked(sequence_output_module(self.base_model), read_out(weights))

    @property
    def _padding_side(self) -> str:
        """Where a mixed batch pads a shorter prompt: before it for decoder-only backbones (a causal
        LM generates on from the last position; a decoder classifier, head ``score``, pools it),
        after the tokens for the others (every position as alone; an encoder pools position 0)."""
        decoder = self.task_type is TaskType.CAUSAL_LM or "score" in self.heads
        return "left" if decoder else "right"

    def _position_ids(self, lengths: Optional[torch.Tensor], m: int, width: int) -> Optional[torch.Tensor]:
        """For a left-padded mixed batch, the positions each row has alone (from its prompt on;
        ``generate`` derives the same from the attention mask); None otherwise."""
        if lengths is None or self._padding_side == "right":
            return None
        if "position_ids" not in inspect.signature(self.base_model.forward).parameters:
            return None
        index = torch.arange(width, device=lengths.device)[None, :]
        return (index - (m - lengths[:, None])).clamp(min=0)

    def _runs_bare(self, adapter_names) -> bool:
        """Inside ``disable_adapter()`` the backbone runs alone, and naming adapters is an error."""
        if self._adapters_disabled and adapter_names is not None:
            raise ValueError("adapter_names: adapters are disabled inside disable_adapter()")
        return self._adapters_disabled

    def _place_tokens(self, values: torch.Tensor, lengths: Optional[torch.Tensor], m: int, fill) -> torch.Tensor:
        """A per-token tensor (b, T) laid out as the prompted rows: ``fill`` over the prompt and
        any padding, ``values`` where each row's tokens are."""
        b, T = values.shape
        out = values.new_full((b, m + T), fill)
        if lengths is None or self._padding_side == "left":
            out[:, m:] = values
            return out
        columns = lengths[:, None] + torch.arange(T, device=values.device)[None, :]
        return out.scatter(1, columns, values)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        adapter_names: Optional[Sequence[str]] = None,
        **kwargs,
    ):
        """The backbone on the prompted input. ``adapter_names`` (one per row, adapters loaded on
        this model) runs each row under its own adapter, head included, in one batch."""
        if labels is not None:
            kwargs["labels"] = labels
        if self._runs_bare(adapter_names):
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   **kwargs)
        self._check_inputs(input_ids, inputs_embeds)
        self._drop_unsupported(kwargs)
        embeds, mask, m, lengths, heads = self._prompted(input_ids, attention_mask, adapter_names)
        if self.task_type is TaskType.CAUSAL_LM and labels is not None:
            kwargs["labels"] = self._place_tokens(labels, lengths, m, -100)
        if self.task_type is not TaskType.SEQ_2_SEQ_LM and kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = self._place_tokens(kwargs["token_type_ids"], lengths, m, 0)
        positions = self._position_ids(lengths, m, embeds.shape[1])
        if positions is not None:
            kwargs["position_ids"] = positions
        with heads:
            return self.base_model(inputs_embeds=embeds, attention_mask=mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: Optional[torch.Tensor] = None, adapter_names: Optional[Sequence[str]] = None,
                 **kwargs):
        """Generation with the same prefix as ``forward`` (``generate(ids)`` or ``generate(input_ids=ids)``;
        ``adapter_names``: one adapter per row). Seq2seq models return the decoder's tokens; causal
        LMs return ``input_ids`` followed by the new tokens, as the backbone's own
        ``generate(input_ids=...)`` does (it takes each row's positions from the attention mask,
        so the padding after a shorter prompt is skipped)."""
        if self.task_type not in (TaskType.SEQ_2_SEQ_LM, TaskType.CAUSAL_LM):
            raise ValueError(f"generate: needs task_type SEQ_2_SEQ_LM or CAUSAL_LM, this model is {self.task_type.value}")
        if self._runs_bare(adapter_names):
            return self.base_model.generate(input_ids=input_ids, **kwargs)
        kwargs = dict(kwargs)
        self._check_inputs(input_ids, kwargs.pop("inputs_embeds", None))
        self._drop_unsupported(kwargs)
        if kwargs.pop("encoder_outputs", None) is not None:
            logger.warning("encoder_outputs: ignored; the encoder runs on the prompted input")
        if self.task_type is TaskType.CAUSAL_LM and kwargs.get("max_length") is not None \
                and "max_new_tokens" not in kwargs:
            # Given inputs_embeds the backbone counts the prompt (and a mixed batch's padding) in
            # max_length; the length the user means is that of input_ids, as in PEFT.
            max_length = kwargs.pop("max_length")
            if max_length <= input_ids.shape[1]:
                raise ValueError(f"max_length: counts input_ids ({input_ids.shape[1]} tokens) and the new tokens, "
                                 f"so it leaves none at {max_length}; give a larger one or max_new_tokens")
            kwargs["max_new_tokens"] = max_length - input_ids.shape[1]
        embeds, mask, _, _, heads = self._prompted(input_ids, kwargs.pop("attention_mask", None), adapter_names)
        with heads:
            output = self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        if self.task_type is TaskType.CAUSAL_LM:
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
        """Compute the active adapter's P* once and reuse it (inference): generation then skips
        the prompt generator."""
        self._merged_prompts[self._active_adapter] = self.prompt_encoder().detach()

    def unmerge_prompt(self) -> None:
        self._merged_prompts.pop(self._active_adapter, None)

    def load_state_dict(self, *args, **kwargs):
        self._merged_prompts.clear()  # a cached P* would belong to the old parameters
        return super().load_state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        if mode:
            self._merged_prompts.clear()  # a cached P* would go stale as the parameters train
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
        """Optimizer groups for DePT's two learning rates: the active adapter's soft prompt P and
        head at ``lr_prompt``; its low-rank pair A, B, and EPT's fusion scale, projections and gate
        at ``lr_lowrank``. (EPT's extra parts at the prompt's rate made it unstable and worse than
        DePT on the MiniLM tasks of docs/results.md.)"""
        encoder = self.prompt_encoder
        slow = [p for n, p in encoder.named_parameters() if p.requires_grad and n != "prompt"]
        fast = [p for p in self.parameters() if p.requires_grad and all(p is not q for q in slow)]
        return [g for g in ({"params": fast, "lr": lr_prompt}, {"params": slow, "lr": lr_lowrank}) if g["params"]]

    # ----------------------------------------------------------- save / load
    def adapter_state_dict(self, adapter_name: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """The tensors an adapter file holds (default: the active adapter's): the eight encoder
        parameters (fp32) and its copy of the heads, under PEFT's names."""
        name = adapter_name or self._active_adapter
        self._check_adapter(name)
        tensors = {f"prompt_encoder.{key}": p.detach().float() for key, p in self.prompt_encoders[name].named_parameters()}
        for head, module in zip(self.heads, self.head_copies[name]):
            for key, tensor in module.state_dict().items():
                tensors[f"base_model.{head}.{key}"] = tensor.detach()
        return tensors

    def save_pretrained(self, save_directory: Union[str, os.PathLike], selected_adapters: Optional[List[str]] = None,
                        is_main_process: bool = True, safe_serialization: bool = True) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (both written, then
        renamed) per adapter: ``default`` in ``save_directory``, any other in
        ``save_directory/<name>``, as PEFT does; ``selected_adapters`` (default: all) are checked
        before anything is written. Only the main process writes. Only safetensors is written."""
        if not safe_serialization:
            raise ValueError("safe_serialization: ept_fast writes adapter_model.safetensors only, got False")
        names = list(self.peft_config) if selected_adapters is None else (
            [selected_adapters] if isinstance(selected_adapters, str) else list(selected_adapters))
        unknown = [name for name in names if name not in self.peft_config]
        if unknown:
            raise ValueError(f"selected_adapters: no adapter named {unknown}; this model has "
                             f"{sorted(self.peft_config)}")
        if not is_main_process:
            return
        for name in names:
            save_adapter(adapter_subfolder(save_directory, name), self.peft_config[name].to_dict(),
                         self.adapter_state_dict(name), task=self.adapter_task_metadata[name])

    def push_to_hub(self, repo_id: str, adapter_name: Optional[str] = None, metrics: Optional[dict] = None,
                    commit_message: str = "Upload EPT adapter", private: Optional[bool] = None,
                    token: Optional[str] = None, revision: Optional[str] = None, create_pr: bool = False):
        """Upload one adapter (default: the active one) to the hub repository ``repo_id``: its two
        files and a model card (README.md), never the backbone. Returns the hub's commit info."""
        name = adapter_name or self._active_adapter
        self._check_adapter(name)
        tensors = self.adapter_state_dict(name)
        trainable = sum(t.numel() for key, t in tensors.items()
                        if key != "prompt_encoder.fusion_scale" or self.peft_config[name].trains_fusion)

        def write(folder: Path) -> None:
            config, task = self.peft_config[name].to_dict(), self.adapter_task_metadata[name]
            save_adapter(folder, config, tensors, task=task)
            (folder / CARD_NAME).write_text(model_card(config, trainable, task, metrics), encoding="utf-8")

        return push_folder(repo_id, write, commit_message=commit_message, private=private, token=token,
                           revision=revision, create_pr=create_pr)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, model_id: Union[str, os.PathLike], adapter_name: str = DEFAULT_ADAPTER,
        is_trainable: bool = False, revision: Optional[str] = None, subfolder: Optional[str] = None,
        token: Optional[str] = None,
    ) -> "EPTModel":
        """Load an adapter saved by ``save_pretrained`` onto ``model``: a local folder, or a hub
        repository id (with ``revision``, ``subfolder``, ``token``; the hub's cache serves it offline)."""
        files = read_adapter(adapter_folder(model_id, revision=revision, subfolder=subfolder, token=token))
        # The saved tensors replace the initial prompt, so none is built.
        wrapper = cls(model, EPTConfig.from_dict(files.config), initialize_prompt=False, adapter_name=adapter_name)
        wrapper._load_files(adapter_name, files, str(model_id), is_trainable)
        wrapper.set_adapter(adapter_name)
        if not is_trainable:
            wrapper.eval()
            wrapper.merge_prompt()
        return wrapper

    @classmethod
    def from_dept_checkpoint(cls, model: nn.Module, directory: Union[str, os.PathLike],
                             adapter_name: str = DEFAULT_ADAPTER, is_trainable: bool = False) -> "EPTModel":
        """Load one of DePT's released checkpoints (``adapter_config.json`` with peft_type
        ``PROMPT_TUNING_LORA``, ``adapter_model.bin`` or ``.safetensors``) as a ``dept`` adapter."""
        config, tensors = dept_checkpoint(directory)
        wrapper = cls(model, config, initialize_prompt=False, adapter_name=adapter_name)
        wrapper.load_adapter_state_dict({**wrapper.adapter_state_dict(), **tensors}, str(directory))
        wrapper._trainable[adapter_name] = is_trainable
        wrapper.set_adapter(adapter_name)
        return wrapper

    def export_peft_prompt_tuning(self, save_directory: Union[str, os.PathLike], adapter_name: Optional[str] = None,
                                  allow_lossy: bool = False, sample_input_ids: Optional[torch.Tensor] = None) -> dict:
        """Write the adapter as a plain PEFT prompt-tuning adapter (see ``ept_fast.interop``):
        exact for ``method="pt"``; ``dept`` / ``ept`` only with ``allow_lossy=True``, returning
        the measured output difference."""
        return export_peft_prompt_tuning(self, save_directory, adapter_name, allow_lossy, sample_input_ids)

    def load_adapter_state_dict(self, tensors: Dict[str, torch.Tensor], source: str = "state dict",
                                adapter_name: Optional[str] = None) -> None:
        """Load tensors in the form of ``adapter_state_dict()`` into an adapter (default: the
        active one); shapes and names are checked."""
        name = adapter_name or self._active_adapter
        self._merged_prompts.pop(name, None)  # a cached P* would belong to the old parameters
        expected = self.adapter_state_dict(name)
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(f"adapter {source}: tensors do not match this model (missing {missing}, "
                             f"unexpected {unexpected})")
        for key, tensor in tensors.items():
            if tensor.shape != expected[key].shape:
                raise ValueError(
                    f"adapter {source}: {key} has shape {tuple(tensor.shape)}, but this backbone needs "
                    f"{tuple(expected[key].shape)} (was it saved for another hidden size, or a head with another "
                    f"number of labels?)"
                )
        with torch.no_grad():
            for key, parameter in self.prompt_encoders[name].named_parameters():
                parameter.copy_(tensors[f"prompt_encoder.{key}"])
            for head, module in zip(self.heads, self.head_copies[name]):
                prefix = f"base_model.{head}."
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def adapter_subfolder(directory: Union[str, os.PathLike], adapter_name: str) -> Path:
    """Where ``save_pretrained(directory)`` writes an adapter: ``directory`` for ``default``,
    ``directory/<name>`` for any other (PEFT's layout)."""
    return Path(directory) if adapter_name == DEFAULT_ADAPTER else Path(directory) / adapter_name


def _load_tokenizer(config: EPTConfig):
    source = config.tokenizer_name_or_path or config.base_model_name_or_path
    if not source:
        raise ValueError(
            "tokenizer: prompt_init='TEXT' tokenizes prompt_init_text, but no tokenizer was given; pass "
            "tokenizer= to get_ept_model, set EPTConfig(tokenizer_name_or_path=...), or use prompt_init='RANDOM_VOCAB'"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def get_ept_model(model: nn.Module, config: EPTConfig, tokenizer=None, adapter_name: str = DEFAULT_ADAPTER) -> EPTModel:
    """Wrap ``model`` (frozen) with a new EPT adapter built from ``config``; ``token_dim`` and,
    when unset, ``task_type`` come from the model. ``prompt_init='TEXT'`` uses ``tokenizer``, or
    loads one from ``config.tokenizer_name_or_path`` (else the model's name)."""
    return EPTModel(model, copy.deepcopy(config), tokenizer=tokenizer, adapter_name=adapter_name)
