"""get_ept_model / EPTModel on tiny T5, GPT-2 and BERT classifiers built from configs."""

import json
import math
import os

import pytest
import torch

from ept_fast import EPTConfig, EPTModel, get_ept_model, param_groups, reference

from helpers import needs_modules
from tiny_models import BUILDERS, HIDDEN, tiny_bert_classifier, tiny_gpt2, tiny_t5
from tiny_models import adapter_config as _config
from tiny_models import moved as _moved
from tiny_models import task_batch as _batch

TASKS = list(BUILDERS)


def _manual_inputs(model, ids, mask):
    enc = model.prompt_encoder
    prompt = reference.ept_prompt(*enc.parameters(), scaling=enc.scaling)
    table = model.base_model.get_input_embeddings().weight
    return reference.assemble_inputs(ids, mask, table, prompt, enc.lora_a, enc.lora_b, enc.scaling)


@pytest.mark.parametrize("task", TASKS)
def test_forward_loss_equals_the_manual_pipeline(task):
    model = _moved(get_ept_model(BUILDERS[task](), _config(task)))
    ids, mask, labels = _batch(task)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    embeds, ext_mask = _manual_inputs(model, ids, mask)
    if task == "CAUSAL_LM":
        labels = torch.cat([torch.full((3, 4), -100), labels], dim=1)
    expected = model.base_model(inputs_embeds=embeds, attention_mask=ext_mask, labels=labels).loss
    assert torch.equal(loss, expected)


@pytest.mark.parametrize("task", TASKS)
def test_gradients_reach_only_the_adapter_and_the_head(task):
    model = _moved(get_ept_model(BUILDERS[task](), _config(task)))
    ids, mask, labels = _batch(task)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected_heads = {f"head_copies.default.0.{n}" for n in ("weight", "bias")} if task == "SEQ_CLS" else set()
    assert trainable == ({f"prompt_encoders.default.{n}" for n, _ in model.prompt_encoder.named_parameters()}
                         | expected_heads)
    assert with_grad == trainable


def test_task_type_and_token_dim_come_from_the_model():
    for task, build in BUILDERS.items():
        model = get_ept_model(build(), EPTConfig(num_virtual_tokens=2, max_length=8, prompt_init="RANDOM"))
        assert model.active_peft_config.task_type.value == task and model.active_peft_config.token_dim == HIDDEN


