"""The adapters of an ``EPTModel`` and their lifecycle, as PEFT users know it: named adapters
(add, load, set, delete, disable), each with its prompt encoder and its copy of a classifier's
head; saving, loading, the hub, DePT's checkpoints and the PEFT export."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import EPTConfig, Method, PromptInit, Readout, TaskType
from .heads import head_copy, sequence_output_module, skippable_pooler
from .hub import CARD_NAME, adapter_folder, model_card, push_folder
from .interop import dept_checkpoint, export_peft_prompt_tuning
from .prompt_encoder import EPTPromptEncoder, embedding_scale
from .serialization import AdapterFiles, save_adapter
from .serialization import load_adapter as read_adapter

DEFAULT_ADAPTER = "default"
_ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]+")  # also a folder name in save_pretrained
_DEFAULT_HEADS = ("classifier", "score")  # PEFT's automatic modules_to_save for SEQ_CLS


def check_adapter_name(name, argument: str = "adapter_name") -> None:
    """An adapter's name: letters, digits, '_' or '-', and not an attribute of nn.ModuleDict."""
    if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name) or hasattr(nn.ModuleDict(), name):
        raise ValueError(f"{argument}: expected letters, digits, '_' or '-' (and not an attribute of "
                         f"nn.ModuleDict), got {name!r}")


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The backbone's input embedding (an ``nn.Embedding``, with real weights), or a clear error."""
    if any(parameter.is_meta for parameter in model.parameters()):
        raise ValueError(f"model: {type(model).__name__}'s parameters are on the meta device (built without "
                         f"weights); load its weights first (from_pretrained, or to_empty and load_state_dict)")
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    if not isinstance(embeddings, nn.Embedding):
        raise ValueError(
            f"model: expected a backbone whose get_input_embeddings() returns an nn.Embedding, "
            f"got {type(embeddings).__name__} from {type(model).__name__}"
        )
    embedding_scale(embeddings)  # a lookup that does more than scale is refused here
    return embeddings



