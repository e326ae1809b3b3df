"""EPTConfig validation and EPTPromptEncoder: parameters, initialisation, baselines."""

import math

import pytest
import torch
from torch import nn

from ept_fast import EPTConfig, EPTPromptEncoder, reference

from helpers import padded_batch


class WordTokenizer:
    """A stand-in for a Hugging Face tokenizer: one id per whitespace-separated word."""

    def __init__(self, vocab):
        self.vocab = {word: i for i, word in enumerate(vocab)}

    def __call__(self, text):
        return {"input_ids": [self.vocab[w] for w in text.split()]}


def _encoder(**config):
    config.setdefault("prompt_init", "RANDOM")
    return EPTPromptEncoder(EPTConfig(token_dim=16, max_length=10, **config))


def test_parameters_shapes_dtypes_and_init():
    enc = _encoder(num_virtual_tokens=5, r=3, num_spaces=2, space_rank=4)
    shapes = {name: tuple(p.shape) for name, p in enc.named_parameters()}
    assert shapes == {
        "prompt": (5, 16), "lora_a": (10, 3), "lora_b": (3, 16), "fusion_scale": (),
        "proj_down": (2, 16, 4), "proj_up": (2, 4, 16), "gate_weight": (16, 2), "gate_bias": (2,),
    }
    assert all(p.dtype == torch.float32 for p in enc.parameters())
    for name in ("lora_b", "fusion_scale", "proj_up", "gate_weight", "gate_bias"):
        assert torch.count_nonzero(getattr(enc, name)) == 0, name
    bound = 1 / math.sqrt(3)  # kaiming_uniform_(a=√5) on (n, r): U(-1/√r, 1/√r)
    assert enc.lora_a.abs().max() <= bound and enc.lora_a.std() > 0.3 * bound
    assert enc.proj_down.abs().max() <= 1 / math.sqrt(4) and torch.count_nonzero(enc.proj_down) > 0
    assert 0.01 < enc.prompt.std() < 0.03


def test_at_init_forward_returns_the_prompt_and_assembly_adds_nothing():
    enc = _encoder(num_virtual_tokens=4)
    assert torch.equal(enc(), enc.prompt)
    E = torch.randn(20, 16)
    ids, mask = padded_batch([5, 2], 5, 20, left=True)
    embeds, ext = enc.assemble_inputs(ids, mask, nn.Embedding.from_pretrained(E))
    assert torch.equal(embeds, torch.cat([enc.prompt.detach().expand(2, -1, -1), E[ids]], dim=1))
    assert ext.shape == (2, 9)


def test_forward_matches_reference_away_from_init():
    enc = _encoder(num_virtual_tokens=3, r=2, num_spaces=2, space_rank=3)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_()
    expected = reference.ept_prompt(*enc.parameters(), scaling=8 / math.sqrt(2))
    assert torch.equal(enc(), expected)


def test_text_init_copies_the_embedding_rows():
    vocab = ["classify", "this", "text", "now"]
    E = torch.randn(len(vocab), 16)
    cfg = EPTConfig(num_virtual_tokens=7, prompt_init="TEXT", prompt_init_text="classify this text")
    enc = EPTPromptEncoder(cfg, word_embeddings=E, tokenizer=WordTokenizer(vocab))
    assert enc.config.token_dim == 16 and cfg.token_dim is None  # the user's config is not mutated
    assert torch.equal(enc.prompt.detach(), E[[0, 1, 2, 0, 1, 2, 0]])


def test_random_vocab_init_takes_rows_of_the_table():
    E = torch.randn(50, 16)
    enc = EPTPromptEncoder(EPTConfig(num_virtual_tokens=6, prompt_init="RANDOM_VOCAB"), word_embeddings=E)
    for row in enc.prompt.detach():
        assert (E == row).all(dim=1).any()


def test_ept_without_one_of_its_parts():
    no_fusion, no_spaces = _encoder(fusion=False), _encoder(num_spaces=0)
    assert not no_fusion.fusion_scale.requires_grad and no_fusion.config.num_spaces == 4
    assert no_spaces.fusion_scale.requires_grad and no_spaces.proj_down.shape[0] == 0
    assert _encoder().num_trainable_parameters() - no_fusion.num_trainable_parameters() == 1


