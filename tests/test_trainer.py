"""EPTTrainer / EPTSeq2SeqTrainer on tiny models: two learning-rate groups, adapter-only
checkpoints, load_best_model_at_end, resume_from_checkpoint, predict_with_generate."""

import logging
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import Seq2SeqTrainingArguments, TrainingArguments

from ept_fast import EPTModel, get_ept_model, param_groups
from ept_fast.trainer import EPTSeq2SeqTrainer, EPTTrainer

from tiny_models import VOCAB, adapter_config, moved, tiny_bert_classifier, tiny_gpt2, tiny_t5

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]


def _classification_rows(count=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (count, 6), generator=generator)
    return [{"input_ids": row, "attention_mask": torch.ones(6, dtype=torch.long), "labels": int(row[0] % 3)}
            for row in ids]


def _classifier(seed=0, adapter_name="default"):
    torch.manual_seed(seed)
    return get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS"), adapter_name=adapter_name)


def _arguments(out, **overrides):
    values = dict(output_dir=str(out), per_device_train_batch_size=4, learning_rate=0.05, max_steps=6,
                  report_to=[], use_cpu=True, logging_steps=1, save_strategy="steps", save_steps=2, seed=0,
                  data_seed=0)
    values.update(overrides)
    return TrainingArguments(**values)


def test_the_optimizer_has_the_two_learning_rate_groups(tmp_path):
    model = _classifier()
    trainer = EPTTrainer(model=model, args=_arguments(tmp_path, weight_decay=0.01),
                         train_dataset=_classification_rows(), lowrank_learning_rate=2e-3)
    optimizer = trainer.create_optimizer()
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.05, 0.01), (2e-3, 0.01)]
    grouped = [{id(p) for p in group["params"]} for group in optimizer.param_groups]
    expected = [{id(p) for p in group["params"]} for group in param_groups(model, 0.05, 2e-3)]
    assert grouped == expected
    with pytest.raises(TypeError, match=r"model: EPTTrainer trains an EPTModel \(get_ept_model\), got Bert"):
        EPTTrainer(model=tiny_bert_classifier(), args=_arguments(tmp_path))


def test_only_the_process_that_saves_writes(tmp_path, monkeypatch):
    trainer = EPTTrainer(model=_classifier(), args=_arguments(tmp_path / "run"))
    monkeypatch.setattr(type(trainer.args), "should_save", property(lambda self: False))
    trainer.save_model(str(tmp_path / "worker"))
    assert not (tmp_path / "worker").exists()
    monkeypatch.undo()
    trainer.save_model(str(tmp_path / "main"))
    assert sorted(p.name for p in (tmp_path / "main").iterdir()) == sorted(ADAPTER_FILES + ["training_args.bin"])


@pytest.mark.parametrize("adapter_name", ["default", "topics"])
def test_checkpoints_hold_the_adapter_only_and_the_best_one_is_loaded_at_the_end(adapter_name, tmp_path):
    torch.manual_seed(0)
    model = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS"), adapter_name=adapter_name)
    rows = _classification_rows()
    # The highest evaluation loss is "best": an early checkpoint, so loading it changes the model.
    args = _arguments(tmp_path, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                      metric_for_best_model="loss", greater_is_better=True)
    trainer = EPTTrainer(model=model, args=args, train_dataset=rows, eval_dataset=_classification_rows(12, seed=1))
    result = trainer.train()
    assert result.global_step == 6 and math.isfinite(result.training_loss)

    def folder(step):
        return tmp_path / f"checkpoint-{step}" / ("" if adapter_name == "default" else adapter_name)

    for step in (2, 4, 6):
        saved = sorted(p.name for p in folder(step).iterdir())
        assert (set(ADAPTER_FILES) <= set(saved) and "model.safetensors" not in saved
                and "pytorch_model.bin" not in saved)
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-6")
    best_tensors = load_file(str(folder(best.rsplit("-", 1)[1]) / "adapter_model.safetensors"))
    last_tensors = load_file(str(folder(6) / "adapter_model.safetensors"))
    current = model.adapter_state_dict()
    assert all(torch.equal(current[k], best_tensors[k]) for k in best_tensors)
    assert not torch.equal(current["prompt_encoder.prompt"], last_tensors["prompt_encoder.prompt"])
    trainer.save_model(str(tmp_path / "final"))
    subfolder = None if adapter_name == "default" else adapter_name
    assert set(ADAPTER_FILES) <= {p.name for p in (tmp_path / "final" / (subfolder or "")).iterdir()}
    loaded = EPTModel.from_pretrained(tiny_bert_classifier(), tmp_path / "final", subfolder=subfolder)
    assert loaded.active_peft_config.num_virtual_tokens == 4