def _greedy(base, embeds, mask, steps, update, attended):
    """Greedy decoding by full forwards, positions counted over the attended tokens (as HF's generate);
    row i's j-th new token gets row attended[i] + j of the low-rank update (n, d), as the input's do."""
    table, tokens = base.get_input_embeddings(), []
    for step in range(steps):
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        token = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1].argmax(-1)
        tokens.append(token)
        embeds = torch.cat([embeds, (table(token) + update[attended + step])[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("use_cache", [True, False])
def test_causal_generate_matches_a_manual_greedy_decode(use_cache):
    model = _moved(get_ept_model(tiny_gpt2(), _config("CAUSAL_LM")))
    ids, mask, _ = _batch("CAUSAL_LM", left=True)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, use_cache=use_cache,
                         pad_token_id=0)
    embeds, ext_mask = _manual_inputs(model, ids, mask)
    enc = model.prompt_encoder
    update = enc.scaling * enc.lora_a @ enc.lora_b
    assert torch.equal(out[:, :7], ids)
    assert torch.equal(out[:, 7:], _greedy(model.base_model, embeds, ext_mask, 5, update, mask.sum(1)))


@pytest.mark.parametrize("task,builder", [("SEQ_2_SEQ_LM", tiny_t5), ("CAUSAL_LM", tiny_gpt2)])
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_matches_the_backbone_on_the_same_inputs_embeds(task, builder, use_cache, num_beams):
    model = _moved(get_ept_model(builder(), _config(task)))
    ids, mask, _ = _batch(task, left=task == "CAUSAL_LM")
    options = dict(max_new_tokens=4, do_sample=False, num_beams=num_beams, use_cache=use_cache, pad_token_id=0)
    out = model.generate(input_ids=ids, attention_mask=mask, **options)
    embeds, ext_mask = _manual_inputs(model, ids, mask)
    table = model.base_model.get_input_embeddings()
    hook = table.register_forward_hook(_updated_new_tokens(model, mask)) if task == "CAUSAL_LM" else None
    expected = model.base_model.generate(inputs_embeds=embeds, attention_mask=ext_mask, **options)
    if hook is not None:
        hook.remove()
        expected = torch.cat([ids, expected], dim=1)
    assert torch.equal(out, expected)


def _updated_new_tokens(model, mask):
    """A hook for a causal LM's input embedding: the j-th token it embeds in row i (beams next to
    each other) gets row attended[i] + j of the low-rank update s·A·B."""
    enc, embedded = model.prompt_encoder, [0]
    update = enc.scaling * enc.lora_a @ enc.lora_b

    def hook(module, args, output):
        first = mask.sum(1).repeat_interleave(output.shape[0] // mask.shape[0]) + embedded[0]
        embedded[0] += 1
        return output + update[first][:, None]

    return hook


@pytest.mark.parametrize("mixed", [False, True])
def test_a_causal_lms_generated_tokens_are_what_forward_predicts_on_the_whole_sequence(mixed):
    """Generation and a forward over input + generated tokens (teacher forcing, as training sees
    the answer) agree at every new position: each new token gets its position's low-rank update.
    Rows without padding: the backbone's forward numbers positions from the first slot, generate
    from the first attended one."""
    model = _moved(get_ept_model(tiny_gpt2(), _config("CAUSAL_LM", max_length=16)))
    ids, _, _ = _batch("CAUSAL_LM")
    mask = torch.ones_like(ids)
    names = None
    if mixed:
        model.add_adapter("other", _config("CAUSAL_LM", num_virtual_tokens=2, max_length=14, r=2))
        _moved(model)  # the active adapter's parameters, moved again
        model.set_adapter("other")
        _moved(model)
        model.set_adapter("default")
        names = ["default", "other", "default"]
    out = model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=6,
                         do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    full_mask = torch.cat([mask, torch.ones(3, 6, dtype=mask.dtype)], dim=1)
    forward = model(input_ids=out.sequences, attention_mask=full_mask, adapter_names=names).logits
    generated = torch.stack(out.logits, dim=1)  # (3, 6, V)
    torch.testing.assert_close(generated, forward[:, -7:-1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"max_new_tokens: row 0 has 7 attended tokens, and 10 new ones would take it "
                                         r"to 17 positions, past the n=16"):
        model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=10, pad_token_id=0)


def test_a_causal_lms_max_length_counts_input_ids_and_new_tokens_as_in_peft():
    from transformers import GenerationConfig

    model = _moved(get_ept_model(tiny_gpt2(), _config("CAUSAL_LM", max_length=16)))
    ids, mask, _ = _batch("CAUSAL_LM", left=True)
    config = GenerationConfig(max_length=10, do_sample=False, pad_token_id=0)
    assert model.generate(input_ids=ids, attention_mask=mask, generation_config=config).shape == (3, 10)
    assert model.generate(input_ids=ids, attention_mask=mask, max_length=9, pad_token_id=0).shape == (3, 9)
    assert config.max_length == 10  # the caller's config is left as it was
    with pytest.raises(ValueError, match=r"generation_config.max_length: counts input_ids \(7 tokens\)"):
        model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(max_length=7))
    model.base_model.generation_config.max_new_tokens = 3  # a config without a length: the backbone's, as transformers
    plain = GenerationConfig(do_sample=False, pad_token_id=0)
    assert model.generate(input_ids=ids, attention_mask=mask, generation_config=plain).shape == (3, 10)
    model.base_model.generation_config.max_new_tokens, model.base_model.generation_config.max_length = None, 30
    with pytest.raises(ValueError, match=r"the backbone's generation_config.max_length: row 0 has 7 attended tokens, "
                                         r"and 23 new ones would take it to 30 positions, past the n=16"):
        model.generate(input_ids=ids, attention_mask=mask, pad_token_id=0)
    with pytest.raises(ValueError, match=r"prompt_lookup_num_tokens: assisted decoding embeds candidate tokens"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, prompt_lookup_num_tokens=2)


def test_a_causal_lms_generated_tokens_get_the_update_in_the_assemblys_precision():
    model = _moved(get_ept_model(tiny_gpt2(), _config("CAUSAL_LM", max_length=16))).double()
    ids = _batch("CAUSAL_LM")[0]
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True,
                         return_dict_in_generate=True)
    forward = model(input_ids=out.sequences).logits[:, -5:-1]
    assert torch.equal(torch.stack(out.logits, dim=1), forward.float())  # generate gives float32 logits


def test_merged_prompt_gives_the_same_generation_and_is_dropped_for_training():
    model = _moved(get_ept_model(tiny_t5(), _config("SEQ_2_SEQ_LM")))
    ids, mask, _ = _batch("SEQ_2_SEQ_LM")
    before = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4)
    model.merge_prompt()
    assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4), before)
    model.train()
    assert not model._merged_prompts
    model.merge_prompt()  # merged while training: the cache is not read while gradients flow
    _, _, labels = _batch("SEQ_2_SEQ_LM")
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert model.prompt_encoder.prompt.grad is not None and model.prompt_encoder.gate_weight.grad is not None
    with torch.no_grad():
        assert model._prompt_of("default") is model._merged_prompts["default"]


