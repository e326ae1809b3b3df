import json
import math
import os

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter; the variable must be set
# before any @triton.jit function is defined (that is, before ept_fast.kernels is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import DEVICE, WORDS  # noqa: E402


def _to_tf32(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (10 mantissa bits, nearest, ties away from zero), as
    the tensor cores read them."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def _make_the_interpreter_dot_like_the_gpu():
    """The interpreter accepts tl.dot shapes and dtypes that NVIDIA's compiler does not (and
    multiplies bf16 bit patterns), and multiplies float32 exactly whatever input_precision
    says. Make it refuse what the compiler refuses, and round operands the way the tensor
    cores do for ``tf32`` (one product of TF32-rounded operands) and ``tf32x3`` (a = big +
    small, a·b ≈ big·small' + small·big' + big·big'), so that the parity tests check the
    precision the kernels really run at."""
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    create_dot = interpreter.InterpreterBuilder.create_dot

    def gpu_like_dot(self, a, b, acc, input_precision, *args, **kwargs):
        m, k = a.data.shape[-2:]
        n = b.data.shape[-1]
        assert min(m, n, k) >= 16, f"tl.dot with a dimension < 16: ({m}x{k}) @ ({k}x{n})"
        widths = (a.dtype.primitive_bitwidth, b.dtype.primitive_bitwidth)
        assert widths[0] == widths[1], f"tl.dot operands of different widths: {a.dtype} and {b.dtype}"
        assert widths[0] >= 32, f"tl.dot on {a.dtype} operands: upcast to float32 first"
        if a.data.dtype != np.float32 or input_precision == ir.INPUT_PRECISION.IEEE:
            return create_dot(self, a, b, acc, input_precision, *args, **kwargs)
        big_a, big_b = _to_tf32(a.data), _to_tf32(b.data)
        product = np.matmul(big_a, big_b, dtype=np.float32)
        if input_precision == ir.INPUT_PRECISION.TF32x3:
            small_a, small_b = _to_tf32(a.data - big_a), _to_tf32(b.data - big_b)
            corrections = np.matmul(big_a, small_b, dtype=np.float32) + np.matmul(small_a, big_b, dtype=np.float32)
            product = corrections + product
        else:
            assert input_precision == ir.INPUT_PRECISION.TF32, f"no emulation of {input_precision}"
        return interpreter.TensorHandle(product + acc.data, acc.dtype.scalar)

    interpreter.InterpreterBuilder.create_dot = gpu_like_dot


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _make_the_interpreter_dot_like_the_gpu()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _poison_kernel_buffers(monkeypatch):
    """Kernel output buffers start as NaN (floats) or -7 (integers): an unwritten element fails."""
    from ept_fast.kernels import _launch

    allocate = _launch.new_buffer

    def poisoned(like, shape, dtype=None):
        buffer = allocate(like, shape, dtype)
        if buffer.is_floating_point():
            buffer.fill_(math.nan)
        elif buffer.dtype != torch.bool:
            buffer.fill_(-7)
        return buffer

    monkeypatch.setattr(_launch, "new_buffer", poisoned)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# The tiny local models and sst2-shaped files of the command-line and server tests.
@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A tiny BERT classifier and a tiny T5, saved with the packaged MiniLM tokenizer."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        T5Config,
        T5ForConditionalGeneration,
    )

    from ept_fast.offline import minilm_path

    root = tmp_path_factory.mktemp("models")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=128))
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=tokenizer.vocab_size, d_model=32, d_ff=48, num_layers=1, num_heads=2, d_kv=16,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=0))
    for name, model in (("bert", bert), ("t5", t5)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.fixture(scope="session")
def sst2_files(tmp_path_factory):
    """sst2-shaped JSON-lines files: positive words -> 1, negative -> 0."""
    root = tmp_path_factory.mktemp("data")
    rng = torch.Generator().manual_seed(0)
    paths = []
    for split, count in (("train", 48), ("validation", 16), ("test", 16)):
        lines = []
        for i in range(count):
            label = i % 2
            word = WORDS[int(torch.randint(3, (1,), generator=rng)) + (0 if label else 3)]
            lines.append(json.dumps({"sentence": f"the movie was {word}", "label": label}))
        path = root / f"{split}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return paths
