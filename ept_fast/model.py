"""EPT on a frozen Hugging Face backbone: ``get_ept_model`` and ``EPTModel``, which runs and
generates with the prompted input (its adapters and their lifecycle, PEFT's API, are
``ept_fast.adapters``)."""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._validation import check_input_ids
from .adapters import DEFAULT_ADAPTER, AdapterLifecycle, input_embeddings, position_limit
from .config import EPTConfig, Readout, TaskType, infer_task_type
from .generation import new_token_count, updated_generated_tokens
from .heads import (
    heads_replaced,
    hooked,
    last_attended_pooled,
    read_out,
    readout_kinds,
    readout_weights,
    rowwise,
    sequence_output_module,
    skip_pooler,
    skippable_pooler,
    together,
)
from .prompt_encoder import AssembledInputs, assemble_mixed_inputs

logger = logging.getLogger(__name__)

# Adapter and hub methods of PEFT and transformers that EPTModel does not have: they must never
# reach the backbone through __getattr__ (its push_to_hub would upload the whole model).
_NOT_FORWARDED = frozenset({
    "active_adapters", "add_weighted_adapter", "create_or_update_model_card", "delete_adapters", "disable_adapters",
    "enable_adapters", "enable_peft_hotswap", "get_adapter_state_dict", "get_prompt", "get_prompt_embedding_to_save",
    "merge_adapter", "merge_and_unload", "set_additional_trainable_modules", "unload", "unmerge_adapter",
    "_hf_peft_config_loaded", "_dispatch_accelerate_model", "_prepare_peft_hotswap_kwargs",
})


