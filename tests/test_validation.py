"""Every bad input to the public functions gets an error naming the argument, the expected
and the received shape / dtype / device / value."""

import pytest
import torch

from ept_fast import functional, reference

from helpers import padded_batch, prompt_inputs, table

ENTRY_POINTS = {"reference": reference, "functional": functional}


def _prompt_args(**overrides):
    x = prompt_inputs(4, 8, 6, 2, 3, 2, dtype=torch.float32)
    x["scaling"] = 2.0
    x.update(overrides)
    return x


def _assembly_args(**overrides):
    ids, mask = padded_batch([3, 2], 4, 10, left=False)
    x = prompt_inputs(2, 8, 6, 2, 1, 1, dtype=torch.float32)
    args = dict(
        input_ids=ids, attention_mask=mask, word_embeddings=table(10, 8, dtype=torch.float32),
        prompt_out=x["prompt"], lora_a=x["lora_a"], lora_b=x["lora_b"], scaling=2.0,
    )
    args.update(overrides)
    return args


PROMPT_ERRORS = [
    (dict(prompt=[[1.0]]), TypeError, r"prompt: expected a torch.Tensor, got list"),
    (dict(prompt=torch.zeros(4, 8, 1)), ValueError,
     r"prompt: expected a 2-d tensor of shape \(m, d\), got shape \(4, 8, 1\)"),
    (dict(prompt=torch.zeros(0, 8)), ValueError, r"prompt: expected at least one row"),
    (dict(lora_b=torch.zeros(2, 9)), ValueError, r"lora_b: expected shape \(r=2, d=8\), got \(2, 9\)"),
    (dict(lora_b=torch.zeros(3, 8)), ValueError, r"lora_b: expected shape \(r=2, d=8\), got \(3, 8\)"),
    (dict(fusion_scale=torch.zeros(1)), ValueError,
     r"fusion_scale: expected a 0-d tensor of shape \(\), got shape \(1,\)"),
    (dict(proj_down=torch.zeros(3, 7, 2)), ValueError, r"proj_down: expected shape \(K, d=8, h\), got \(3, 7, 2\)"),
    (dict(proj_up=torch.zeros(3, 5, 8)), ValueError, r"proj_up: expected shape \(K=3, h=2, d=8\), got \(3, 5, 8\)"),
    (dict(gate_weight=torch.zeros(8, 2)), ValueError, r"gate_weight: expected shape \(d=8, K=3\), got \(8, 2\)"),
    (dict(gate_bias=torch.zeros(4)), ValueError,
     r"gate_bias: expected shape \(K=3,\), got \(4,\)|gate_bias: expected shape \(K=3\), got \(4,\)"),
    (dict(lora_a=torch.zeros(6, 2, dtype=torch.long)), TypeError,
     r"lora_a: expected a floating-point tensor, got dtype torch.int64"),
    (dict(proj_up=torch.zeros(3, 2, 8, dtype=torch.float64)), TypeError,
     r"proj_up: expected dtype torch.float32 \(the dtype of prompt\), got torch.float64"),
    (dict(gate_bias=torch.zeros(3, device="meta")), ValueError,
     r"gate_bias: expected a tensor on cpu \(the device of prompt\), got one on meta"),
    (dict(scaling="2"), TypeError, r"scaling: expected a Python float, got str"),
    (dict(scaling=float("nan")), ValueError, r"scaling: expected a finite number within float32's range, got nan"),
    (dict(scaling=1e39), ValueError, r"scaling: expected a finite number within float32's range, got 1e\+39"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("overrides,error,message", PROMPT_ERRORS)
def test_ept_prompt_errors(entry, overrides, error, message):
    with pytest.raises(error, match=message):
        ENTRY_POINTS[entry].ept_prompt(**_prompt_args(**overrides))


ASSEMBLY_ERRORS = [
    (dict(input_ids=torch.zeros(2, 4)), TypeError,
     r"input_ids: expected an int64 or int32 tensor, got dtype torch.float32"),
    (dict(input_ids=torch.zeros(2, 4, dtype=torch.uint8)), TypeError,
     r"input_ids: expected an int64 or int32 tensor, got dtype torch.uint8"),
    (dict(input_ids=torch.zeros(8, dtype=torch.long)), ValueError,
     r"input_ids: expected a 2-d tensor of shape \(b, T\), got shape \(8,\)"),
    (dict(input_ids=torch.zeros(2, 0, dtype=torch.long), attention_mask=None), ValueError,
     r"input_ids: expected at least one row and one token"),
    (dict(attention_mask=torch.ones(2, 5)), ValueError, r"attention_mask: expected shape \(b=2, T=4\), got \(2, 5\)"),
    (dict(word_embeddings=torch.zeros(10, 8, dtype=torch.long)), TypeError,
     r"word_embeddings: expected a floating-point tensor"),
    (dict(prompt_out=torch.zeros(2, 9)), ValueError, r"prompt_out: expected shape \(m, d=8\), got \(2, 9\)"),
    (dict(lora_b=torch.zeros(2, 8, dtype=torch.float64)), TypeError,
     r"lora_b: expected dtype torch.float32 \(the dtype of lora_a\), got torch.float64"),
    (dict(lora_a=torch.zeros(6, 2, device="meta")), ValueError,
     r"lora_a: expected a tensor on cpu \(the device of input_ids\), got one on meta"),
    (dict(input_ids=torch.tensor([[1, 2, 10, 0], [0, 0, 0, 0]])), ValueError,
     r"input_ids: expected ids in \[0, 10\) \(the rows of word_embeddings\), got id 10"),
    (dict(input_ids=torch.tensor([[1, 2, -1, 0], [0, 0, 0, 0]])), ValueError, r"got id -1"),
    (dict(scaling=None), TypeError, r"scaling: expected a Python float, got NoneType"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("overrides,error,message", ASSEMBLY_ERRORS)
def test_assemble_errors(entry, overrides, error, message):
    with pytest.raises(error, match=message):
        ENTRY_POINTS[entry].assemble_inputs(**_assembly_args(**overrides))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_row_longer_than_max_length_names_both_numbers(entry):
    ids, mask = padded_batch([3, 7, 5], 8, 10, left=True)
    with pytest.raises(ValueError, match=r"row 1 has 7 attended tokens, but the low-rank update covers max_length=6"):
        ENTRY_POINTS[entry].assemble_inputs(**_assembly_args(input_ids=ids, attention_mask=mask))


def test_padding_beyond_max_length_is_fine():
    """Only attended tokens count against max_length: a long padded row with few real tokens passes."""
    ids, mask = padded_batch([6, 2], 12, 10, left=True)
    embeds, _ = reference.assemble_inputs(**_assembly_args(input_ids=ids, attention_mask=mask))
    assert embeds.shape == (2, 14, 8)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend: expected one of 'auto', 'triton', 'torch', got 'cuda'"):
        functional.ept_prompt(**_prompt_args(), backend="cuda")