@pytest.mark.parametrize("adapter_name", ["default", "topics"])
def test_resume_from_checkpoint_ends_where_a_straight_run_ends(adapter_name, tmp_path):
    rows = _classification_rows()
    straight = _classifier(adapter_name=adapter_name)
    EPTTrainer(model=straight, args=_arguments(tmp_path / "straight"), train_dataset=rows).train()

    first = _classifier(adapter_name=adapter_name)
    EPTTrainer(model=first, args=_arguments(tmp_path / "resumed", max_steps=6), train_dataset=rows).train()
    resumed = _classifier(adapter_name=adapter_name)
    EPTTrainer(model=resumed, args=_arguments(tmp_path / "resumed"), train_dataset=rows).train(
        resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    a, b = straight.adapter_state_dict(), resumed.adapter_state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    untouched = _classifier(adapter_name=adapter_name).adapter_state_dict()
    assert not torch.allclose(b["prompt_encoder.prompt"], untouched["prompt_encoder.prompt"])


def test_seq2seq_trainer_predicts_with_generate(tmp_path):
    torch.manual_seed(0)
    model = get_ept_model(tiny_t5(), adapter_config("SEQ_2_SEQ_LM"))
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(2, VOCAB, (6,), generator=generator),
             "attention_mask": torch.ones(6, dtype=torch.long),
             "labels": torch.randint(2, VOCAB, (3,), generator=generator)} for _ in range(8)]
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                    per_device_eval_batch_size=4,
                                    max_steps=2, report_to=[], use_cpu=True, predict_with_generate=True,
                                    generation_max_length=5, save_strategy="no")
    trainer = EPTSeq2SeqTrainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    model.eval()
    prediction = trainer.predict(rows)
    expected = model.generate(torch.stack([r["input_ids"] for r in rows]),
                              attention_mask=torch.stack([r["attention_mask"] for r in rows]), max_length=5)
    predicted = torch.as_tensor(prediction.predictions)
    assert torch.equal(predicted[:, :expected.shape[1]], expected)


def test_the_backbones_own_inputs_reach_it(tmp_path):
    """remove_unused_columns keeps what the backbone takes (token_type_ids), not only EPTModel.forward's."""
    rows = [dict(row, token_type_ids=torch.zeros(6, dtype=torch.long)) for row in _classification_rows(8)]
    trainer = EPTTrainer(model=_classifier(), args=_arguments(tmp_path), train_dataset=rows)
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"input_ids", "attention_mask", "token_type_ids", "labels"} <= set(batch)


def test_a_causal_lms_smoothed_loss_skips_the_prompt_positions(tmp_path):
    """With label smoothing the Trainer computes the loss from the logits: with the labels padded
    over the prompt's positions and shifted, it is the model's own loss as the smoothing goes to zero."""
    from transformers.trainer_pt_utils import LabelSmoother

    torch.manual_seed(0)
    model = moved(get_ept_model(tiny_gpt2(), adapter_config("CAUSAL_LM")))
    ids = torch.randint(2, VOCAB, (4, 7))
    trainer = EPTTrainer(model=model, args=_arguments(tmp_path, label_smoothing_factor=0.1), train_dataset=[])
    trainer.label_smoother = LabelSmoother(epsilon=1e-9)
    smoothed = trainer.compute_loss(model, {"input_ids": ids, "labels": ids.clone()})
    assert torch.allclose(smoothed, model(input_ids=ids, labels=ids).loss, rtol=1e-6)