@pytest.mark.parametrize("task", TASKS)
def test_save_and_load_round_trip_is_bit_exact(task, tmp_path):
    torch.manual_seed(1)
    model = _moved(get_ept_model(BUILDERS[task](), _config(task)))
    if task == "SEQ_CLS":
        with torch.no_grad():
            model.head_copies.default[0].weight.add_(1.0)  # a trained head travels with the adapter
    ids, mask, labels = _batch(task)
    logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                         "adapter_model.safetensors"]
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "EPT" and saved["task_type"] == task and saved["num_virtual_tokens"] == 4
    assert saved["format_version"] == 1 and "ept_fast_version" in saved and saved["token_dim"] == HIDDEN

    torch.manual_seed(2)  # a fresh backbone: same frozen weights, other head and adapter init
    fresh = BUILDERS[task]()
    fresh.load_state_dict(model.base_model.state_dict())
    if task == "SEQ_CLS":
        torch.nn.init.normal_(fresh.classifier.weight)  # a copy of it starts the loaded adapter's head
    loaded = EPTModel.from_pretrained(fresh, tmp_path / "adapter")
    assert torch.equal(loaded(input_ids=ids, attention_mask=mask, labels=labels).logits, logits)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert EPTModel.from_pretrained(BUILDERS[task](), tmp_path / "adapter",
                                    is_trainable=True).get_nb_trainable_parameters()[0] > 0


def test_loading_errors(tmp_path):
    model = get_ept_model(tiny_t5(), _config("SEQ_2_SEQ_LM"))
    with pytest.raises(FileNotFoundError, match=r"adapter directory: expected a folder .* does not exist"):
        EPTModel.from_pretrained(tiny_t5(), tmp_path / "nowhere")
    model.save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected adapter_model.safetensors, which is missing"):
        EPTModel.from_pretrained(tiny_t5(), tmp_path / "a")

    model.save_pretrained(tmp_path / "b")
    wider = tiny_t5().__class__(tiny_t5().config.__class__(**{**tiny_t5().config.to_dict(), "d_model": 48}))
    with pytest.raises(ValueError, match=r"token_dim: the config says 40, but word_embeddings \(the backbone's input "
                                         r"embeddings\) have hidden size 48"):
        EPTModel.from_pretrained(wider, tmp_path / "b")

    config_file = tmp_path / "b" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "format_version": 99}))
    with pytest.raises(ValueError, match=r"expected adapter format_version 1, got 99"):
        EPTModel.from_pretrained(tiny_t5(), tmp_path / "b")


def test_save_writes_through_a_temporary_file(tmp_path, monkeypatch):
    """A failing write leaves the previous adapter intact and no stray files."""
    model = get_ept_model(tiny_t5(), _config("SEQ_2_SEQ_LM"))
    model.save_pretrained(tmp_path)
    before = (tmp_path / "adapter_model.safetensors").read_bytes()
    import ept_fast.serialization as serialization

    def broken(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        _moved(model).save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_print_trainable_parameters_uses_peft_format(capsys):
    model = get_ept_model(tiny_t5(), _config("SEQ_2_SEQ_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    m, d, n, r, K, h = 4, HIDDEN, 12, 3, 2, 4
    assert trainable == m * d + n * r + r * d + 1 + K * (2 * d * h + d + 1)
    assert total == trainable + sum(p.numel() for p in model.base_model.parameters())
    model.print_trainable_parameters()
    assert capsys.readouterr().out == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}\n"
    )


def test_param_groups_put_the_prompt_and_head_apart_from_the_rest_of_the_encoder():
    model = get_ept_model(tiny_bert_classifier(), _config("SEQ_CLS"))
    groups = param_groups(model, lr_prompt=0.3, lr_lowrank=1e-4)
    enc = model.prompt_encoder
    assert [g["lr"] for g in groups] == [0.3, 1e-4]
    slow = {enc.lora_a, enc.lora_b, enc.fusion_scale, enc.proj_down, enc.proj_up, enc.gate_weight, enc.gate_bias}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in slow}
    assert {id(p) for p in groups[0]["params"]} == {id(enc.prompt)} | {
        id(p) for p in model.head_copies.default.parameters()}


