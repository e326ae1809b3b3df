"""model(input_ids=..., adapter_names=[...]): every row of a mixed batch gives what the same row
gives alone under its own adapter, for classifiers, seq2seq and causal LMs, cache on and off."""

import pytest
import torch

from ept_fast import get_ept_model

from tiny_models import BUILDERS, adapter_config, moved, task_batch, tiny_bert_classifier, tiny_gpt2, tiny_t5

# Three adapters of different prompt lengths and methods; rows assigned out of order.
ADAPTERS = {"a": dict(num_virtual_tokens=4), "b": dict(num_virtual_tokens=2, method="dept", num_spaces=None),
            "c": dict(num_virtual_tokens=3, method="pt", r=None, num_spaces=None)}
ROWS = ["c", "a", "b"]


def _model(task, builder):
    torch.manual_seed(0)
    model = None
    for index, (name, overrides) in enumerate(ADAPTERS.items()):
        if model is None:
            model = get_ept_model(builder(), adapter_config(task, **overrides), adapter_name=name)
        else:
            model.add_adapter(name, adapter_config(task, **overrides))
        model.set_adapter(name)
        moved(model)
        if task == "SEQ_CLS":
            with torch.no_grad():
                model.head_copies[name][0].weight.add_(float(index + 1))
    return model.eval()


def _alone(model, name, row, fn):
    active = model.active_adapter
    model.set_adapter(name)
    try:
        return fn(row)
    finally:
        model.set_adapter(active)


@pytest.mark.parametrize("task", list(BUILDERS))
@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_each_row_gives_what_it_gives_alone(task, left):
    model = _model(task, BUILDERS[task])
    ids, mask, labels = task_batch(task, left=left)
    with torch.no_grad():
        mixed = model(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=ROWS).logits
        longest = max(config["num_virtual_tokens"] for config in ADAPTERS.values())
        for i, name in enumerate(ROWS):
            alone = _alone(model, name, i, lambda i: model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1],
                                                           labels=labels[i:i + 1]).logits)
            row = mixed[i:i + 1]
            if task == "CAUSAL_LM":  # a shorter prompt has padding before it, up to the longest one
                row = row[:, longest - ADAPTERS[name]["num_virtual_tokens"]:]
            assert torch.allclose(row, alone, rtol=1e-5, atol=1e-5), (task, name)


@pytest.mark.parametrize("task,builder", [("SEQ_2_SEQ_LM", tiny_t5), ("CAUSAL_LM", tiny_gpt2)])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_per_row_matches_generation_alone(task, builder, use_cache):
    model = _model(task, builder)
    ids, mask, _ = task_batch(task, left=task == "CAUSAL_LM")
    options = dict(max_new_tokens=4, do_sample=False, use_cache=use_cache, pad_token_id=0)
    mixed = model.generate(ids, attention_mask=mask, adapter_names=ROWS, **options)
    for i, name in enumerate(ROWS):
        alone = _alone(model, name, i, lambda i: model.generate(ids[i:i + 1], attention_mask=mask[i:i + 1], **options))
        assert torch.equal(mixed[i, :alone.shape[1]], alone[0]), (task, name)


def test_max_length_counts_input_ids_as_in_peft():
    """generate(max_length=L) on a causal LM: L counts input_ids and the new tokens, not the prompt
    (nor a mixed batch's padding), so every row gets as many tokens mixed as alone."""
    model = _model("CAUSAL_LM", tiny_gpt2)
    ids, mask, _ = task_batch("CAUSAL_LM", left=True)
    options = dict(max_length=ids.shape[1] + 3, do_sample=False, pad_token_id=0)
    mixed = model.generate(ids, attention_mask=mask, adapter_names=ROWS, **options)
    assert mixed.shape[1] == ids.shape[1] + 3
    with pytest.raises(ValueError, match=r"max_length: counts input_ids \(\d+ tokens\) and the new tokens, so it "
                                         r"leaves none"):
        model.generate(ids, attention_mask=mask, adapter_names=ROWS, max_length=ids.shape[1], pad_token_id=0)
    with pytest.raises(ValueError, match=r"transformers' default of 20 new tokens: row 1 has 4 attended "
                                         r"tokens, and 20 new ones"):
        model.generate(ids, attention_mask=mask, adapter_names=ROWS, pad_token_id=0)  # transformers' default: 20
    for i, name in enumerate(ROWS):
        alone = _alone(model, name, i, lambda i: model.generate(ids[i:i + 1], attention_mask=mask[i:i + 1], **options))
        assert torch.equal(mixed[i], alone[0]), name