def position_limit(model: nn.Module) -> Optional[int]:
    """The most positions ``model`` takes (``max_position_embeddings``; RoBERTa's positions start
    past its padding index), or None where its config names no limit."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    padding_index = getattr(getattr(getattr(model, "base_model", None), "embeddings", None), "padding_idx", None)
    return limit - (padding_index + 1 if isinstance(padding_index, int) else 0)


def saved_config(files: AdapterFiles) -> EPTConfig:
    """The EPTConfig an adapter was saved with. ``modules_to_save`` on a model that is not a
    classifier, which earlier versions accepted and ignored, is dropped with a warning."""
    config = EPTConfig.from_dict(files.config)
    if config.modules_to_save and config.task_type not in (None, TaskType.SEQ_CLS):
        warnings.warn(f"modules_to_save: {config.modules_to_save} was saved with this {config.task_type.value} "
                      f"adapter, but only a classifier's head trains with an adapter; nothing was trained or saved "
                      f"for it, so it is dropped", stacklevel=3)
        config = dataclasses.replace(config, modules_to_save=None)
    return config


class AdapterLifecycle:
    """The adapter registry of ``EPTModel`` (a mixin of it): ``peft_config[name]``,
    ``prompt_encoders[name]``, ``head_copies[name]``; ``active_adapter`` is the one that runs and
    trains. Only the active adapter's parameters train, and only if it was created or loaded
    trainable."""

    def _create_adapter(self, name: str, config: EPTConfig, tokenizer, initialize_prompt: bool) -> None:
        check_adapter_name(name)
        if name in self.peft_config:
            raise ValueError(f"adapter_name: an adapter named {name!r} exists already; delete_adapter it first")
        task_type = config.task_type or self.task_type
        if task_type is not self.task_type:
            raise ValueError(f"config.task_type: this model's adapters are {self.task_type.value}, got "
                             f"{task_type.value}")
        if task_type is not TaskType.SEQ_CLS and config.modules_to_save:
            raise ValueError(f"config.modules_to_save: trains copies of a classifier's head (SEQ_CLS) with the "
                             f"adapter; a {task_type.value} model trains none, got {config.modules_to_save}")
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
            if config.readout is Readout.SENTENCE_EMBEDDING:
                skippable_pooler(self.base_model, heads)  # and whose pooler can be skipped
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

    def _check_adapter(self, name: str) -> None:
        if name not in self.peft_config:
            raise ValueError(f"adapter_name: no adapter named {name!r}; this model has {sorted(self.peft_config)}")

    def add_adapter(self, adapter_name: str, config: EPTConfig, tokenizer=None) -> None:
        """Add a new, trainable adapter built from ``config`` (not made active: see ``set_adapter``)."""
        self._create_adapter(adapter_name, copy.deepcopy(config), tokenizer, initialize_prompt=True)
        self._train_only(self._training)

    def load_adapter(self, model_id: Union[str, os.PathLike], adapter_name: str, is_trainable: bool = False,
                     revision: Optional[str] = None, subfolder: Optional[str] = None,
                     token: Optional[str] = None) -> None:
        """Load a saved adapter (a local folder or a hub id) as ``adapter_name``, beside the others
        (not made active: see ``set_adapter``)."""
        folder = adapter_folder(model_id, revision=revision, subfolder=subfolder, token=token)
        files = read_adapter(folder)
        self._create_adapter(adapter_name, saved_config(files), None, initialize_prompt=False)
        try:
            self._load_files(adapter_name, files, str(model_id), is_trainable)
        except BaseException:
            self._forget(adapter_name)  # no half-loaded adapter stays behind
            raise
        self._train_only(self._training)

    def _load_files(self, name: str, files: AdapterFiles, source: str, is_trainable: bool) -> None:
        self.load_adapter_state_dict(files.tensors, source, adapter_name=name)
        self.adapter_task_metadata[name] = files.task
        self._trainable[name] = is_trainable

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the one ``forward`` and ``generate`` use (and the one that trains)."""
        self._check_adapter(adapter_name)
        self._active_adapter = adapter_name
        self._train_only([adapter_name])

    def set_trainable_adapters(self, adapter_names: Sequence[str]) -> None:
        """Train the adapters ``adapter_names`` (each loaded trainable), all others frozen: for
        training several at once through mixed batches (``adapter_names=`` of ``forward``). Adding,
        loading or deleting adapters keeps this; ``set_adapter`` makes the active adapter the only
        one that trains again."""
        if isinstance(adapter_names, str) or not isinstance(adapter_names, Iterable):
            raise ValueError(f"adapter_names: expected a list of adapter names, got {adapter_names!r}")
        adapter_names = list(adapter_names)
        if not all(isinstance(name, str) for name in adapter_names):
            raise ValueError(f"adapter_names: expected a list of adapter names, got {adapter_names!r}")
        for name in adapter_names:
            self._check_adapter(name)
        frozen = [name for name in adapter_names if not self._trainable[name]]
        if frozen:
            raise ValueError(f"adapter_names: {frozen} were loaded for inference; load them with "
                             f"is_trainable=True to train them")
        self._train_only(adapter_names)

    @contextlib.contextmanager
    def active_for_a_while(self, adapter_name: str) -> Iterator[None]:
        """``adapter_name`` active inside the block; the active adapter, and the adapters that
        train, as they were after it."""
        active, training = self._active_adapter, list(self._training)
        self.set_adapter(adapter_name)
        try:
            yield
        finally:
            self._active_adapter = active
            self._train_only(training)

    def _train_only(self, adapter_names: Sequence[str]) -> None:
        """The parameters of the trainable adapters among ``adapter_names`` train; no others do."""
        self._training = [name for name in adapter_names if name in self.peft_config]
        for name, encoder in self.prompt_encoders.items():
            trains = name in adapter_names and self._trainable[name]
            for parameter_name, parameter in encoder.named_parameters():
                # The head alone's empty P, A and B must not make the backbone's input need a gradient (a
                # backward through the whole frozen backbone for nothing); other methods keep their groups.
                parameter.requires_grad_(trains and (parameter.numel() > 0 or encoder.config.method is not Method.HEAD)
                                         and (parameter_name != "fusion_scale" or encoder.config.trains_fusion))
        for name, heads in self.head_copies.items():
            heads.requires_grad_(name in adapter_names and self._trainable[name])

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter; deleting the active one makes the first remaining one active."""
        self._check_adapter(adapter_name)
        if len(self.peft_config) == 1:
            raise ValueError(f"adapter_name: {adapter_name!r} is this model's only adapter; use get_base_model() "
                             f"for the backbone alone")
        self._forget(adapter_name)
        if self._active_adapter in self.peft_config:
            self._train_only(self._training)
        else:
            self.set_adapter(next(iter(self.peft_config)))

    def _forget(self, name: str) -> None:
        del self.prompt_encoders[name]
        del self.head_copies[name]
        for store in (self.peft_config, self.adapter_task_metadata, self._trainable, self._merged_prompts):
            store.pop(name, None)

    def _apply(self, fn, recurse: bool = True):
        """The dtype policy: ``.to(dtype)``, ``.half()`` and the like cast the backbone; the adapters'
        parameters move with it but stay float32 (a round trip through 16 bits would lose their precision)."""
        def move_only(tensor: torch.Tensor) -> torch.Tensor:
            converted = fn(tensor)
            if converted.is_floating_point() and converted.dtype != tensor.dtype:
                return tensor.to(converted.device)
            return converted

        for child in self.children():
            child._apply(move_only if child is self.prompt_encoders else fn, recurse)
        self._merged_prompts = {name: move_only(prompt) for name, prompt in self._merged_prompts.items()}
        return self

    @property
    def active_adapter(self) -> str:
        """The adapter ``forward`` and ``generate`` use (``set_adapter`` changes it)."""
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
    # ------------------------------------------------------ parameters (PEFT)
    def get_nb_trainable_parameters(self) -> Tuple[int, int]:
        """(trainable parameters, all parameters), backbone included."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        """Print PEFT's line: the parameters that train, all parameters (the backbone's included),
        and the share that trains."""
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # ----------------------------------------------------------- save / load
    def adapter_state_dict(self, adapter_name: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """The tensors an adapter file holds (default: the active adapter's): the eight encoder
        parameters (fp32) and its copy of the heads, under PEFT's names."""
        name = adapter_name or self._active_adapter
        self._check_adapter(name)
        encoder = self.prompt_encoders[name]
        tensors = {f"prompt_encoder.{key}": p.detach().float() for key, p in encoder.named_parameters()}
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
    ) -> "AdapterLifecycle":
        """Load an adapter saved by ``save_pretrained`` onto ``model``: a local folder, or a hub
        repository id (with ``revision``, ``subfolder``, ``token``; the hub's cache serves it offline)."""
        files = read_adapter(adapter_folder(model_id, revision=revision, subfolder=subfolder, token=token))
        # The saved tensors replace the initial prompt, so none is built.
        wrapper = cls(model, saved_config(files), initialize_prompt=False, adapter_name=adapter_name)
        wrapper._load_files(adapter_name, files, str(model_id), is_trainable)
        wrapper.set_adapter(adapter_name)
        if not is_trainable:
            wrapper.eval()
            wrapper.merge_prompt()
        return wrapper

    @classmethod
    def from_dept_checkpoint(cls, model: nn.Module, directory: Union[str, os.PathLike],
                             adapter_name: str = DEFAULT_ADAPTER, is_trainable: bool = False) -> "AdapterLifecycle":
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
