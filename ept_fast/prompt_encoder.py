"""``EPTPromptEncoder``: the trainable part of EPT as an ``nn.Module``."""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import functional
from .budget import adapter_parameters
from .config import EPTConfig, PromptInit
from .layout import PromptLayout

EmbeddingTable = Union[nn.Embedding, torch.Tensor]

_MAX_PARAMETERS = 1 << 30  # 4 GiB of float32: far past any prompt adapter, short of an allocator's error


class AssembledInputs(NamedTuple):
    """What the assembly gives the backbone, and where each row's slots come from."""

    inputs_embeds: torch.Tensor  # (b, m+T, d)
    attention_mask: torch.Tensor  # (b, m+T)
    layout: PromptLayout


def _table(word_embeddings: EmbeddingTable) -> torch.Tensor:
    """The (V, d) weight of an embedding module, or the tensor itself."""
    weight = word_embeddings.weight if isinstance(word_embeddings, nn.Embedding) else word_embeddings
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(
            f"word_embeddings: expected an nn.Embedding or a (V, d) tensor, got {type(word_embeddings).__name__}"
            + (f" of shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else "")
        )
    return weight


def embedding_scale(word_embeddings: EmbeddingTable) -> float:
    """The factor a backbone's input embedding multiplies its rows by: 1 for a plain
    ``nn.Embedding`` (or a bare table); ``embed_scale`` for a scaled one (Gemma's
    ``*ScaledWordEmbedding``, BART's with ``scale_embedding``). Any other change of the lookup
    is refused. Worked out once per module and dtype (no tensor op, no host sync, afterwards)."""
    if not isinstance(word_embeddings, nn.Embedding) or type(word_embeddings).forward is nn.Embedding.forward:
        return 1.0
    known = _SCALES.setdefault(word_embeddings, {})
    dtype = word_embeddings.weight.dtype
    if dtype not in known:
        known[dtype] = _scale_of(word_embeddings)
    return known[dtype]


_SCALES: "weakref.WeakKeyDictionary[nn.Embedding, Dict[torch.dtype, float]]" = weakref.WeakKeyDictionary()


def _scale_of(embeddings: nn.Embedding) -> float:
    scale = getattr(embeddings, "embed_scale", None)
    if isinstance(scale, torch.Tensor):  # Gemma: rows * embed_scale.to(weight.dtype), so rounded to that dtype
        value = getattr(embeddings, "scalar_embed_scale", None)
        value = float(scale) if value is None else float(value)
        return float(torch.tensor(value, dtype=torch.float64).to(embeddings.weight.dtype))
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):  # BART: rows * a Python float
        return float(scale)
    raise ValueError(
        f"model: its input embedding {type(embeddings).__name__} changes the lookup in a way other than "
        f"a scale factor (embed_scale); ept_fast assembles inputs from the table and cannot follow it"
    )


def _init_text_ids(tokenizer, text: str, length: int) -> torch.Tensor:
    """Token ids of ``text``, repeated or truncated to ``length`` (as PEFT's TEXT init)."""
    ids = list(tokenizer(text)["input_ids"])
    if not ids:
        raise ValueError(f"prompt_init_text: the tokenizer produced no tokens for {text!r}")
    repeats = math.ceil(length / len(ids))
    return torch.tensor((ids * repeats)[:length], dtype=torch.long)