def test_baselines_freeze_fusion_and_drop_parts():
    dept, pt, ept = _encoder(method="dept"), _encoder(method="pt"), _encoder()
    assert dept.config.num_spaces == 0 and dept.config.r == 30 and not dept.fusion_scale.requires_grad
    assert pt.config.r == 0 and pt.config.num_spaces == 0
    assert ept.config.num_spaces == 4 and ept.fusion_scale.requires_grad
    m, d, n = 60, 16, 10
    assert pt.num_trainable_parameters() == m * d
    assert dept.num_trainable_parameters() == m * d + n * 30 + 30 * d
    assert ept.num_trainable_parameters() == m * d + n * 30 + 30 * d + 1 + 4 * (d * 8 * 2 + d + 1)


def test_dept_prompt_stays_the_prompt_after_training_moves_the_low_rank_pair():
    enc = _encoder(method="dept", num_virtual_tokens=5, r=4)
    with torch.no_grad():
        enc.lora_b.normal_()
    assert torch.equal(enc(), enc.prompt)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(method="lora"), ValueError, r"method: expected one of 'ept', 'dept', 'pt', 'head', got 'lora'"),
        (dict(prompt_init="VOCAB"), ValueError, r"prompt_init: expected one of 'TEXT', 'RANDOM_VOCAB', 'RANDOM'"),
        (dict(backend="cuda"), ValueError, r"backend: expected one of"),
        (dict(num_virtual_tokens=0), ValueError, r"num_virtual_tokens: expected an int >= 1, got 0"),
        (dict(num_virtual_tokens=2.5), TypeError, r"num_virtual_tokens: expected an int, got float 2.5"),
        (dict(r=-1), ValueError, r"r: expected an int >= 0, got -1"),
        (dict(max_length=0), ValueError, r"max_length: expected an int >= 1, got 0"),
        (dict(space_rank=0), ValueError, r"space_rank: expected an int >= 1, got 0"),
        (dict(lora_alpha="8"), TypeError, r"lora_alpha: expected a number, got str"),
        (dict(method="pt", r=4), ValueError, r"r: method='pt' .* r must be 0, got 4"),
        (dict(method="dept", num_spaces=2), ValueError, r"num_spaces: method='dept' .* must be 0, got 2"),
        (dict(method="pt", fusion=True), ValueError,
         r"fusion: method='pt' has no prompt fusion, so fusion must be False"),
        (dict(prompt_init_text=""), ValueError, r"prompt_init_text: prompt_init='TEXT' needs a non-empty"),
    ],
)
def test_config_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        EPTConfig(**kwargs)


def test_encoder_errors():
    with pytest.raises(ValueError, match=r"config.token_dim: expected the hidden size"):
        EPTPromptEncoder(EPTConfig(prompt_init="RANDOM"))
    with pytest.raises(ValueError, match=r"token_dim: the config says 8, but word_embeddings \(the backbone's input "
                                         r"embeddings\) have hidden size 16 \(shape \(5, 16\)\)"):
        EPTPromptEncoder(EPTConfig(token_dim=8), word_embeddings=torch.zeros(5, 16))
    with pytest.raises(ValueError, match=r"tokenizer: prompt_init='TEXT' tokenizes prompt_init_text; pass a tokenizer"):
        EPTPromptEncoder(EPTConfig(), word_embeddings=torch.zeros(5, 16))
    with pytest.raises(ValueError, match=r"word_embeddings: prompt_init='RANDOM_VOCAB' copies rows"):
        EPTPromptEncoder(EPTConfig(token_dim=16, prompt_init="RANDOM_VOCAB"))
    with pytest.raises(TypeError, match=r"word_embeddings: expected an nn.Embedding or a \(V, d\) tensor, "
                                        r"got Tensor of shape \(5,\)"):
        EPTPromptEncoder(EPTConfig(prompt_init="RANDOM"), word_embeddings=torch.zeros(5))
    with pytest.raises(ValueError, match=r"tokenizer: produced id 3, but word_embeddings has only 2 rows"):
        EPTPromptEncoder(EPTConfig(prompt_init_text="a b c d"), word_embeddings=torch.zeros(2, 4),
                         tokenizer=WordTokenizer(["a", "b", "c", "d"]))
