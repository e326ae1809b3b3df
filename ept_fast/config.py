"""``EPTConfig``: the hyper-parameters of an EPT adapter, validated on construction."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import List, Optional

from ._validation import Backend, parse_enum


class PromptInit(str, enum.Enum):
    """How the short prompt P is initialised (PEFT's ``PromptTuningInit`` values where they match)."""

    TEXT = "TEXT"  # rows of the word-embedding table for the tokenized init text
    RANDOM_VOCAB = "RANDOM_VOCAB"  # m random rows of the word-embedding table (PEFT's SAMPLE_VOCAB)
    RANDOM = "RANDOM"  # N(0, 0.02^2) (PEFT's RANDOM is nn.Embedding's N(0, 1))

    @classmethod
    def _missing_(cls, value):
        return cls.RANDOM_VOCAB if value == "SAMPLE_VOCAB" else None  # PEFT's spelling


class Method(str, enum.Enum):
    """EPT, or one of the baselines it reduces to."""

    EPT = "ept"
    DEPT = "dept"  # K = 0, fusion_scale frozen at 0
    PT = "pt"  # additionally r = 0: vanilla prompt tuning
    HEAD = "head"  # additionally m = 0: no prompt at all, the classification head alone (a baseline)


class Readout(str, enum.Enum):
    """What an encoder classifier's head reads (SEQ_CLS).

    The backbone pools its output as it always does (BERT: position 0 through its pooler);
    ``readout`` chooses the vector put at the position it pools, and ``sentence_embedding``
    also skips a frozen pooler, so that the head reads that vector itself."""

    BACKBONE = "backbone"  # the prompted output as it comes: position 0 is the first prompt row (PEFT's behaviour)
    FIRST_TOKEN = "first_token"  # the output at the row's first real token (BERT's [CLS]), the prompt skipped
    MEAN = "mean"  # the mean of the output over the row's real tokens, through the backbone's pooler
    # The same mean given to the head as it is, the backbone's frozen pooler (BERT's dense + tanh)
    # skipped: the sentence embedding a sentence encoder is read by, and a linear probe fits.
    SENTENCE_EMBEDDING = "sentence_embedding"


class TaskType(str, enum.Enum):
    """Where the prompt goes (PEFT's ``TaskType`` values)."""

    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"  # encoder-decoder (T5): the encoder input only
    CAUSAL_LM = "CAUSAL_LM"  # decoder-only LM: the input, labels padded with -100
    SEQ_CLS = "SEQ_CLS"  # sequence classifier: the input; the classification head trains too


_MAX_SIZE = 1 << 20  # no prompt, sequence or rank of an adapter comes near a million rows
PEFT_ALIASES = {"prompt_tuning_init": "prompt_init", "prompt_tuning_init_text": "prompt_init_text"}
_DEFAULT_PROMPT_LENGTH = {Method.EPT: 60, Method.DEPT: 60, Method.PT: 60, Method.HEAD: 0}
_DEFAULT_RANK = {Method.EPT: 30, Method.DEPT: 30, Method.PT: 0, Method.HEAD: 0}
_DEFAULT_SPACES = {Method.EPT: 4, Method.DEPT: 0, Method.PT: 0, Method.HEAD: 0}


def infer_task_type(backbone, default: Optional[TaskType] = None) -> TaskType:
    """The task type a backbone implies, from a model (its class name) or a ``transformers``
    config (its ``architectures``): SEQ_CLS for ``*ForSequenceClassification``, SEQ_2_SEQ_LM
    for an encoder-decoder, CAUSAL_LM for ``*ForCausalLM`` / ``*LMHeadModel``. Anything else
    (an encoder without a head, say) is ``default``, or an error when there is none."""
    is_config = hasattr(backbone, "architectures") and hasattr(backbone, "is_encoder_decoder")
    names = list(backbone.architectures or []) if is_config else [type(backbone).__name__]
    config = backbone if is_config else getattr(backbone, "config", None)
    if any(name.endswith("ForSequenceClassification") for name in names):
        return TaskType.SEQ_CLS
    if getattr(config, "is_encoder_decoder", False):
        return TaskType.SEQ_2_SEQ_LM
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names):
        return TaskType.CAUSAL_LM
    if default is not None:
        return default
    raise ValueError(
        f"task_type: cannot infer it from {', '.join(names) or type(backbone).__name__}; set "
        f"EPTConfig(task_type=...) to one of {[t.value for t in TaskType]}"
    )