def test_the_spread_floor_adds_vicregs_variance_term_while_training_only(tmp_path):
    from ept_fast.trainer import SPREAD_WEIGHT, frozen_sentence_embedding, spread_shortfall

    torch.manual_seed(0)
    model = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS", readout="sentence_embedding"))
    rows = _classification_rows(count=8)
    batch = {key: torch.stack([torch.as_tensor(row[key]) for row in rows]) for key in rows[0]}
    read = []
    handle = model.head_copies["default"][0].register_forward_hook(lambda module, args, output: read.append(args[0]))
    model.train()
    plain = model(**batch).loss
    handle.remove()
    frozen = frozen_sentence_embedding(model, batch)
    with model.disable_adapter():  # the frozen pass is the backbone alone: the mean over its last layer
        hidden = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(frozen, hidden.mean(1), atol=1e-6)
    for floor in (0.0, 0.5, 50.0):  # 50: far above any spread, so the term is on
        trainer = EPTTrainer(model=model, args=_arguments(tmp_path), train_dataset=rows, spread_floor=floor)
        loss = trainer.compute_loss(model, batch)
        expected = plain + SPREAD_WEIGHT * spread_shortfall(read[0], frozen, floor)
        assert torch.allclose(loss, expected, atol=1e-5), floor
    assert loss > plain + 1  # the floor of 50 is far from met
    model.zero_grad()
    loss.backward()
    assert model.prompt_encoder.prompt.grad.abs().sum() > 0  # the term trains the prompt
    model.eval()  # validation and prediction: the loss alone
    assert torch.allclose(trainer.compute_loss(model, batch), model(**batch).loss)
    assert spread_shortfall(torch.randn(8, 4) * 3, torch.randn(8, 4), 0.5) == 0  # wider than the floor: nothing


def test_the_spread_floor_is_checked(tmp_path, caplog):
    rows = _classification_rows()
    torch.manual_seed(0)
    backbone = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS"))  # readout: backbone (position 0)
    with pytest.raises(ValueError, match=r"spread_floor: compares what an encoder classifier's head reads, the mean "
                                         r"over the real tokens, .* readout 'backbone'"):
        EPTTrainer(model=backbone, args=_arguments(tmp_path), train_dataset=rows, spread_floor=0.5)
    for bad in (-0.1, float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match=r"spread_floor: expected a number >= 0 \(0: off\)"):
            EPTTrainer(model=backbone, args=_arguments(tmp_path), train_dataset=rows, spread_floor=bad)
    from ept_fast import EPTConfig

    head = get_ept_model(tiny_bert_classifier(), EPTConfig(method="head", max_length=12, readout="mean"))
    with pytest.raises(ValueError, match=r"spread_floor: the head alone reads the frozen backbone's features"):
        EPTTrainer(model=head, args=_arguments(tmp_path), train_dataset=rows, spread_floor=0.5)
    mean = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS", readout="mean"))
    with caplog.at_level(logging.WARNING, logger="ept_fast.trainer"):
        EPTTrainer(model=mean, args=_arguments(tmp_path), train_dataset=rows, spread_floor=0.5)
        EPTTrainer(model=mean, args=_arguments(tmp_path, per_device_train_batch_size=1), train_dataset=rows)
        assert not caplog.records  # a batch of two rows or more, or no floor: nothing to say
        EPTTrainer(model=mean, args=_arguments(tmp_path, per_device_train_batch_size=1), train_dataset=rows,
                   spread_floor=0.5)  # one row has no spread: the floor would be skipped without a word
    assert "spread_floor 0.5: measures the spread over each batch's rows, so with per_device_train_batch_size 1 it " \
           "never applies" in caplog.text
    several = _arguments(tmp_path)
    several._n_gpu = 2  # one process driving two GPUs: the head would run once per replica
    with pytest.raises(ValueError, match=r"spread_floor: measures the spread over one batch on one device; this "
                                         r"process drives 2 GPUs \(DataParallel\)"):
        EPTTrainer(model=mean, args=several, train_dataset=rows, spread_floor=0.5)