def test_training_through_a_mixed_batch_reaches_each_rows_adapter(tmp_path):
    from ept_fast import param_groups

    model = _model("SEQ_CLS", tiny_bert_classifier)
    model.set_trainable_adapters(["a", "b"])
    groups = param_groups(model, lr_prompt=0.3, lr_lowrank=1e-4)
    for name in ("a", "b"):  # each trained adapter's low-rank parts at their own rate
        encoder = model.prompt_encoders[name]
        assert any(p is encoder.lora_a for p in groups[1]["params"])
        assert any(p is encoder.prompt for p in groups[0]["params"])
    assert not any(p.requires_grad for p in model.prompt_encoders["c"].parameters())
    ids, mask, labels = task_batch("SEQ_CLS")
    model(input_ids=ids[:2], attention_mask=mask[:2], labels=labels[:2], adapter_names=["a", "b"]).loss.backward()
    assert (model.prompt_encoders["a"].prompt.grad.abs().sum() > 0
            and model.prompt_encoders["b"].prompt.grad.abs().sum() > 0)
    assert model.head_copies["a"][0].weight.grad.abs().sum() > 0
    assert model.prompt_encoders["c"].prompt.grad is None and model.head_copies["c"][0].weight.grad is None
    model.add_adapter("d", model.peft_config["a"])  # adding, loading or deleting another keeps a and b training
    model.delete_adapter("d")
    assert model.prompt_encoders["a"].prompt.requires_grad and model.prompt_encoders["b"].prompt.requires_grad
    assert not model.prompt_encoders["c"].prompt.requires_grad
    model.set_adapter("c")  # the active adapter alone trains again
    assert not model.prompt_encoders["a"].prompt.requires_grad and model.prompt_encoders["c"].prompt.requires_grad
    for bad, message in (("a", r"expected a list of adapter names, got 'a'"), (["zz"], r"no adapter named 'zz'"),
                         (3, r"expected a list of adapter names, got 3")):
        with pytest.raises(ValueError, match=message):
            model.set_trainable_adapters(bad)
    model.save_pretrained(tmp_path, selected_adapters=["a"])
    model.load_adapter(tmp_path / "a", adapter_name="served")  # for inference, as PEFT loads by default
    with pytest.raises(ValueError, match=r"\['served'\] were loaded for inference; load them with is_trainable=True"):
        model.set_trainable_adapters(["a", "served"])
    model.set_trainable_adapters(name for name in ("a", "b"))  # any iterable of names
    assert model.prompt_encoders["a"].prompt.requires_grad and model.prompt_encoders["b"].prompt.requires_grad


def test_adapter_name_errors():
    model = _model("SEQ_CLS", tiny_bert_classifier)
    ids, mask, _ = task_batch("SEQ_CLS")
    with pytest.raises(ValueError, match=r"adapter_names: no adapter named \['zz'\]; this model has \['a', 'b', 'c'\]"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["a", "zz", "b"])
    with pytest.raises(ValueError, match=r"adapter_names: expected one name per row of input_ids \(3\), got 2"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["a", "b"])
    with pytest.raises(ValueError, match=r"adapter_names: expected one adapter name \(a str\) per row, got \[None\]"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["zz", None, "b"])
    with model.disable_adapter(), pytest.raises(ValueError, match=r"adapter_names: adapters are disabled"):
        model(input_ids=ids, attention_mask=mask, adapter_names=ROWS)


def test_a_row_longer_than_its_adapters_reach_is_refused():
    """Each row is checked against its own adapter's max_length, not the longest one's."""
    model = _model("SEQ_CLS", tiny_bert_classifier)
    model.add_adapter("short", adapter_config("SEQ_CLS", max_length=5))
    ids, mask, _ = task_batch("SEQ_CLS")  # rows of 7, 4 and 6 attended tokens
    with pytest.raises(ValueError, match=r"input_ids: row 2 has 6 attended tokens, but its adapter \(1\) covers "
                                         r"max_length=5 positions"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["a", "short", "short"])
    model(input_ids=ids[1:2], attention_mask=mask[1:2], adapter_names=["short"])  # 4 tokens: fine


def test_a_decoder_classifier_pools_each_rows_own_last_token():
    """GPT-2's classifier (head `score`) pools the last position: shorter prompts pad on the left,
    and a right-padded row is pooled at its last attended token."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    def classifier():
        return GPT2ForSequenceClassification(GPT2Config(vocab_size=64, n_positions=64, n_embd=40, n_layer=2, n_head=2,
                                                        num_labels=3, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                                        attn_pdrop=0.0)).eval()

    model = _model("SEQ_CLS", classifier)
    ids = torch.randint(2, 64, (3, 6))
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=ROWS).logits
        for i, name in enumerate(ROWS):
            alone = _alone(model, name, i, lambda i: model(input_ids=ids[i:i + 1]).logits)
            assert torch.allclose(mixed[i:i + 1], alone, rtol=1e-5, atol=1e-5), name

        # Right-padded rows (as the CLI batches them) classify as they do unpadded, mixed or not:
        # given inputs_embeds the backbone pools the last position, so the head moves each row's
        # last attended position there.
        lengths = [6, 3, 1]
        mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
        padded = torch.where(mask.bool(), ids, 0)
        mixed = model(input_ids=padded, attention_mask=mask, adapter_names=ROWS).logits
        for i, (name, n) in enumerate(zip(ROWS, lengths)):
            unpadded = _alone(model, name, i, lambda i: model(input_ids=ids[i:i + 1, :n]).logits)
            in_a_batch = _alone(model, name, i, lambda i: model(input_ids=padded, attention_mask=mask).logits[i:i + 1])
            assert torch.allclose(mixed[i:i + 1], unpadded, rtol=1e-5, atol=1e-5), name
            assert torch.allclose(in_a_batch, unpadded, rtol=1e-5, atol=1e-5), name