def test_pt_method_builds_what_peft_prompt_tuning_builds():
    """method='pt': inputs_embeds = [P ; E(input_ids)], mask = [1 … ; mask], as PEFT's concatenation."""
    model = get_ept_model(tiny_gpt2(), _config("CAUSAL_LM", method="pt", r=None, num_spaces=None))
    ids, mask, labels = _batch("CAUSAL_LM")
    embeds, ext_mask = model.assemble_inputs(ids, mask)
    prompt = model.prompt_encoder.prompt
    peft_embeds = torch.cat([prompt.unsqueeze(0).expand(3, -1, -1), model.word_embeddings(ids)], dim=1)
    peft_mask = torch.cat([torch.ones(3, 4, dtype=mask.dtype), mask], dim=1)
    assert torch.equal(embeds, peft_embeds) and torch.equal(ext_mask, peft_mask)
    peft_labels = torch.cat([torch.full((3, 4), -100), labels], dim=1)
    expected = model.base_model(inputs_embeds=peft_embeds, attention_mask=peft_mask, labels=peft_labels).loss
    assert torch.equal(model(input_ids=ids, attention_mask=mask, labels=labels).loss, expected)
    assert model.get_nb_trainable_parameters()[0] == 4 * HIDDEN


def test_dept_method_adds_the_low_rank_update_only():
    model = _moved(get_ept_model(tiny_t5(), _config("SEQ_2_SEQ_LM", method="dept", num_spaces=None)))
    ids, mask, _ = _batch("SEQ_2_SEQ_LM")
    embeds, _ = model.assemble_inputs(ids, mask)
    enc = model.prompt_encoder
    assert torch.equal(embeds[:, :4], enc.prompt.detach().expand(3, -1, -1))  # P* = P: no fusion, no subspaces
    L = enc.scaling * enc.lora_a @ enc.lora_b
    expected = model.word_embeddings(ids) + L[:7]
    assert torch.allclose(embeds[0, 4:], expected[0], atol=1e-6)


def test_bad_inputs():
    model = get_ept_model(tiny_t5(), _config("SEQ_2_SEQ_LM", max_length=5))
    ids, mask, labels = _batch("SEQ_2_SEQ_LM")
    with pytest.raises(ValueError, match=r"row 0 has 7 attended tokens, but the low-rank update covers max_length=5"):
        model(input_ids=ids, attention_mask=mask, labels=labels)
    with pytest.raises(ValueError, match=r"inputs_embeds: EPT builds the backbone's inputs_embeds from input_ids"):
        model(input_ids=ids, inputs_embeds=torch.zeros(3, 7, HIDDEN), labels=labels)
    with pytest.raises(ValueError, match=r"input_ids: required"):
        model.generate(attention_mask=mask)
    with pytest.raises(ValueError, match=r"generate: needs task_type SEQ_2_SEQ_LM or CAUSAL_LM, this model is SEQ_CLS"):
        get_ept_model(tiny_bert_classifier(), _config("SEQ_CLS")).generate(input_ids=ids)

    class NoEmbeddings(torch.nn.Module):
        def get_input_embeddings(self):
            return None

    with pytest.raises(ValueError, match=r"model: expected a backbone whose get_input_embeddings\(\) "
                                         r"returns an nn.Embedding, got NoneType"):
        get_ept_model(NoEmbeddings(), _config("CAUSAL_LM"))
    class Encoder(torch.nn.Module):
        def get_input_embeddings(self):
            return torch.nn.Embedding(10, 8)

    with pytest.raises(ValueError, match=r"task_type: cannot infer it from Encoder; set EPTConfig\(task_type=...\)"):
        get_ept_model(Encoder(), EPTConfig(prompt_init="RANDOM"))
    with pytest.raises(ValueError, match=r"tokenizer: prompt_init='TEXT' tokenizes prompt_init_text, but no tokenizer"):
        get_ept_model(tiny_t5(), EPTConfig(num_virtual_tokens=2))


