"""The custom ops called directly (``torch.ops.ept_fast.*``, named in the README), without the
library's entry points and their checks: shapes that disagree are an error naming the op and the
argument, and ids outside the table or the stacked adapters never make a kernel read out of
bounds (a zero row, or the last adapter; on a GPU a device assert says so under Triton's debug
mode). CPU: Triton's interpreter; CUDA where present."""

import pytest
import torch

import ept_fast.kernels  # noqa: F401  (registers the ops)

from helpers import DEVICE, prompt_inputs, table

OPS = torch.ops.ept_fast


def _assembly(b=2, T=5, V=20, d=16, m=3, n=8, r=2):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(V, (b, T), generator=g).to(DEVICE)
    return (ids, torch.ones(b, T, dtype=torch.long, device=DEVICE), table(V, d, dtype=torch.float32, device=DEVICE),
            torch.randn(m, d, generator=g).to(DEVICE), torch.randn(n, r, generator=g).to(DEVICE),
            torch.randn(r, d, generator=g).to(DEVICE))


def test_the_prompt_generator_op_checks_its_shapes():
    x = prompt_inputs(4, 16, 8, 3, 2, 2, dtype=torch.float32, device=DEVICE)
    x["lora_b"] = x["lora_b"][:, :8]
    with pytest.raises(ValueError, match=r"ept_fast::ept_prompt: lora_b: expected shape \(r=3, d=16\), got \(3, 8\)"):
        OPS.ept_prompt(*x.values(), 1.0)
    x = prompt_inputs(4, 16, 8, 3, 2, 2, dtype=torch.float32, device=DEVICE)
    outputs = OPS.ept_prompt(*x.values(), 1.0)
    with pytest.raises(ValueError, match=r"ept_fast::ept_prompt_backward: grad: expected shape \(m=4, d=16\)"):
        OPS.ept_prompt_backward(torch.ones(5, 16, device=DEVICE), *x.values(), *outputs[1:], 1.0)
    with pytest.raises(ValueError, match=r"ept_fast::ept_prompt_backward: lse: expected shape \(4,\)"):
        OPS.ept_prompt_backward(torch.ones(4, 16, device=DEVICE), *x.values(), outputs[1], outputs[2][:3],
                                *outputs[3:], 1.0)


def test_the_assembly_ops_check_their_shapes_and_dtypes():
    ids, mask, E, P, A, B = _assembly()
    with pytest.raises(ValueError, match=r"ept_fast::assemble_inputs: attention_mask: expected shape \(b=2, T=5\), "
                                         r"got \(2, 4\)"):
        OPS.assemble_inputs(ids, mask[:, :4], E, P, A, B, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"ept_fast::assemble_inputs: lora_b: expected shape \(r=2, d=16\)"):
        OPS.assemble_inputs(ids, mask, E, P, A, B[:, :8], 1.0, 1.0)
    with pytest.raises(TypeError, match=r"ept_fast::assemble_inputs: input_ids: expected an integer dtype"):
        OPS.assemble_inputs(ids.float(), mask, E, P, A, B, 1.0, 1.0)
    out, _, token_index, lengths = OPS.assemble_inputs(ids, mask, E, P, A, B, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"ept_fast::assemble_inputs_backward: token_index: expected shape "
                                         r"\(b=2, n=8\), got \(2, 7\)"):
        OPS.assemble_inputs_backward(torch.ones_like(out), token_index[:, :7], lengths, P, A, B, 1.0)
    with pytest.raises(ValueError, match=r"ept_fast::assemble_inputs_backward: grad: expected at least m=3 positions"):
        OPS.assemble_inputs_backward(torch.ones(2, 2, 16, device=DEVICE), token_index, lengths, P, A, B, 1.0)
    stacked = (P[None], torch.tensor([3], device=DEVICE), A[None], B[None], torch.ones(1, device=DEVICE))
    with pytest.raises(ValueError, match=r"ept_fast::assemble_inputs_mixed: adapter_ids: expected shape \(b=2\), got "
                                         r"\(3,\)"):
        OPS.assemble_inputs_mixed(ids, mask, E, *stacked, torch.zeros(3, dtype=torch.long, device=DEVICE), 1.0,
                                  False)