class EPTModel(AdapterLifecycle, nn.Module):
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
        input_embeddings(model)
        self.base_model = model
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.task_type = infer_task_type(model, default=config.task_type)
        if config.task_type is not None and config.task_type is not self.task_type:
            raise ValueError(f"config.task_type: {type(model).__name__} is a {self.task_type.value} backbone, got "
                             f"{config.task_type.value}; leave task_type unset or match it")
        if self.task_type is TaskType.CAUSAL_LM and getattr(model, "loss_type", "") is None:
            # A class named like GPT2LMHeadModel gets no loss type from its name; transformers then uses
            # ForCausalLM after a warning on every first loss. Name it: the same loss, no warning.
            model.loss_type = "ForCausalLM"
        self.prompt_encoders = nn.ModuleDict()
        self.peft_config: Dict[str, EPTConfig] = {}
        self.heads: List[str] = []  # the backbone's trained head modules (SEQ_CLS); each adapter has copies
        self.head_copies = nn.ModuleDict()  # adapter name -> its copies, in the order of self.heads
        self.adapter_task_metadata: Dict[str, Optional[dict]] = {}
        self._trainable: Dict[str, bool] = {}  # adapter name -> created or loaded trainable
        self._training: List[str] = []  # the adapters whose parameters train now (set_adapter, set_trainable_adapters)
        self._merged_prompts: Dict[str, torch.Tensor] = {}
        self._active_adapter = adapter_name
        self._adapters_disabled = False
        self._create_adapter(adapter_name, config, tokenizer, initialize_prompt)
        self.set_adapter(adapter_name)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "param_groups":
                raise AttributeError("EPTModel.param_groups moved: use ept_fast.param_groups(model, lr_prompt, "
                                     "lr_lowrank)") from None
            if name == "base_model" or name in _NOT_FORWARDED:
                raise AttributeError(f"{type(self).__name__} has no attribute {name!r}") from None
            return getattr(self.base_model, name)

    # ------------------------------------------------------------------ inputs
    @property
    def word_embeddings(self) -> nn.Embedding:
        """The backbone's input embedding table (vocab, d), which the assembly reads."""
        return self.base_model.get_input_embeddings()

    def ept_prompt(self) -> torch.Tensor:
        """P* (m, d) of the active adapter (``_prompt_of``)."""
        return self._prompt_of(self._active_adapter)

    def _prompt_of(self, name: str) -> torch.Tensor:
        """P* (m, d) of adapter ``name``: the copy ``merge_prompt()`` cached, else computed now; always
        computed while training with gradients on (the cached copy is detached: the prompt
        generator would not train)."""
        merged = None if self.training and torch.is_grad_enabled() else self._merged_prompts.get(name)
        return merged if merged is not None else self.prompt_encoders[name]()

    def assemble_inputs(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The backbone's ``inputs_embeds`` (b, m+T, d) and ``attention_mask`` (b, m+T)."""
        return self.prompt_encoder.assemble_inputs(input_ids, attention_mask, self.word_embeddings,
                                                   prompt_out=self.ept_prompt())

    @property
    def _position_limit(self) -> Optional[int]:
        """How many positions a prompted row may have: the backbone's absolute limit; none for T5's
        relative positions."""
        return None if self.task_type is TaskType.SEQ_2_SEQ_LM else position_limit(self.base_model)

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
        check_input_ids(input_ids)

    def _drop_unsupported(self, kwargs: dict) -> None:
        if kwargs.pop("position_ids", None) is not None:
            logger.warning("position_ids: ignored, as PEFT does for prompt tuning (the prompt shifts every position)")

    # ----------------------------------------------------------------- forward
    def _prompted(self, input_ids, attention_mask, used: Sequence[str], adapter_ids: Optional[torch.Tensor]):
        """The assembled input (``inputs_embeds``, ``attention_mask``, ``layout``) for the active
        adapter (``adapter_ids`` None) or one adapter per row (``_adapter_rows``); and the context in
        which the backbone runs with each row's head and readout."""
        if adapter_ids is None:
            assembled = self.prompt_encoder.assemble(input_ids, attention_mask, self.word_embeddings,
                                                     prompt_out=self.ept_prompt())
            return assembled, self._routed(assembled, input_ids, attention_mask, used, None)
        prompts = [self._prompt_of(name) for name in used]
        assembled = assemble_mixed_inputs([self.prompt_encoders[name] for name in used], prompts, adapter_ids,
                                          input_ids, attention_mask, self.word_embeddings, self._padding_side)
        return assembled, self._routed(assembled, input_ids, attention_mask, used, adapter_ids)

    def _adapter_rows(self, input_ids: torch.Tensor, adapter_names) -> Tuple[List[str], Optional[torch.Tensor]]:
        """The adapters ``adapter_names`` uses, each once, and the index among them of each row's
        adapter (b,); the active adapter alone, and None, when ``adapter_names`` is None."""
        if adapter_names is None:
            return [self._active_adapter], None
        if not isinstance(adapter_names, (str, list, tuple)):
            raise ValueError(f"adapter_names: expected one adapter name (a str) per row, as a list, got "
                             f"{type(adapter_names).__name__}")
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
        return used, torch.tensor([used.index(name) for name in names], device=input_ids.device)

    def _routed(self, assembled: AssembledInputs, input_ids, attention_mask, used: Sequence[str],
                adapter_ids: Optional[torch.Tensor]):
        """While the backbone runs for this model, its heads answer with the copies of the
        adapters ``used`` (row i: ``used[adapter_ids[i]]``; the one adapter when ``adapter_ids`` is
        None), a decoder classifier's head pools each row's last attended position (right-padded
        rows classify as they do unpadded), and an encoder's position 0 holds what each row's
        readout reads (``heads.read_out``)."""
        copies = [self.head_copies[name] for name in used]
        replacements = [copies[0][i] if adapter_ids is None else rowwise([c[i] for c in copies], adapter_ids)
                        for i in range(len(self.heads))]
        last = assembled.layout.last_attended(assembled.attention_mask)
        replacements = [last_attended_pooled(replacement, last) if head == "score" else replacement
                        for head, replacement in zip(self.heads, replacements)]
        routing = heads_replaced([self.base_model.get_submodule(head) for head in self.heads], replacements)
        readouts = [self.peft_config[name].readout for name in used]
        if all(readout is Readout.BACKBONE for readout in readouts):
            return routing
        weights = readout_weights(readouts, adapter_ids, attention_mask, input_ids, assembled.layout)
        contexts = [routing, hooked(sequence_output_module(self.base_model), read_out(weights))]
        pooler = skippable_pooler(self.base_model, self.heads) if Readout.SENTENCE_EMBEDDING in readouts else None
        if pooler is not None:
            kinds = readout_kinds(readouts, adapter_ids, input_ids.shape[0], input_ids.device)
            contexts.append(hooked(pooler, skip_pooler(kinds == list(Readout).index(Readout.SENTENCE_EMBEDDING))))
        return together(*contexts)

    @property
    def _padding_side(self) -> str:
        """Where a mixed batch pads a shorter prompt: before it for decoder-only backbones (a causal
        LM generates on from the last position; a decoder classifier, head ``score``, pools it),
        after the tokens for the others (every position as alone; an encoder pools position 0)."""
        decoder = self.task_type is TaskType.CAUSAL_LM or "score" in self.heads
        return "left" if decoder else "right"

    def _check_class_labels(self, labels: Optional[torch.Tensor]) -> None:
        """A classifier's integer labels are class ids the head has (-100: ignored, as in the loss)."""
        classes = getattr(self.base_model.config, "num_labels", None)
        if self.task_type is not TaskType.SEQ_CLS or labels is None or labels.is_floating_point() or not classes:
            return
        outside = labels[(labels != -100) & ((labels < 0) | (labels >= classes))]
        if outside.numel():
            raise ValueError(f"labels: expected class ids in [0, {classes}) (the head's {classes} classes), got "
                             f"{sorted(set(outside.tolist()))[:5]}")

    def _runs_bare(self, adapter_names) -> bool:
        """Inside ``disable_adapter()`` the backbone runs alone, and naming adapters is an error."""
        if self._adapters_disabled and adapter_names is not None:
            raise ValueError("adapter_names: adapters are disabled inside disable_adapter()")
        return self._adapters_disabled

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
        token_types = kwargs.get("token_type_ids")
        if token_types is not None and tuple(token_types.shape) != tuple(input_ids.shape):
            raise ValueError(f"token_type_ids: expected the shape of input_ids {tuple(input_ids.shape)}, got "
                             f"{tuple(token_types.shape)}")
        self._check_class_labels(labels)
        if self.task_type is TaskType.CAUSAL_LM and labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels: a causal LM's labels are its input_ids' tokens, expected their shape "
                             f"{tuple(input_ids.shape)}, got {tuple(labels.shape)}")
        used, adapter_ids = self._adapter_rows(input_ids, adapter_names)
        (embeds, mask, layout), routed = self._prompted(input_ids, attention_mask, used, adapter_ids)
        layout.check_fits(self._position_limit, type(self.base_model).__name__)
        if self.task_type is TaskType.CAUSAL_LM and labels is not None:
            kwargs["labels"] = layout.place(labels, -100)
        if self.task_type is not TaskType.SEQ_2_SEQ_LM and kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = layout.place(kwargs["token_type_ids"], 0)
        positions = layout.position_ids()
        if positions is not None and "position_ids" in inspect.signature(self.base_model.forward).parameters:
            kwargs["position_ids"] = positions
        with routed:
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
            raise ValueError(f"generate: needs task_type SEQ_2_SEQ_LM or CAUSAL_LM, this model is "
                             f"{self.task_type.value}")
        if self._runs_bare(adapter_names):
            return self.base_model.generate(input_ids=input_ids, **kwargs)
        kwargs = dict(kwargs)
        self._check_inputs(input_ids, kwargs.pop("inputs_embeds", None))
        self._drop_unsupported(kwargs)
        if kwargs.pop("encoder_outputs", None) is not None:
            logger.warning("encoder_outputs: ignored; the encoder runs on the prompted input")
        attention_mask = kwargs.pop("attention_mask", None)
        used, adapter_ids = self._adapter_rows(input_ids, adapter_names)
        (embeds, mask, layout), routed = self._prompted(input_ids, attention_mask, used, adapter_ids)
        layout.check_fits(self._position_limit, type(self.base_model).__name__)
        if self.task_type is TaskType.CAUSAL_LM:
            new_tokens, source = new_token_count(self.base_model, input_ids, kwargs)
            routed = together(routed, updated_generated_tokens(
                self.base_model.get_input_embeddings(), [self.prompt_encoders[name] for name in used], adapter_ids,
                attention_mask, input_ids, new_tokens, source, kwargs))
        with routed:
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
        """Drop the active adapter's cached P* (``merge_prompt``): the prompt is computed again at each call."""
        self._merged_prompts.pop(self._active_adapter, None)

    def load_state_dict(self, *args, **kwargs):
        self._merged_prompts.clear()  # a cached P* would belong to the old parameters
        return super().load_state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        if mode:
            self._merged_prompts.clear()  # a cached P* would go stale as the parameters train
        return super().train(mode)


def get_ept_model(model: nn.Module, config: EPTConfig, tokenizer=None, adapter_name: str = DEFAULT_ADAPTER) -> EPTModel:
    """Wrap ``model`` (frozen) with a new EPT adapter built from ``config``; ``token_dim`` and,
    when unset, ``task_type`` come from the model. ``prompt_init='TEXT'`` uses ``tokenizer``, or
    loads one from ``config.tokenizer_name_or_path`` (else the model's name)."""
    return EPTModel(model, copy.deepcopy(config), tokenizer=tokenizer, adapter_name=adapter_name)