def test_backbones_with_scaled_input_embeddings():
    """Gemma multiplies its looked-up rows by √d (embed_scale): the prompt starts from scaled rows,
    and every token is the backbone's own lookup plus the low-rank update."""
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(0)
    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
    lookup = gemma.get_input_embeddings()
    model = get_ept_model(gemma, _config("CAUSAL_LM", method="dept", num_spaces=None, prompt_init="TEXT"),
                          tokenizer=lambda text: {"input_ids": [5, 6]})
    assert torch.equal(model.prompt_encoder.prompt.detach(), lookup(torch.tensor([5, 6, 5, 6])).float())
    _moved(model)
    ids, mask, labels = _batch("CAUSAL_LM")
    embeds, _ = model.assemble_inputs(ids, mask)
    enc = model.prompt_encoder
    rows = torch.stack([torch.cat([enc.lora_a[:n], torch.zeros(7 - n, 3)]) for n in (7, 4, 6)])  # right padding
    update = torch.where(mask.bool().unsqueeze(-1), enc.scaling * rows @ enc.lora_b, torch.zeros(()))
    assert torch.allclose(embeds[:, 4:], lookup(ids) + update, atol=1e-5)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", ["gemma", "bart"])
def test_the_scale_is_applied_as_the_backbone_rounds_it(kind):
    """bf16: Gemma multiplies by embed_scale rounded to bf16 (a tensor), BART by a Python float."""
    from ept_fast.prompt_encoder import embedding_scale

    module, name = {"gemma": ("gemma", "GemmaTextScaledWordEmbedding"),
                    "bart": ("bart", "BartScaledWordEmbedding")}[kind]
    scaled = getattr(pytest.importorskip(f"transformers.models.{module}.modeling_{module}"), name, None)
    if scaled is None:
        pytest.skip(f"this transformers has no {name}")
    torch.manual_seed(0)
    lookup = scaled(64, 512, 0, embed_scale=512 ** 0.5).to(torch.bfloat16)
    ids = torch.randint(64, (3, 9))
    no_rank = torch.zeros(8, 0), torch.zeros(0, 512)
    embeds, _ = reference.assemble_inputs(ids, None, lookup.weight, torch.zeros(1, 512), *no_rank, 0.0,
                                          embedding_scale(lookup))
    assert torch.equal(embeds[:, 1:], lookup(ids))


def test_text_init_uses_the_given_tokenizer():
    class Tok:
        def __call__(self, text):
            return {"input_ids": [5, 6, 7]}

    model = get_ept_model(tiny_t5(), _config("SEQ_2_SEQ_LM", prompt_init="TEXT"), tokenizer=Tok())
    table = model.word_embeddings.weight
    assert torch.equal(model.prompt_encoder.prompt.detach(), table[[5, 6, 7, 5]])


@needs_modules("datasets")
def test_works_as_the_model_of_a_transformers_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = get_ept_model(tiny_bert_classifier(), _config("SEQ_CLS"))
    ids, mask, labels = _batch("SEQ_CLS")
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=3, learning_rate=0.1,
                             report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert "prompt_encoders.default.prompt" in moved and "head_copies.default.0.weight" in moved


def test_a_causal_lm_named_like_gpt2_gets_its_loss_without_transformers_warning(capfd):
    """GPT2LMHeadModel's name gives transformers no loss type: it warns, then uses ForCausalLM.
    The model names it, so the README's example prints nothing, and the loss is the same."""
    backbone = tiny_gpt2()
    ids = torch.randint(2, 64, (2, 6))
    model = get_ept_model(backbone, _config("CAUSAL_LM"))
    assert backbone.loss_type == "ForCausalLM"
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
    assert "loss_type=None" not in capfd.readouterr().err


def test_class_labels_outside_the_head_are_an_error():
    model = get_ept_model(tiny_bert_classifier(), _config("SEQ_CLS"))
    ids = torch.randint(2, 64, (2, 6))
    with pytest.raises(ValueError, match=r"labels: expected class ids in \[0, 3\) \(the head.s 3 classes\), got \[5\]"):
        model(input_ids=ids, labels=torch.tensor([0, 5]))
    assert torch.isfinite(model(input_ids=ids, labels=torch.tensor([0, 1])).loss)