def test_ids_outside_the_table_read_no_row():
    ids, mask, E, P, _, _ = _assembly()
    A, B = torch.zeros(8, 0, device=DEVICE), torch.zeros(0, 16, device=DEVICE)  # no low-rank update: rows as looked up
    ids[0, 1], ids[1, 3] = E.shape[0], -1  # past the table, and negative
    runs = [OPS.assemble_inputs(ids, mask, E, P, A, B, 1.0, 1.0)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # the same every time: nothing read from past the table
    assert not runs[0][0, 3 + 1].any() and not runs[0][1, 3 + 3].any()
    assert torch.equal(runs[0][0, 3 + 2], E[ids[0, 2]])


def test_adapter_ids_and_prompt_lengths_outside_the_stack_read_in_bounds():
    ids, mask, E, P, A, B = _assembly()
    prompts, lora_a, lora_b = torch.stack([P, 2 * P]), torch.stack([A, A]), torch.stack([B, -B])
    lengths, scalings = torch.tensor([3, 2], device=DEVICE), torch.tensor([1.0, 0.5], device=DEVICE)

    def run(adapter_ids, prompt_lengths=lengths):
        return OPS.assemble_inputs_mixed(ids, mask, E, prompts, prompt_lengths, lora_a, lora_b, scalings,
                                         torch.tensor(adapter_ids, device=DEVICE), 1.0, False)[0]

    assert torch.equal(run([0, 2]), run([0, 1]))  # an id past N reads the last adapter, not past the stack
    assert torch.equal(run([-1, 1]), run([0, 1]))
    assert torch.equal(run([0, 1], torch.tensor([9, 2], device=DEVICE)), run([0, 1], torch.tensor([3, 2],
                                                                                                  device=DEVICE)))


def test_the_backward_ops_keep_a_callers_token_index_and_lengths_in_bounds():
    """Only the forward makes token_index and lengths; a raw backward call may pass anything: the
    kernel reads no gradient row past the batch (the same answer every time, as with in-range ones)."""
    ids, mask, E, P, A, B = _assembly()
    out, _, token_index, lengths = OPS.assemble_inputs(ids, mask, E, P, A, B, 1.0, 1.0)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    clean = OPS.assemble_inputs_backward(grad, token_index, lengths, P, A, B, 1.0)
    for bad_index, bad_lengths in ((token_index, torch.full_like(lengths, 999)),
                                   (torch.full_like(token_index, 999), lengths),
                                   (torch.full_like(token_index, -7), lengths)):
        runs = [OPS.assemble_inputs_backward(grad, bad_index, bad_lengths, P, A, B, 1.0) for _ in range(2)]
        assert all(torch.equal(a, b) and torch.isfinite(a).all() for a, b in zip(*runs))
    # lengths past T read as T: every real token, as the clean call
    long = OPS.assemble_inputs_backward(grad, token_index, torch.full_like(lengths, 999), P, A, B, 1.0)
    assert all(torch.allclose(a, b) for a, b in zip(long, clean))


def test_empty_sizes_and_mixed_dtypes_are_errors():
    x = prompt_inputs(4, 16, 8, 3, 2, 2, dtype=torch.float32, device=DEVICE)
    empty = dict(x, prompt=x["prompt"][:0])
    with pytest.raises(ValueError, match=r"ept_fast::ept_prompt: expected sizes m of at least 1, got 0"):
        OPS.ept_prompt(*empty.values(), 1.0)
    mixed = dict(x, prompt=x["prompt"].half())
    with pytest.raises(TypeError, match=r"ept_fast::ept_prompt: expected the eight parameters in one dtype"):
        OPS.ept_prompt(*mixed.values(), 1.0)
    ids, mask, E, P, A, B = _assembly()
    with pytest.raises(ValueError, match=r"ept_fast::assemble_inputs: expected sizes T of at least 1, got 0"):
        OPS.assemble_inputs(ids[:, :0], mask[:, :0], E, P, A, B, 1.0, 1.0)