class EPTPromptEncoder(nn.Module):
    """Owns the eight EPT parameters (float32, whatever the backbone's dtype) and computes
    the prompt P* and the backbone input.

    Args:
        config: the adapter's hyper-parameters; ``token_dim`` may be left None when
            ``word_embeddings`` is given.
        word_embeddings: the frozen (V, d) word-embedding table (or its ``nn.Embedding``, whose
            ``embed_scale``, if any, the rows are multiplied by);
            needed by ``prompt_init`` TEXT and RANDOM_VOCAB.
        tokenizer: a Hugging Face tokenizer; needed by ``prompt_init`` TEXT.
        initialize_prompt: False leaves ``prompt`` at zeros, for a caller that loads saved
            values right after (no table or tokenizer needed then).

    Parameters (m, d, n, r, K, h as in ``docs/ept.md``): ``prompt`` (m, d),
    ``lora_a`` (n, r), ``lora_b`` (r, d), ``fusion_scale`` (), ``proj_down`` (K, d, h),
    ``proj_up`` (K, h, d), ``gate_weight`` (d, K), ``gate_bias`` (K,).
    """

    def __init__(
        self,
        config: EPTConfig,
        word_embeddings: Optional[EmbeddingTable] = None,
        tokenizer=None,
        initialize_prompt: bool = True,
    ) -> None:
        super().__init__()
        table = _table(word_embeddings) if word_embeddings is not None else None
        self.embed_scale = embedding_scale(word_embeddings) if word_embeddings is not None else 1.0
        if config.token_dim is None:
            if table is None:
                raise ValueError("config.token_dim: expected the hidden size (or pass word_embeddings), got None")
            config = dataclasses.replace(config, token_dim=table.shape[1])
        elif table is not None and table.shape[1] != config.token_dim:
            raise ValueError(
                f"token_dim: the config says {config.token_dim}, but word_embeddings (the backbone's input "
                f"embeddings) have hidden size {table.shape[1]} (shape {tuple(table.shape)})"
            )
        self.config = config
        m, d, n, r = config.num_virtual_tokens, config.token_dim, config.max_length, config.r
        K, h = config.num_spaces, config.space_rank
        parameters = adapter_parameters(config, d)
        if parameters > _MAX_PARAMETERS:
            raise ValueError(f"config: {parameters:,} adapter parameters (m={m}, n={n}, r={r}, K={K}, h={h}, d={d}) "
                             f"would take {4 * parameters / 2 ** 30:,.0f} GiB in float32; check the sizes")
        fp32 = dict(dtype=torch.float32)

        initial = self._initial_prompt(table, tokenizer) if initialize_prompt else torch.zeros(m, d, **fp32)
        self.prompt = nn.Parameter(initial)
        self.lora_a = nn.Parameter(torch.empty(n, r, **fp32))
        self.lora_b = nn.Parameter(torch.zeros(r, d, **fp32))
        self.fusion_scale = nn.Parameter(torch.zeros((), **fp32), requires_grad=config.trains_fusion)
        self.proj_down = nn.Parameter(torch.empty(K, d, h, **fp32))
        self.proj_up = nn.Parameter(torch.zeros(K, h, d, **fp32))
        self.gate_weight = nn.Parameter(torch.zeros(d, K, **fp32))
        self.gate_bias = nn.Parameter(torch.zeros(K, **fp32))
        if r > 0:
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        for down in self.proj_down:
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))

    def _initial_prompt(self, table: Optional[torch.Tensor], tokenizer) -> torch.Tensor:
        m, d, init = self.config.num_virtual_tokens, self.config.token_dim, self.config.prompt_init
        if m == 0:  # method "head": no prompt to start
            return torch.zeros(0, d, dtype=torch.float32)
        if init is PromptInit.RANDOM:
            return torch.randn(m, d, dtype=torch.float32) * 0.02
        if table is None:
            raise ValueError(f"word_embeddings: prompt_init={init.value!r} copies rows of the word-embedding table; "
                             f"pass it")
        if init is PromptInit.TEXT:
            if tokenizer is None:
                raise ValueError("tokenizer: prompt_init='TEXT' tokenizes prompt_init_text; pass a tokenizer")
            ids = _init_text_ids(tokenizer, self.config.prompt_init_text, m)
            if int(ids.max()) >= table.shape[0]:
                raise ValueError(
                    f"tokenizer: produced id {int(ids.max())}, but word_embeddings has only {table.shape[0]} rows"
                )
        else:
            ids = torch.randint(table.shape[0], (m,))
        rows = table.detach()[ids.to(table.device)].to(device="cpu", dtype=torch.float32)
        return rows * self.embed_scale  # the rows as the backbone's lookup gives them

    @property
    def scaling(self) -> float:
        """s = lora_alpha / sqrt(r), the low-rank update's scale (``EPTConfig.scaling``)."""
        return self.config.scaling

    def forward(self) -> torch.Tensor:
        """The prompt P* (m, d), float32 (empty for method "head", m = 0)."""
        if self.config.num_virtual_tokens == 0:
            return self.prompt
        return functional.ept_prompt(
            self.prompt, self.lora_a, self.lora_b, self.fusion_scale, self.proj_down, self.proj_up,
            self.gate_weight, self.gate_bias, self.scaling, backend=self.config.backend,
        )

    def assemble(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        word_embeddings: EmbeddingTable,
        prompt_out: Optional[torch.Tensor] = None,
    ) -> AssembledInputs:
        """The backbone's ``inputs_embeds`` (b, m+T, d) and ``attention_mask`` (b, m+T), and
        their ``layout``. ``prompt_out`` is P* when the caller already computed it (``self()``
        otherwise)."""
        if prompt_out is None:
            prompt_out = self()
        embeds, mask = functional.assemble_inputs(
            input_ids, attention_mask, _table(word_embeddings), prompt_out, self.lora_a, self.lora_b,
            self.scaling, backend=self.config.backend, embed_scale=embedding_scale(word_embeddings),
        )
        return AssembledInputs(embeds, mask, PromptLayout(prompt_out.shape[0], input_ids.shape[1]))

    def assemble_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        word_embeddings: EmbeddingTable,
        prompt_out: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The backbone's ``(inputs_embeds (b, m+T, d), attention_mask (b, m+T))`` (``assemble``
        without the layout)."""
        return self.assemble(input_ids, attention_mask, word_embeddings, prompt_out)[:2]

    def num_trainable_parameters(self) -> int:
        """Parameters of this encoder that train now (``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"method={c.method.value}, m={c.num_virtual_tokens}, d={c.token_dim}, n={c.max_length}, r={c.r}, "
            f"K={c.num_spaces}, h={c.space_rank}, backend={c.backend.value}"
        )


def assemble_mixed_inputs(
    encoders: Sequence[EPTPromptEncoder],
    prompts: Sequence[torch.Tensor],
    adapter_ids: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    word_embeddings: EmbeddingTable,
    padding_side: str = "right",
) -> AssembledInputs:
    """A batch whose row i runs ``encoders[adapter_ids[i]]`` (with its P*, ``prompts[a]``):
    ``inputs_embeds`` (b, m+T, d), ``attention_mask`` (b, m+T) and their ``layout``, m the
    longest prompt, a shorter one padded on ``padding_side`` (``functional.assemble_inputs_mixed``)."""
    stacked = functional.stack_adapters(prompts, [e.lora_a for e in encoders], [e.lora_b for e in encoders],
                                        [e.scaling for e in encoders])
    backends = {e.config.backend for e in encoders}
    embeds, mask = functional.assemble_inputs_mixed(
        input_ids, attention_mask, _table(word_embeddings), stacked.prompts, stacked.prompt_lengths, stacked.lora_a,
        stacked.lora_b, stacked.scalings, adapter_ids, backend=backends.pop() if len(backends) == 1 else "auto",
        embed_scale=embedding_scale(word_embeddings), padding_side=padding_side, max_lengths=stacked.max_lengths,
    )
    layout = PromptLayout(stacked.prompts.shape[1], input_ids.shape[1], padding_side,
                          stacked.prompt_lengths[adapter_ids])
    return AssembledInputs(embeds, mask, layout)