def _check_int(field: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{field}: expected an int >= {minimum}, got {value}")


def _field(default, help: str):
    """A config field with its help text (PEFT's convention: ``metadata={"help": ...}``)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class EPTConfig:
    """Configuration of an EPT prompt encoder.

    ``num_virtual_tokens``, ``r``, ``num_spaces`` and ``fusion`` default by ``method``: 60, 30,
    4 and True for ``"ept"``; 60, 30, 0 and False for ``"dept"``; 60, 0, 0 and False for
    ``"pt"``; 0, 0, 0 and False for ``"head"`` (no prompt: the classification head alone, the
    baseline every adapter has to beat). The baselines fix K = 0 and a frozen ``fusion_scale``
    (and r = 0 for ``"pt"``, m = 0 too for ``"head"``), so a conflicting explicit value is an
    error. EPT with ``num_spaces=0`` or ``fusion=False`` is EPT without one of its two parts.

    ``readout`` (classifiers only) chooses what the head reads; ``"backbone"``, the default,
    is PEFT's behaviour (an encoder pools position 0, which is the first prompt row).
    """

    num_virtual_tokens: Optional[int] = _field(None, "m: length of the short soft prompt P (default by method)")
    token_dim: Optional[int] = _field(None, "d: hidden size of the backbone's input embeddings (taken from it)")
    max_length: int = _field(256, "n: positions the low-rank update A·B covers (longer inputs are an error)")
    r: Optional[int] = _field(None, "rank of the low-rank pair A (n, r) · B (r, d) (default by method)")
    lora_alpha: float = _field(8.0, "α: the low-rank update is scaled by α / √r, as in DePT")
    num_spaces: Optional[int] = _field(None, "K: subspaces of the multi-space projection (default by method)")
    fusion: Optional[bool] = _field(None, "train the prompt fusion's scale λ (EPT; the baselines keep it at 0)")
    space_rank: int = _field(8, "h: rank of each subspace projection")
    prompt_init: PromptInit = _field(PromptInit.TEXT, "how P starts: TEXT, RANDOM_VOCAB or RANDOM")
    prompt_init_text: str = _field("Classify the following text:", "the text whose tokens' embeddings start P (TEXT)")
    method: Method = _field(Method.EPT, "ept, or one of the baselines it reduces to: dept, pt, head")
    readout: Readout = _field(Readout.BACKBONE, "what a SEQ_CLS encoder's head reads: backbone (position 0, the "
                                                "first prompt row), first_token, mean (over the real tokens) or "
                                                "sentence_embedding (the mean, the frozen pooler skipped)")
    backend: Backend = _field(Backend.AUTO, "auto (fused kernels on CUDA, else PyTorch), triton or torch")
    task_type: Optional[TaskType] = _field(None, "SEQ_CLS, SEQ_2_SEQ_LM or CAUSAL_LM (default: from the model)")
    base_model_name_or_path: Optional[str] = _field(None, "the backbone the adapter was trained on")
    tokenizer_name_or_path: Optional[str] = _field(None, "tokenizer for prompt_init TEXT (default: the backbone's)")
    modules_to_save: Optional[List[str]] = _field(None, "backbone modules trained and saved with the adapter")
    # PEFT's spellings of prompt_init and prompt_init_text, accepted as aliases (not stored).
    prompt_tuning_init: dataclasses.InitVar[Optional[str]] = None
    prompt_tuning_init_text: dataclasses.InitVar[Optional[str]] = None

    def _alias(self, field: str, alias: str, alias_value, parse=lambda value: value):
        """``field``'s value given PEFT's ``alias`` for it: an error when both are set and differ."""
        value = getattr(self, field)
        if alias_value is None:
            return value
        default = next(f.default for f in dataclasses.fields(self) if f.name == field)
        if parse(value) != parse(default) and parse(value) != parse(alias_value):
            raise ValueError(f"{alias}: PEFT's name for {field}; got both, and they differ ({field}={value!r}, "
                             f"{alias}={alias_value!r})")
        return alias_value

    def __post_init__(self, prompt_tuning_init=None, prompt_tuning_init_text=None) -> None:
        self.prompt_init = self._alias("prompt_init", "prompt_tuning_init", prompt_tuning_init,
                                       lambda value: parse_enum(PromptInit, "prompt_init", value))
        self.prompt_init_text = self._alias("prompt_init_text", "prompt_tuning_init_text", prompt_tuning_init_text)
        self.method = parse_enum(Method, "method", self.method)
        if self.task_type is not None:
            self.task_type = parse_enum(TaskType, "task_type", self.task_type)
        self.prompt_init = parse_enum(PromptInit, "prompt_init", self.prompt_init)
        self.backend = parse_enum(Backend, "backend", self.backend)
        self.readout = parse_enum(Readout, "readout", self.readout)
        if self.readout is not Readout.BACKBONE and self.task_type not in (None, TaskType.SEQ_CLS):
            raise ValueError(f"readout: {self.readout.value!r} chooses what a classifier's head reads (SEQ_CLS); "
                             f"task_type is {self.task_type.value}")
        if self.num_virtual_tokens is None:
            self.num_virtual_tokens = _DEFAULT_PROMPT_LENGTH[self.method]
        if self.r is None:
            self.r = _DEFAULT_RANK[self.method]
        if self.num_spaces is None:
            self.num_spaces = _DEFAULT_SPACES[self.method]
        if self.fusion is None:
            self.fusion = self.method is Method.EPT
        if not isinstance(self.fusion, bool):
            raise TypeError(f"fusion: expected True or False, got {type(self.fusion).__name__} {self.fusion!r}")

        _check_int("num_virtual_tokens", self.num_virtual_tokens, 0 if self.method is Method.HEAD else 1)
        if self.token_dim is not None:
            _check_int("token_dim", self.token_dim, 1)
        _check_int("max_length", self.max_length, 1)
        _check_int("r", self.r, 0)
        _check_int("num_spaces", self.num_spaces, 0)
        _check_int("space_rank", self.space_rank, 1)
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)):
            raise TypeError(f"lora_alpha: expected a number, got {type(self.lora_alpha).__name__}")
        if not math.isfinite(self.lora_alpha):
            raise ValueError(f"lora_alpha: expected a finite number, got {self.lora_alpha}")
        if self.method is Method.HEAD and self.task_type not in (None, TaskType.SEQ_CLS):
            raise ValueError(f"method: 'head' trains a classifier's head alone; task_type {self.task_type.value} has "
                             f"no head of its own to train")
        if self.method is Method.HEAD and self.num_virtual_tokens != 0:
            raise ValueError(f"num_virtual_tokens: method='head' (the head alone) has no prompt, so "
                             f"num_virtual_tokens must be 0, got {self.num_virtual_tokens}")
        if self.method in (Method.PT, Method.HEAD) and self.r != 0:
            what = "vanilla prompt tuning" if self.method is Method.PT else "the head alone"
            raise ValueError(f"r: method={self.method.value!r} ({what}) has no low-rank update, so r must be 0, "
                             f"got {self.r}")
        if self.method is not Method.EPT and self.num_spaces != 0:
            raise ValueError(
                f"num_spaces: method={self.method.value!r} has no multi-space projection, so num_spaces must be 0, "
                f"got {self.num_spaces}"
            )
        if self.method is not Method.EPT and self.fusion:
            raise ValueError(f"fusion: method={self.method.value!r} has no prompt fusion, so fusion must be False")
        largest = max(self.num_virtual_tokens, self.max_length, self.r, self.num_spaces * self.space_rank)
        if largest > _MAX_SIZE:
            raise ValueError(f"config: a size of {largest:,} (num_virtual_tokens={self.num_virtual_tokens}, "
                             f"max_length={self.max_length}, r={self.r}, num_spaces·space_rank="
                             f"{self.num_spaces * self.space_rank}) is past {_MAX_SIZE:,}, more than any backbone "
                             f"takes; check the value")
        if self.modules_to_save is not None and (
            isinstance(self.modules_to_save, str) or not all(isinstance(name, str) for name in self.modules_to_save)
        ):
            raise TypeError(f"modules_to_save: expected a list of module names, got {self.modules_to_save!r}")
        if self.prompt_init is PromptInit.TEXT and not self.prompt_init_text:
            raise ValueError("prompt_init_text: prompt_init='TEXT' needs a non-empty init text")

    @property
    def scaling(self) -> float:
        """s = lora_alpha / sqrt(r) (DePT's scaling, not LoRA's alpha / r); 0 when r = 0."""
        return self.lora_alpha / math.sqrt(self.r) if self.r > 0 else 0.0

    @property
    def trains_fusion(self) -> bool:
        """Whether ``fusion_scale`` is trained (EPT) or frozen at 0 (the baselines, and EPT with
        ``fusion=False``)."""
        return bool(self.fusion)

    def to_dict(self) -> dict:
        """JSON-ready dict (enums as their values)."""
        return {
            field.name: (value.value if isinstance(value, enum.Enum) else value)
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_dict(cls, values: dict) -> "EPTConfig":
        """Inverse of ``to_dict`` (PEFT's ``prompt_tuning_init*`` spellings accepted); an unknown
        key is an error."""
        names = {field.name for field in dataclasses.fields(cls)} | set(PEFT_ALIASES)
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown}; known fields are {sorted(names)}")
        return cls(**values)
