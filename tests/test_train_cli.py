"""``ept-fast train`` end to end on tiny local models and files (offline)."""

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ept_fast import EPTConfig, get_ept_model
from ept_fast.cli import main as cli_main
from ept_fast.tasks import format_rows, get_task
from ept_fast.train import main, parse_args
from ept_fast.training import TrainArguments, train
from ept_fast.training.options import default_spread_floor

from helpers import WORDS, needs_offline_data

pytestmark = needs_offline_data  # the tiny models use the packaged MiniLM tokenizer; the default run, BBC News

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _args(tiny_models, files, out, *extra):
    return ["--model", str(tiny_models / "bert"), "--train-file", files[0], "--validation-file", files[1],
            "--test-file", files[2], "--output-dir", str(out), "--num-virtual-tokens", "4", "--max-length", "16",
            "--r", "2", "--num-spaces", "2", "--space-rank", "2", "--prompt-init", "RANDOM_VOCAB", "--batch-size", "8",
            "--eval-batch-size", "16", "--max-steps", "6", "--eval-steps", "3", "--save-steps", "3",
            "--device", "cpu", *extra]


def test_inputs_longer_than_max_length_are_counted_and_reported(tiny_models, sst2_files, tmp_path, capsys):
    from transformers import AutoTokenizer

    long_files = []
    for index, path in enumerate(sst2_files):  # every third sentence made longer than --max-length 16
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        for i, row in enumerate(rows):
            row["sentence"] += " and the plot was slow" * 3 if i % 3 == 0 else ""
        long_files.append(tmp_path / f"{index}.jsonl")
        long_files[-1].write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(_args(tiny_models, [str(p) for p in long_files], tmp_path / "run", "--task", "sst2")) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "bert")
    expected = {split: sum(len(tokenizer(json.loads(line)["sentence"])["input_ids"]) > 16
                           for line in path.read_text().splitlines())
                for split, path in zip(("train", "validation", "test"), long_files)}
    assert expected["train"] > 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["inputs_cut_to_max_length"] == expected
    assert (f"inputs longer than 16 tokens (--max-length=16), cut to it: train {expected['train']} of 48, validation "
            f"{expected['validation']} of 16, test {expected['test']} of 16") in capsys.readouterr().out


def test_a_causal_lms_cut_leaves_room_for_the_answer_and_says_so(tiny_models, capsys):
    from transformers import AutoTokenizer

    from ept_fast.config import TaskType
    from ept_fast.training.data import Collator, report_inputs_cut
    from ept_fast.training.output import RUN_DEFINING, check_same_options

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "bert", eos_token="[SEP]")
    collate = Collator(tokenizer, TaskType.CAUSAL_LM, None, 20, 12)
    rows = [{"source": "word " * n, "target": "yes"} for n in (3, 12)]
    assert collate.input_limit == 8 and report_inputs_cut(collate, {"train": rows}) == {"train": 1}
    assert "inputs longer than 8 tokens (--max-length=20 less --max-new-tokens=12), cut to it: train 1 of 2" in \
        capsys.readouterr().out
    assert "max_new_tokens" in RUN_DEFINING  # a resume with another room for the answer is refused
    for too_many in (20, 25):  # no room left for the input
        with pytest.raises(ValueError, match=rf"--max-new-tokens: a causal LM's max_length \(20\) holds the input "
                                             rf"and the answer, and {too_many} new tokens leave no room for the input"):
            Collator(tokenizer, TaskType.CAUSAL_LM, None, 20, too_many)
    assert Collator(tokenizer, TaskType.SEQ_2_SEQ_LM, None, 20, 25).input_limit == 20  # its answer is not its input
    with pytest.raises(ValueError, match=r"--max_new_tokens 12 -> 2"):
        check_same_options({"max_new_tokens": 12}, {"max_new_tokens": 2}, "the checkpoint")


def test_a_run_writes_adapter_metrics_and_plot(tiny_models, sst2_files, tmp_path, capsys):
    assert main(_args(tiny_models, sst2_files, tmp_path / "run", "--task", "sst2")) == 0
    out = tmp_path / "run"
    for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json", "training.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"accuracy"} and 0 <= metrics["test"]["accuracy"] <= 1
    assert metrics["steps"] == 6 and metrics["train_examples_per_s"] > 0 and metrics["peak_memory_mb"] > 0
    assert metrics["config"]["task"] == "sst2" and metrics["versions"]["torch"] == torch.__version__
    assert [h["step"] for h in metrics["history"] if "eval_accuracy" in h] == [3, 6]
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in capsys.readouterr().out


def test_seq2seq_is_scored_on_generated_strings(tiny_models, sst2_files, tmp_path):
    args = _args(tiny_models, sst2_files, tmp_path / "t5", "--task", "sst2", "--max-new-tokens", "3")
    args[1] = str(tiny_models / "t5")
    assert main(args) == 0
    metrics = json.loads((tmp_path / "t5" / "metrics.json").read_text())
    assert metrics["task_type"] == "SEQ_2_SEQ_LM" and "accuracy" in metrics["test"]


def test_plain_text_label_files_without_a_task(tiny_models, tmp_path):
    rows = ["text,label\n"] + [f"sample {i},{i % 3}\n" for i in range(12)]
    files = []
    for split in ("train", "validation", "test"):
        path = tmp_path / f"{split}.csv"
        path.write_text("".join(rows))
        files.append(str(path))
    assert main(_args(tiny_models, files, tmp_path / "custom", "--max-steps", "2", "--eval-steps", "2")) == 0
    metrics = json.loads((tmp_path / "custom" / "metrics.json").read_text())
    assert metrics["task"] == "custom" and set(metrics["test"]) == {"accuracy", "f1_macro"}


def _losses(out):
    return [(e["step"], e["loss"]) for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
            if "loss" in e]


def _same_adapter(a_dir, b_dir):
    a = load_file(str(a_dir / "adapter_model.safetensors"))
    b = load_file(str(b_dir / "adapter_model.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_run_ends_with_the_same_losses_and_adapter(tiny_models, sst2_files, tmp_path):
    """Trainer's resume_from_checkpoint: the same loss at every logged step and the same final
    adapter as the run that was never interrupted."""
    straight = parse_args(_args(tiny_models, sst2_files, tmp_path / "straight", "--task", "sst2"))
    train(straight)
    interrupted = parse_args(_args(tiny_models, sst2_files, tmp_path / "resumed", "--task", "sst2"))
    assert train(interrupted, stop_after_steps=4) == {"stopped_at_step": 4}
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint: the checkpoint .*checkpoint-4 was made with other "
                                         r"options \(--max_steps 6 -> 9\); resume with the same options, or start "
                                         r"over with --overwrite"):
        train(parse_args(_args(tiny_models, sst2_files, tmp_path / "resumed", "--task", "sst2", "--resume",
                               "--max-steps", "9")))
    train(parse_args(_args(tiny_models, sst2_files, tmp_path / "resumed", "--task", "sst2", "--resume",
                           "--eval-batch-size", "5")))  # how it is run may change
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight") and len(_losses(tmp_path / "straight")) == 6
    assert _same_adapter(tmp_path / "straight", tmp_path / "resumed")


def test_resume_after_a_crash_during_a_save_takes_the_last_complete_checkpoint(tiny_models, sst2_files, tmp_path):
    straight = parse_args(_args(tiny_models, sst2_files, tmp_path / "straight", "--task", "sst2", "--save-steps", "2"))
    train(straight)
    out = tmp_path / "crashed"
    assert train(parse_args(_args(tiny_models, sst2_files, out, "--task", "sst2", "--save-steps", "2")),
                 stop_after_steps=4) == {"stopped_at_step": 4}
    # The save of step 4 cut short while writing the optimizer's state (trainer_state.json comes last).
    (out / "checkpoint-4" / "optimizer.pt").write_bytes((out / "checkpoint-4" / "optimizer.pt").read_bytes()[:100])
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    train(parse_args(_args(tiny_models, sst2_files, out, "--task", "sst2", "--save-steps", "2", "--resume")))
    assert _losses(out) == _losses(tmp_path / "straight") and _same_adapter(tmp_path / "straight", out)


CODE_RAN = []


def _mark():
    CODE_RAN.append(True)


class _Payload:
    def __reduce__(self):
        return _mark, ()


def test_resume_never_runs_code_from_a_checkpoint(tiny_models, sst2_files, tmp_path):
    import pickle

    out = tmp_path / "run"
    train(parse_args(_args(tiny_models, sst2_files, out, "--task", "sst2")), stop_after_steps=2)
    for name in ("optimizer.pt", "rng_state.pth"):  # the states Trainer reads back on resume
        original = (out / "checkpoint-2" / name).read_bytes()
        torch.save({"state": _Payload()}, out / "checkpoint-2" / name)
        with pytest.raises(pickle.UnpicklingError):
            train(parse_args(_args(tiny_models, sst2_files, out, "--task", "sst2", "--resume")))
        (out / "checkpoint-2" / name).write_bytes(original)
    assert CODE_RAN == []


def test_user_errors_are_clear_and_lose_nothing(tiny_models, sst2_files, tmp_path, capsys):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("precious")
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2")) == 2
    assert "--output_dir: " in capsys.readouterr().err and (out / "adapter_model.safetensors").read_text() == "precious"
    assert main(_args(tiny_models, sst2_files, tmp_path / "none", "--resume")) == 2
    assert "--resume_from_checkpoint: no complete checkpoint-N folder" in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "x", "--task", "glue")) == 2
    assert "task: unknown task 'glue'" in capsys.readouterr().err
    missing = list(sst2_files)
    missing[1] = str(tmp_path / "nope.jsonl")
    assert main(_args(tiny_models, missing, tmp_path / "y", "--task", "sst2")) == 2
    assert "nope.jsonl: not found" in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "z", "--label-column", "stars")) == 2
    assert "label column 'stars' is absent" in capsys.readouterr().err
    empty = list(sst2_files)
    empty[2] = str(tmp_path / "empty.jsonl")
    Path(empty[2]).write_text("")
    assert main(_args(tiny_models, empty, tmp_path / "e", "--task", "sst2")) == 2
    assert f"--test-file {empty[2]}: no rows" in capsys.readouterr().err
    assert not any((tmp_path / "e").iterdir())  # refused before anything ran: a rerun needs no --overwrite
    for option, value, expected in (("--limit_train_examples", "0", "an integer >= 1, got 0"),
                                    ("--early_stopping_patience", "0", "an integer >= 1, got 0"),
                                    ("--num_train_epochs", "-1", "a number > 0, got -1.0"),
                                    ("--learning_rate", "-0.1", "a number > 0, got -0.1")):
        assert main(_args(tiny_models, sst2_files, tmp_path / "o", option, value)) == 2
        assert f"{option}: expected {expected}" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(_args(tiny_models, sst2_files, tmp_path / "w", "--device", "cuda")) == 2
        assert "--device: cuda was requested, but no CUDA device is available" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 0.1\nmethod: dept\nbatch_size: 4\n")
    args = parse_args(["--config", str(config), "--batch-size", "2"])
    assert (args.learning_rate, args.method, args.per_device_train_batch_size, args.num_spaces) == (0.1, "dept", 2,
                                                                                                     None)
    config.write_text("learning_rate: 0.1\nper_device_train_batch_size: 3\nreport_to: none\n")  # Trainer's keys
    args = parse_args(["--config", str(config)])
    assert (args.learning_rate, args.per_device_train_batch_size, args.report_to) == (0.1, 3, [])
    config.write_text("learning_rates: 0.1\n")
    with pytest.raises(ValueError, match=r"--config: .* unknown option\(s\) \['learning_rates'\]"):
        parse_args(["--config", str(config)])
    assert TrainArguments().model is None and TrainArguments().task is None  # the embedded default


def test_console_script_dispatches(capsys):
    assert cli_main([]) == 2 and "usage: ept-fast train" in capsys.readouterr().out
    assert cli_main(["fit"]) == 2 and ("unknown command 'fit'; the commands are train, eval, compare"
                                       in capsys.readouterr().err)


def test_the_embedded_default_runs_offline(tmp_path):
    """The default job (packaged MiniLM on BBC News), shortened: 2 steps, 16 evaluation examples."""
    out = tmp_path / "default"
    assert main(["--output-dir", str(out), "--max-steps", "2", "--eval-steps", "2", "--limit-eval-examples", "16",
                 "--batch-size", "4", "--max-length", "64"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["task"] == "bbc_news" and metrics["task_type"] == "SEQ_CLS"
            and metrics["train_examples"] == 1781)  # 80% of 2225, rounded per topic
    assert set(metrics["test"]) == {"accuracy", "f1_macro"}
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["method"] == "ept" and saved["token_dim"] == 384 and saved["modules_to_save"] == ["classifier"]
    # The packaged MiniLM is recorded by its hub name (not a folder inside this venv), and that name
    # loads offline from the packaged copy.
    assert saved["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert saved["readout"] == "sentence_embedding" and metrics["backbone_dropout"] == 0.0
    assert cli_main(["eval", "--adapter", str(out), "--limit-eval-examples", "8"]) == 0


def test_eval_scores_a_decoder_classifier_as_it_was_trained(tiny_models, sst2_files, tmp_path):
    """A GPT-2 checkpoint trained with --task-type SEQ_CLS is scored as a classifier, not guessed
    to be the causal LM its config names."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "bert")
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                               pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    args = _args(tiny_models, sst2_files, tmp_path / "cls", "--task", "sst2", "--task-type", "SEQ_CLS")
    args[1] = str(tmp_path / "gpt2")
    assert main(args) == 0
    assert cli_main(["eval", "--adapter", str(tmp_path / "cls"), "--task", "sst2", "--validation-file",
                     sst2_files[1], "--test-file", sst2_files[2], "--device", "cpu"]) == 0
    trained = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    scored = json.loads((tmp_path / "cls" / "eval" / "metrics.json").read_text())
    assert scored["task_type"] == "SEQ_CLS" and scored["test"] == trained["test"]


def test_eval_scores_on_the_split_the_adapter_was_trained_with(tmp_path, capsys):
    """The embedded data's split depends on the seed: eval uses the one the adapter recorded."""
    out = tmp_path / "seed43"
    assert main(["--output-dir", str(out), "--seed", "43", "--max-steps", "1", "--eval-steps", "1",
                 "--limit-train-examples", "8", "--limit-eval-examples", "8", "--batch-size", "4", "--max-length",
                 "32", "--num-virtual-tokens", "2", "--r", "2", "--device", "cpu"]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert cli_main(["eval", "--adapter", str(out), "--limit-eval-examples", "8", "--device", "cpu"]) == 0
    scored = json.loads((out / "eval" / "metrics.json").read_text())
    assert scored["split_seed"] == 43 and scored["test"] == trained["test"]


def _named_label_files(root, names=("negative", "positive")):
    """CSV files whose labels are names, not ids."""
    paths = []
    for split, count in (("train", 24), ("validation", 8), ("test", 8)):
        lines = ["text,label\n"] + [f"the movie was {WORDS[i % 3 + (0 if i % 2 else 3)]},{names[i % 2]}\n"
                                    for i in range(count)]
        path = root / f"{split}.csv"
        path.write_text("".join(lines))
        paths.append(str(path))
    return paths


def test_labels_given_by_name_train_and_are_saved_with_the_adapter(tiny_models, tmp_path):
    files = _named_label_files(tmp_path)
    assert main(_args(tiny_models, files, tmp_path / "sorted", "--max-steps", "2", "--eval-steps", "2")) == 0
    task = json.loads((tmp_path / "sorted" / "adapter_config.json").read_text())["task"]
    assert task["label_names"] == ["negative", "positive"] and task["num_labels"] == 2
    assert main(_args(tiny_models, files, tmp_path / "ordered", "--max-steps", "2", "--eval-steps", "2",
                      "--label-names", "positive", "negative")) == 0
    assert json.loads((tmp_path / "ordered" / "adapter_config.json").read_text())["task"]["label_names"] == [
        "positive", "negative"]


def test_a_label_outside_the_names_names_the_file_and_row(tiny_models, tmp_path, capsys):
    files = _named_label_files(tmp_path)
    assert main(_args(tiny_models, files, tmp_path / "x", "--label-names", "positive", "neutral")) == 2
    assert (f"{files[0]}, row 1: label: expected a label id in [0, 2) or one of the names ['positive', 'neutral'], "
            f"got 'negative'") in capsys.readouterr().err


def test_metric_for_best_model_and_the_default_output_folder(tiny_models, sst2_files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = _args(tiny_models, sst2_files, tmp_path / "unused", "--metric-for-best-model", "f1_macro",
                 "--max-steps", "2", "--eval-steps", "1", "--text-column", "sentence")
    args.remove("--output-dir")
    args.remove(str(tmp_path / "unused"))
    assert main(args) == 0
    folder = Path(sst2_files[0]).parent.name  # train.jsonl: named after its folder
    metrics = json.loads((tmp_path / "runs" / f"ept-{folder}" / "metrics.json").read_text())
    assert metrics["metric_for_best_model"] == "f1_macro" and metrics["task"] == "custom"
    assert main(_args(tiny_models, sst2_files, tmp_path / "z", "--task", "sst2", "--metric-for-best-model",
                      "f1_macro")) == 2
    assert "--metric_for_best_model: task sst2 reports ['accuracy'], got 'f1_macro'" in capsys.readouterr().err


def test_outputs_for_users_tools_are_written_during_and_after_the_run(tiny_models, sst2_files, tmp_path):
    out = tmp_path / "run"
    interrupted = parse_args(_args(tiny_models, sst2_files, out, "--task", "sst2"))
    train(interrupted, stop_after_steps=4)
    state = json.loads((out / "trainer_state.json").read_text())  # already there, mid-run
    assert state["global_step"] == 4 and state["best_global_step"] == 3  # written at each validation and save
    assert state["best_metric"] == next(e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e)
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert [e["step"] for e in state["log_history"] if "eval_accuracy" in e] == [3]
    assert all(e["learning_rate"] >= 0 for e in state["log_history"] if "loss" in e)
    train(parse_args(_args(tiny_models, sst2_files, out, "--task", "sst2", "--resume")))
    results = json.loads((out / "all_results.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert results["eval_accuracy"] == metrics["validation"]["accuracy"]
    assert results["test_accuracy"] == metrics["test"]["accuracy"]
    assert (results["test_samples"], results["train_steps"], results["train_samples"]) == (16, 6, 48)
    assert results["train_runtime"] > 0 and results["train_samples_per_second"] > 0 and results["epoch"] == 1.0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "eval_accuracy" in e] == [3, 6]


def test_eval_scores_a_saved_adapter_as_training_did(tiny_models, tmp_path, capsys):
    files = _named_label_files(tmp_path)
    out = tmp_path / "run"
    assert main(_args(tiny_models, files, out, "--max-steps", "3", "--eval-steps", "3")) == 0
    trained = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert cli_main(["eval", "--adapter", str(out), "--model", str(tiny_models / "bert"), "--test-file", files[2],
                     "--validation-file", files[1], "--device", "cpu"]) == 0
    scored = json.loads((out / "eval" / "metrics.json").read_text())
    assert scored["test"] == trained["test"] and scored["validation"] == trained["validation"]
    assert json.loads((out / "eval" / "all_results.json").read_text())["test_accuracy"] == trained["test"]["accuracy"]
    assert "test accuracy" in capsys.readouterr().out
    assert cli_main(["eval", "--adapter", str(tmp_path / "nowhere")]) == 2
    assert "adapter directory: expected a folder holding adapter_config.json" in capsys.readouterr().err


def test_a_non_finite_loss_stops_with_a_clear_error(tiny_models, sst2_files, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = AutoModelForSequenceClassification.from_pretrained(tiny_models / "bert")
    with torch.no_grad():
        broken.classifier.weight.fill_(float("nan"))
    broken.save_pretrained(tmp_path / "nan-bert")
    AutoTokenizer.from_pretrained(tiny_models / "bert").save_pretrained(tmp_path / "nan-bert")
    args = _args(tiny_models, sst2_files, tmp_path / "run", "--task", "sst2")
    args[1] = str(tmp_path / "nan-bert")
    assert main(args) == 2
    assert "the training loss is nan at step 1; try lower learning rates" in capsys.readouterr().err


def test_evaluation_is_split_across_processes_and_gathered(tiny_models, monkeypatch):
    """Each of two ranks predicts every other example; gather_object puts them back in order, all
    of them (gather_for_metrics would drop some by the training dataloader's remainder)."""
    import accelerate.utils
    from transformers import AutoTokenizer, BertForSequenceClassification

    from ept_fast import EPTConfig, get_ept_model
    from ept_fast.training.prediction import predict_rows

    task = get_task("sst2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "bert")
    model = get_ept_model(BertForSequenceClassification.from_pretrained(tiny_models / "bert"),
                          EPTConfig(num_virtual_tokens=2, max_length=16, r=2, prompt_init="RANDOM"))
    rows = [("default", {"text": f"the movie was {WORDS[i % len(WORDS)]}", "text_pair": None, "label": i % 2})
            for i in range(7)]
    alone = predict_rows(model, tokenizer, {"default": task}, rows, 3, "cpu", 4)
    shards = {}

    class Rank:
        num_processes = 2

        def __init__(self, index):
            self.process_index = index

    def gather_object(data):
        shards[len(shards)] = data
        return shards.get(0, []) + shards.get(1, [])

    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    predict_rows(model, tokenizer, {"default": task}, rows, 3, "cpu", 4, accelerator=Rank(0))
    together = predict_rows(model, tokenizer, {"default": task}, rows, 3, "cpu", 4, accelerator=Rank(1))
    assert [index for index, _ in shards[0]] == [0, 2, 4, 6] and [index for index, _ in shards[1]] == [1, 3, 5]
    assert together == alone


def test_compare_runs_methods_at_one_budget_over_seeds(tiny_models, sst2_files, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = _args(tiny_models, sst2_files, out, "--task", "sst2", "--max-steps", "2", "--eval-steps", "2",
                 "--methods", "ept,dept", "pt", "--seeds", "2", "--seed", "7")
    assert cli_main(["compare", *args]) == 0
    result = json.loads((out / "compare.json").read_text())
    methods = result["methods"]
    assert list(methods) == ["ept", "dept", "pt"] and methods["ept"]["seeds"] == [7, 8]
    budget = result["budget"]
    assert budget == methods["ept"]["adapter_parameters"]  # EPT's own size, with --r 2 --num-spaces 2 --space-rank 2
    for name, m in methods.items():
        assert budget - 32 - 16 < m["adapter_parameters"] <= budget, name  # d = 32: within one more r (n + d)
        values = m["test"]["accuracy"]
        assert len(values) == 2 and m["mean"]["accuracy"] == pytest.approx(sum(values) / 2)
    assert methods["pt"]["sizes"]["r"] == 0 and methods["dept"]["sizes"]["K"] == 0
    assert set(result["wins"]["ept"]) == {"dept", "pt"} and all(0 <= n <= 2 for n in result["wins"]["ept"].values())
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG" and (out / "dept-seed8" / "metrics.json").is_file()
    printed = capsys.readouterr().out
    assert "adapter budget" in printed and "wins on accuracy, paired by seed" in printed
    # A second comparison into the folder is refused; --resume reads the finished runs back.
    assert cli_main(["compare", *args]) == 2
    assert "already holds a comparison; pass --resume" in capsys.readouterr().err
    stamp = (out / "dept-seed8" / "metrics.json").stat().st_mtime_ns
    assert cli_main(["compare", *args, "--resume"]) == 0
    assert "finished before, read back" in capsys.readouterr().out
    assert (out / "dept-seed8" / "metrics.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "compare.json").read_text())["methods"] == methods
    assert cli_main(["compare", *args, "--resume", "--lr", "0.5"]) == 2  # finished runs made with other options
    assert "--resume_from_checkpoint: the finished run in" in capsys.readouterr().err
    assert cli_main(["compare", "--methods", "ept,lora"]) == 2
    assert "--methods: expected ept, dept, pt, head or probe, got 'lora'" in capsys.readouterr().err


def test_compare_runs_the_head_alone_and_the_linear_probe_beside_the_adapters(tiny_models, sst2_files, tmp_path,
                                                                               capsys):
    out = tmp_path / "cmp"
    args = _args(tiny_models, sst2_files, out, "--task", "sst2", "--max-steps", "2", "--eval-steps", "2",
                 "--methods", "head", "ept", "probe", "--seeds", "1")
    assert cli_main(["compare", *args]) == 0
    result = json.loads((out / "compare.json").read_text())
    methods = result["methods"]
    assert list(methods) == ["head", "ept", "probe"]
    assert result["budget"] == methods["ept"]["adapter_parameters"] > 0  # the first adapter's, not the head's 0
    assert methods["head"]["adapter_parameters"] == methods["probe"]["adapter_parameters"] == 0
    head_sizes = methods["head"]["sizes"]
    assert (head_sizes["method"], head_sizes["m"], head_sizes["r"], head_sizes["K"]) == ("head", 0, 0, 0)
    assert methods["head"]["trainable_parameters"] == 32 * 2 + 2  # the head's copy alone (d = 32, 2 labels)
    probe = json.loads((out / "probe-seed42" / "metrics.json").read_text())
    assert probe["probe_C"] in (0.01, 0.1, 1.0, 10.0, 100.0) and set(probe["validation_by_C"]) == {
        "0.01", "0.1", "1.0", "10.0", "100.0"}
    assert probe["validation"]["accuracy"] == max(probe["validation_by_C"].values())
    assert 0.0 <= probe["test"]["accuracy"] <= 1.0 and probe["trainable_parameters"] == 32 + 1
    for method in ("head", "ept"):  # an encoder classifier on the command line reads the mean embedding by default
        saved = json.loads((out / f"{method}-seed42" / "adapter_config.json").read_text())
        assert saved["readout"] == "sentence_embedding" and saved["method"] == method
    assert "| probe | 0 |" in capsys.readouterr().out
    # A finished run made with an earlier default of the command line is not read back as today's.
    for change, expected in ((lambda m: m["adapter"].update(readout="mean"), "--readout (it read 'mean')"),
                             (lambda m: m.pop("backbone_dropout"), "--backbone_dropout (its backbone trained with"),
                             (lambda m: m.pop("head_only_steps"), "--head_only_steps (its adapter trained from"),
                             (lambda m: (m.update(head_only_steps=1), m["config"].pop("head_only_clipping")),
                              "the head-only steps' clipping (its head-only steps clipped the adapter's gradient")):
        metrics_file = out / "ept-seed42" / "metrics.json"
        kept = metrics_file.read_text()
        metrics = json.loads(kept)
        change(metrics)
        metrics_file.write_text(json.dumps(metrics))
        assert cli_main(["compare", *args, "--resume"]) == 2
        assert f"was made before today's default of {expected}" in capsys.readouterr().err
        metrics_file.write_text(kept)
    assert cli_main(["compare", *args, "--resume"]) == 0
    # Head-only steps are the adapters' option: the head alone runs without them, not into an error.
    steps = tmp_path / "steps"
    assert cli_main(["compare", *_args(tiny_models, sst2_files, steps, "--task", "sst2", "--max-steps", "2",
                                       "--eval-steps", "2", "--methods", "head", "ept", "--seeds", "1",
                                       "--head_only_steps", "1")]) == 0
    assert json.loads((steps / "ept-seed42" / "metrics.json").read_text())["head_only_steps"] == 1
    assert json.loads((steps / "head-seed42" / "metrics.json").read_text())["head_only_steps"] == 0


def test_readout_option_and_the_head_method_on_the_command_line(tiny_models, sst2_files, tmp_path, capsys):
    assert main(_args(tiny_models, sst2_files, tmp_path / "a", "--task", "sst2", "--max-steps", "1", "--eval-steps",
                      "1", "--readout", "first_token")) == 0
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["readout"] == "first_token"
    assert main(_args(tiny_models, sst2_files, tmp_path / "b", "--task", "sst2", "--readout", "cls")) == 2
    assert ("readout: expected one of 'backbone', 'first_token', 'mean', 'sentence_embedding', got 'cls'"
            in capsys.readouterr().err)
    head = _args(tiny_models, sst2_files, tmp_path / "c", "--task", "sst2", "--method", "head")
    assert main(head) == 2
    assert "num_virtual_tokens: method='head' (the head alone) has no prompt" in capsys.readouterr().err
    for option in ("--num-virtual-tokens", "--r", "--num-spaces", "--space-rank"):
        del head[head.index(option):head.index(option) + 2]
    assert main(head + ["--param-budget", "500"]) == 2
    assert "--param_budget: method 'head' trains the head alone" in capsys.readouterr().err
    assert main(head) == 0
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["adapter_parameters"] == 0
    assert main(["--model", str(tiny_models / "t5"), *_args(tiny_models, sst2_files, tmp_path / "e", "--task",
                                                           "sst2", "--readout", "mean")[2:]]) == 2
    assert "readout: 'mean' chooses what a classifier's head reads (SEQ_CLS); task_type is SEQ_2_SEQ_LM" in \
        capsys.readouterr().err


def test_backbone_dropout_is_set_on_the_frozen_body_only(tiny_models, sst2_files, tmp_path, monkeypatch, capsys):
    from ept_fast.training import engine

    trained = []
    monkeypatch.setattr(engine, "get_ept_model", lambda backbone, *args, **kwargs: trained.append(backbone) or
                        get_ept_model(backbone, *args, **kwargs))

    def dropouts(backbone):
        return {name: layer.p for name, layer in backbone.named_modules() if isinstance(layer, torch.nn.Dropout)}

    short = ("--task", "sst2", "--max-steps", "1", "--eval-steps", "1")
    for out, extra, body in (("default", (), 0.0), ("given", ("--backbone_dropout", "0.2"), 0.2)):
        assert main(_args(tiny_models, sst2_files, tmp_path / out, *short, *extra)) == 0
        rates = dropouts(trained[-1])
        assert rates.pop("dropout") == 0.1  # the classifier's own dropout, outside the body, is kept
        assert rates and set(rates.values()) == {body}  # embeddings, attention and every layer's output
        assert json.loads((tmp_path / out / "metrics.json").read_text())["backbone_dropout"] == body
    t5 = ["--model", str(tiny_models / "t5"), *_args(tiny_models, sst2_files, tmp_path / "t5", *short)[2:]]
    assert main(t5) == 0  # a backbone other than an encoder classifier keeps its own rates
    assert set(dropouts(trained[-1]).values()) == {0.1}
    assert json.loads((tmp_path / "t5" / "metrics.json").read_text())["backbone_dropout"] is None
    assert main(_args(tiny_models, sst2_files, tmp_path / "bad", "--backbone_dropout", "1")) == 2
    assert "--backbone_dropout: expected a probability in [0, 1), got 1.0" in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "given", *short, "--backbone_dropout", "0.3",
                      "--resume")) == 2
    assert "backbone_dropout" in capsys.readouterr().err  # a resumed run keeps the rate it started with


def test_metric_for_best_model_of_a_custom_task(tiny_models, sst2_files, tmp_path, capsys):
    args = _args(tiny_models, sst2_files, tmp_path / "mcc", "--text-column", "sentence", "--max-steps", "2",
                 "--eval-steps", "1", "--metric-for-best-model", "matthews_correlation")
    assert main(args) == 0
    metrics = json.loads((tmp_path / "mcc" / "metrics.json").read_text())
    assert list(metrics["test"]) == ["matthews_correlation", "accuracy", "f1_macro"]
    assert metrics["metric_for_best_model"] == "matthews_correlation"
    args[args.index("matthews_correlation")] = "pearson"
    assert main(args + ["--overwrite"]) == 2
    assert ("--metric_for_best_model: the labels of " in capsys.readouterr().err)


def test_param_budget_sizes_the_method(tiny_models, sst2_files, tmp_path, capsys):
    assert main(_args(tiny_models, sst2_files, tmp_path / "b", "--task", "sst2", "--max-steps", "1", "--eval-steps",
                      "1", "--method", "dept", "--param-budget", "1000", "--num-spaces", "0")) == 2
    assert "--param_budget: it picks r for method 'dept'; do not also give --r" in capsys.readouterr().err
    args = _args(tiny_models, sst2_files, tmp_path / "b", "--task", "sst2", "--max-steps", "1", "--eval-steps", "1",
                 "--method", "dept", "--param-budget", "1000")
    args.remove("--r")
    args.remove("2")
    args.remove("--num-spaces")
    args.remove("2")
    assert main(args) == 2  # r = 18 would pass min(n, d) = 16
    assert "param_budget: 1000 parameters would make r=18, past min(max_length, d)=16" in capsys.readouterr().err
    args[args.index("1000")] = "800"
    assert main(args) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["adapter"]["r"] == (800 - 4 * 32) // (16 + 32) and metrics["adapter_parameters"] <= 800


@pytest.fixture(scope="module")
def two_adapters(tiny_models, sst2_files, tmp_path_factory):
    """Two adapters on the tiny BERT: sst2 (labels by name) and the same files as a custom task."""
    root = tmp_path_factory.mktemp("served")
    assert main(_args(tiny_models, sst2_files, root / "sst2", "--task", "sst2")) == 0
    assert main(_args(tiny_models, sst2_files, root / "custom", "--text-column", "sentence", "--num-virtual-tokens",
                      "3", "--method", "dept", "--num-spaces", "0")) == 0
    return root


def _requests(sst2_files, path, names):
    rows = [json.loads(line) for line in Path(sst2_files[2]).read_text().splitlines()]
    path.write_text("".join(json.dumps({"adapter": name, **row}) + "\n" for name, row in zip(names, rows)))
    return path


def test_predict_serves_two_adapters_in_mixed_batches(two_adapters, sst2_files, tmp_path, capsys):
    names = ["sst2", "custom"] * 8
    requests = _requests(sst2_files, tmp_path / "requests.jsonl", names)
    served = ["--adapter", f"sst2={two_adapters / 'sst2'}", "--adapter", f"custom={two_adapters / 'custom'}"]
    assert cli_main(["predict", *served, "--input-file", str(requests), "--output-file", str(tmp_path / "out.jsonl"),
                     "--eval-batch-size", "5", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "16 rows (sst2: 8, custom: 8)" in printed
    mixed = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [p["adapter"] for p in mixed] == names and [p["row"] for p in mixed] == list(range(1, 17))
    assert {p["prediction"] for p in mixed if p["adapter"] == "sst2"} <= {"negative", "positive"}
    labels = [json.loads(line)["label"] for line in requests.read_text().splitlines()]  # the rows carry labels
    for name, gold in (("sst2", lambda label: ["negative", "positive"][label]), ("custom", lambda label: label)):
        right = [p["prediction"] == gold(label) for p, label in zip(mixed, labels) if p["adapter"] == name]
        assert f"{name}: accuracy {sum(right) / 8:.4f} on the 8 rows that carry a label" in printed
    for name in ("sst2", "custom"):  # each adapter alone, on its own rows: the same predictions and scores
        alone_requests = _requests(sst2_files, tmp_path / f"{name}.jsonl", [name] * 16)
        assert cli_main(["predict", "--adapter", f"{name}={two_adapters / name}", "--input-file", str(alone_requests),
                         "--output-file", str(tmp_path / f"{name}.csv"), "--device", "cpu"]) == 0
        alone = list(csv.DictReader((tmp_path / f"{name}.csv").open()))
        for p in mixed:
            if p["adapter"] == name:
                assert str(p["prediction"]) == alone[p["row"] - 1]["prediction"]
                assert abs(p["score"] - float(alone[p["row"] - 1]["score"])) < 1e-5


def test_eval_replaces_no_results_unasked(two_adapters, sst2_files, tmp_path, capsys):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "metrics.json").write_text('{"my": "results"}')
    scored = ["eval", "--adapter", str(two_adapters / "sst2"), "--validation-file", sst2_files[1], "--test-file",
              sst2_files[2], "--output-dir", str(reports), "--device", "cpu"]
    assert cli_main(scored) == 2
    assert f"--output_dir: {reports} holds metrics.json already" in capsys.readouterr().err
    assert (reports / "metrics.json").read_text() == '{"my": "results"}'
    assert cli_main([*scored, "--overwrite"]) == 0 and "test" in json.loads((reports / "metrics.json").read_text())


def test_predict_replaces_no_file_unasked_and_never_its_input(two_adapters, sst2_files, tmp_path, capsys):
    requests = _requests(sst2_files, tmp_path / "requests.jsonl", ["sst2"] * 4)
    before = requests.read_text()
    served = ["--adapter", f"sst2={two_adapters / 'sst2'}", "--input-file", str(requests), "--device", "cpu"]
    assert cli_main(["predict", *served, "--output-file", str(requests), "--overwrite"]) == 2
    assert "--output-file: " in capsys.readouterr().err and requests.read_text() == before
    assert cli_main(["predict", *served]) == 0  # the default: requests.jsonl.predictions.jsonl
    default = tmp_path / "requests.jsonl.predictions.jsonl"
    default.write_text("mine\n")
    assert cli_main(["predict", *served]) == 2
    assert f"--output-file: {default} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert default.read_text() == "mine\n"
    assert cli_main(["predict", *served, "--overwrite"]) == 0 and default.read_text() != "mine\n"


def test_predict_errors_are_clear(two_adapters, sst2_files, tiny_models, tmp_path, capsys):
    served = ["--adapter", f"sst2={two_adapters / 'sst2'}", "--adapter", f"custom={two_adapters / 'custom'}"]
    unknown = _requests(sst2_files, tmp_path / "unknown.jsonl", ["sst2", "nope"])
    assert cli_main(["predict", *served, "--input-file", str(unknown), "--device", "cpu"]) == 2
    assert "unknown.jsonl, row 2: expected one of ['custom', 'sst2'] in column 'adapter', naming the row's adapter, " \
        "got 'nope'" in capsys.readouterr().err
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"sentence": "fine"}) + "\n")
    assert cli_main(["predict", *served, "--input-file", str(plain), "--device", "cpu"]) == 2
    assert "row 1: expected one of ['custom', 'sst2'] in a column 'adapter' (--adapter-column)" in \
        capsys.readouterr().err
    blank = tmp_path / "blank.csv"
    blank.write_text("adapter,sentence\n,fine\n")
    assert cli_main(["predict", *served, "--input-file", str(blank), "--device", "cpu"]) == 2
    assert "row 1: expected one of ['custom', 'sst2'] in column 'adapter', naming the row's adapter, got ''" in \
        capsys.readouterr().err
    assert cli_main(["predict", "--adapter", f"sst2={two_adapters / 'sst2'}", "--input-file", str(plain),
                     "--device", "cpu"]) == 0  # one adapter: no column needed
    numbered = tmp_path / "numbered.csv"  # a spreadsheet export: BOM, and adapters named by numbers
    numbered.write_text("\ufeffadapter,sentence\n1,fine\n", encoding="utf-8")
    assert cli_main(["predict", "--adapter", f"1={two_adapters / 'sst2'}", "--input-file", str(numbered),
                     "--output-file", str(tmp_path / "numbered.csv.jsonl"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "numbered.csv.jsonl").read_text())["adapter"] == "1"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli_main(["predict", *served, "--input-file", str(empty), "--device", "cpu"]) == 2
    assert f"--input-file: {empty} has no rows to predict" in capsys.readouterr().err
    assert cli_main(["predict", *served, "--task-type", "CAUSAL_LM", "--input-file", str(plain), "--overwrite",
                     "--device", "cpu"]) == 2
    assert "--task_type: the adapters were trained as SEQ_CLS, got CAUSAL_LM" in capsys.readouterr().err
    (tmp_path / "eval").symlink_to(two_adapters / "sst2")
    assert cli_main(["predict", "--adapter", str(tmp_path / "eval"), "--input-file", str(plain), "--overwrite",
                     "--device", "cpu"]) == 2
    assert f"--adapter {tmp_path / 'eval'}: expected letters, digits, '_' or '-' (and not an attribute of " \
        "nn.ModuleDict), got 'eval'; name it with NAME=PATH" in capsys.readouterr().err
    assert cli_main(["predict", "--adapter", f"sst2={two_adapters / 'sst2'}", "--model", str(tmp_path / "nowhere"),
                     "--input-file", str(plain), "--overwrite", "--device", "cpu"]) == 2
    assert f"--model: cannot load a backbone from '{tmp_path / 'nowhere'}'" in capsys.readouterr().err
    wider = tmp_path / "wide"
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    BertForSequenceClassification(BertConfig(vocab_size=AutoTokenizer.from_pretrained(tiny_models / "bert").vocab_size,
                                             hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=48)).save_pretrained(wider)
    AutoTokenizer.from_pretrained(tiny_models / "bert").save_pretrained(wider)
    wide_args = _args(tiny_models, sst2_files, tmp_path / "wide-adapter", "--task", "sst2")
    wide_args[1] = str(wider)
    assert main(wide_args) == 0
    assert cli_main(["predict", *served[:2], "--adapter", f"wide={tmp_path / 'wide-adapter'}", "--input-file",
                     str(unknown), "--device", "cpu"]) == 2
    assert "the adapters were trained on different backbones" in capsys.readouterr().err
    assert cli_main(["predict", *served[:2], "--adapter", f"wide={tmp_path / 'wide-adapter'}", "--model",
                     str(tiny_models / "bert"), "--input-file", str(unknown), "--device", "cpu"]) == 2
    assert "token_dim: the config says 48, but word_embeddings (the backbone's input embeddings) have hidden size " \
        "32" in capsys.readouterr().err


def test_a_second_run_into_a_folder_in_use_is_refused(tiny_models, sst2_files, tmp_path, capsys):
    from filelock import FileLock

    from ept_fast.training.output import LOCK_NAME

    out = tmp_path / "busy"
    out.mkdir()
    with FileLock(str(out / LOCK_NAME)):  # another run holds the folder
        assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--overwrite")) == 2
    assert f"--output_dir: {out} is in use by another ept-fast run" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2")) == 0  # free again: the lock file is no run


def test_work_that_would_be_lost_is_refused_first(tiny_models, sst2_files, two_adapters, tmp_path, capsys):
    run = tmp_path / "a"
    assert main(_args(tiny_models, sst2_files, run, "--task", "sst2", "--max-steps", "3")) == 0
    assert main(_args(tiny_models, sst2_files, tmp_path / "b", "--task", "sst2", "--max-steps", "3",
                      "--resume", str(run / "checkpoint-3"))) == 2
    assert (f"--resume_from_checkpoint: {run / 'checkpoint-3'} is a checkpoint of another run than --output_dir "
            f"{tmp_path / 'b'}; resume it with --output_dir {run}") in capsys.readouterr().err
    blocked = tmp_path / "a-file"  # a folder inside a file can be made by nobody, root included
    blocked.write_text("")
    assert cli_main(["eval", "--adapter", str(run), "--output-dir", str(blocked / "eval"), "--validation-file",
                     sst2_files[1], "--test-file", sst2_files[2]]) == 2
    assert f"--output_dir: cannot write into {blocked / 'eval'}" in capsys.readouterr().err
    requests = _requests(sst2_files, tmp_path / "requests.jsonl", ["sst2"] * 16)
    assert cli_main(["predict", "--adapter", f"sst2={two_adapters / 'sst2'}", "--input-file", str(requests),
                     "--output-file", str(blocked / "out.jsonl")]) == 2
    assert f"--output-file: cannot write into {blocked}" in capsys.readouterr().err


def test_each_command_says_where_it_wrote(tiny_models, sst2_files, two_adapters, tmp_path, capsys):
    assert main(_args(tiny_models, sst2_files, tmp_path / "run", "--task", "sst2", "--max-steps", "1",
                      "--eval-steps", "1")) == 0
    printed = capsys.readouterr().out
    assert "ept-fast train: wrote the adapter, metrics.json" in printed
    assert "step 1: validation accuracy " in printed  # each validation as it happens, not a silent stall
    from ept_fast.training.report import plot_history

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    plot_history(metrics["history"], "accuracy", tmp_path / "plot.png", best_step=1, test_score=0.5)
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert cli_main(["eval", "--adapter", str(tmp_path / "run"), "--validation-file", sst2_files[1],
                     "--test-file", sst2_files[2]]) == 0
    assert f"ept-fast eval: wrote metrics.json and all_results.json to {tmp_path / 'run' / 'eval'}" in \
        capsys.readouterr().out
    requests = _requests(sst2_files, tmp_path / "requests.jsonl", ["sst2"] * 16)
    assert cli_main(["predict", "--adapter", f"sst2={two_adapters / 'sst2'}", "--input-file", str(requests),
                     "--output-file", str(tmp_path / "p.jsonl")]) == 0
    assert f"ept-fast predict: wrote 16 predictions to {tmp_path / 'p.jsonl'}" in capsys.readouterr().out


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(tiny_models, sst2_files, tmp_path, monkeypatch, capsys):
    from transformers import trainer

    real_save = torch.save

    def fills_the_disk_at_step_6(obj, path, *args, **kwargs):
        if "checkpoint-6" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1024 vs 980")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(trainer.torch, "save", fills_the_disk_at_step_6)
    out = tmp_path / "full"
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2")) == 2  # checkpoints at steps 3 and 6
    err = capsys.readouterr().err
    assert (f"could not write the checkpoint of step 6 into {out} ([enforce fail at inline_container.cc:664] . "
            f"unexpected pos 1024 vs 980); is the disk full? {out / 'checkpoint-3'} is kept: free some space, then "
            f"--resume") in err
    assert [path.name for path in out.glob("checkpoint-*")] == ["checkpoint-3"]
    monkeypatch.setattr(trainer.torch, "save", real_save)
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--resume")) == 0


def test_head_init_probe_starts_the_head_at_the_logistic_regression(tiny_models, sst2_files, tmp_path, capsys):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from ept_fast.config import TaskType
    from ept_fast.tasks import get_task, read_rows
    from ept_fast.training.data import Collator
    from ept_fast.training.prediction import evaluate
    from ept_fast.training.probe import init_head_from_probe

    task = get_task("sst2")
    train_set, validation_set = (format_rows(task, read_rows(path), path) for path in sst2_files[:2])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "bert")
    model = get_ept_model(BertForSequenceClassification.from_pretrained(tiny_models / "bert", num_labels=2),
                          EPTConfig(num_virtual_tokens=4, max_length=16, r=2, num_spaces=2, space_rank=2,
                                    prompt_init="RANDOM_VOCAB", readout="mean"))
    collate = Collator(tokenizer, TaskType.SEQ_CLS, task, 16, 4)
    found = init_head_from_probe(model, task, train_set, validation_set, collate, "accuracy", 16, torch.device("cpu"))
    assert evaluate(model, tokenizer, task, validation_set, 16, "cpu", 4) == found["validation"]
    assert main(_args(tiny_models, sst2_files, tmp_path / "lpft", "--task", "sst2", "--head-init", "probe")) == 0
    assert "--head_init probe: the head starts as the logistic regression" in capsys.readouterr().out
    assert json.loads((tmp_path / "lpft" / "metrics.json").read_text())["head_init"]["C"] in (0.01, 0.1, 1.0, 10.0,
                                                                                            100.0)
    assert main(_args(tiny_models, sst2_files, tmp_path / "x", "--task", "sst2", "--head-init", "lp")) == 2
    assert "--head_init: expected random or probe, got 'lp'" in capsys.readouterr().err


def _checkpoint_tensors(out, step):
    return load_file(str(out / f"checkpoint-{step}" / "adapter_model.safetensors"))


def test_head_only_steps_hold_the_adapter_while_the_head_trains(tiny_models, sst2_files, tmp_path):
    held, free = tmp_path / "held", tmp_path / "free"
    for out, share in ((held, "0.5"), (free, "0")):  # no warm-up: the first step trains at the full rate
        assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--head_only_steps", share,
                          "--warmup_steps", "0", "--save-steps", "1")) == 0
    assert json.loads((held / "metrics.json").read_text())["head_only_steps"] == 3  # half of 6 steps
    assert json.loads((free / "metrics.json").read_text())["head_only_steps"] == 0
    for out, moved_by_step_3 in ((held, False), (free, True)):
        one, three, four = (_checkpoint_tensors(out, step) for step in (1, 3, 4))
        head = [key for key in one if "classifier" in key]
        adapter = [key for key in one if key not in head]
        assert head and adapter
        assert all(not torch.equal(one[key], three[key]) for key in head)  # the head trains throughout
        assert any(not torch.equal(one[key], three[key]) for key in adapter) == moved_by_step_3
        assert any(not torch.equal(three[key], four[key]) for key in adapter)  # then the adapter joins
    # Held from the first step: both runs start alike and their first step trains the same head (up to
    # Adam's eps: each run clips its gradient by its own norm), but only the run without the phase has
    # moved its adapter.
    held_one, free_one = _checkpoint_tensors(held, 1), _checkpoint_tensors(free, 1)
    assert all(torch.allclose(held_one[key], free_one[key], rtol=0, atol=1e-6)
               for key in held_one if "classifier" in key)
    assert any(not torch.equal(held_one[key], free_one[key]) for key in held_one if "classifier" not in key)
    # The held run's gradient norm (clipped by, and logged) is the head's alone.
    held_norm, free_norm = (json.loads((out / "trainer_state.json").read_text())["log_history"][0]["grad_norm"]
                            for out in (held, free))
    assert 0 < held_norm < free_norm


def test_head_only_steps_count_optimizer_steps_under_gradient_accumulation(tiny_models, sst2_files, tmp_path):
    out = tmp_path / "accumulated"
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--batch-size", "4",
                      "--gradient_accumulation_steps", "2", "--head_only_steps", "3", "--save-steps", "1")) == 0
    one, three, four = (_checkpoint_tensors(out, step) for step in (1, 3, 4))
    adapter = [key for key in one if "classifier" not in key]
    assert all(torch.equal(one[key], three[key]) for key in adapter)
    assert any(not torch.equal(three[key], four[key]) for key in adapter)


def test_a_run_stopped_in_the_head_only_steps_resumes_to_the_same_adapter(tiny_models, sst2_files, tmp_path):
    options = ("--task", "sst2", "--head_only_steps", "3", "--save-steps", "1")
    train(parse_args(_args(tiny_models, sst2_files, tmp_path / "straight", *options)))
    assert train(parse_args(_args(tiny_models, sst2_files, tmp_path / "resumed", *options)),
                 stop_after_steps=2) == {"stopped_at_step": 2}
    with pytest.raises(ValueError, match=r"made with other options \(--head_only_steps 3.0 -> 2.0\)"):
        train(parse_args(_args(tiny_models, sst2_files, tmp_path / "resumed", "--task", "sst2", "--head_only_steps",
                               "2", "--save-steps", "1", "--resume")))
    train(parse_args(_args(tiny_models, sst2_files, tmp_path / "resumed", *options, "--resume")))
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    assert _same_adapter(tmp_path / "straight", tmp_path / "resumed")


def test_a_checkpoint_made_before_the_head_only_clipping_resumes_only_after_those_steps(tiny_models, sst2_files,
                                                                                         tmp_path):
    out = tmp_path / "run"
    options = ("--task", "sst2", "--head_only_steps", "3", "--save-steps", "1")
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options)), stop_after_steps=4) == {
        "stopped_at_step": 4}
    for step in (2, 4):  # as a checkpoint written before the clipping was recorded
        options_file = out / f"checkpoint-{step}" / "ept_fast_options.json"
        saved = json.loads(options_file.read_text())
        assert saved.pop("head_only_clipping") == "head"
        options_file.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=re.escape(
            f"the checkpoint {out / 'checkpoint-2'} was made before the head-only steps clipped the head's gradient "
            f"alone (its head-only steps clipped the adapter's gradient too, then dropped it); it is at step 2, inside "
            f"the 3 head-only steps")):
        train(parse_args(_args(tiny_models, sst2_files, out, *options, "--resume_from_checkpoint",
                               str(out / "checkpoint-2"))))
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options, "--resume")))["steps"] == 6  # from step 4


@pytest.mark.parametrize("name, meaning, now, before", [
    # Today's defaults: 1 step of the head alone, the body without dropout; before: 0, the tiny BERT's own 0.1.
    ("head_only_steps", "its adapter trained from the first step", 1, 0),
    ("backbone_dropout", "its backbone trained with its own dropout", 0, 0.1),
    ("spread_floor", "it trained without a floor under its head's input's spread", 0.5, 0)])
def test_a_checkpoint_made_before_an_option_resumes_only_as_it_ran(tiny_models, sst2_files, tmp_path, name, meaning,
                                                                    now, before):
    out = tmp_path / "run"
    options = ("--task", "sst2", "--max-steps", "19", "--save-steps", "1")
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options)), stop_after_steps=2) == {
        "stopped_at_step": 2}
    options_file = out / "checkpoint-2" / "ept_fast_options.json"
    options_file.write_text(json.dumps({k: v for k, v in json.loads(options_file.read_text()).items() if k != name}))
    with pytest.raises(ValueError, match=re.escape(
            f"the checkpoint {out / 'checkpoint-2'} was made before --{name} existed ({meaning}); with --{name} "
            f"{now} the run would change midway: resume with --{name} {before}, or start over with --overwrite")):
        train(parse_args(_args(tiny_models, sst2_files, out, *options, "--resume")))
    summary = train(parse_args(_args(tiny_models, sst2_files, out, *options, f"--{name}", str(before), "--resume")))
    assert summary["steps"] == 19 and summary[name] == before


def test_head_only_steps_that_cannot_apply_are_errors(tiny_models, sst2_files, tmp_path, capsys):
    assert main(_args(tiny_models, sst2_files, tmp_path / "a", "--task", "sst2", "--head_only_steps", "6")) == 2
    assert "--head_only_steps: 6 steps of the head alone is the whole run (6 steps)" in capsys.readouterr().err
    t5 = _args(tiny_models, sst2_files, tmp_path / "c", "--task", "sst2", "--head_only_steps", "2")
    t5[1] = str(tiny_models / "t5")
    assert main(t5) == 2
    assert ("--head_only_steps: applies to encoder classifiers (a BERT-like backbone with a classification head), "
            "where it was measured; this run's backbone is T5ForConditionalGeneration: leave it out or give 0"
            ) in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "d", "--task", "sst2", "--max-steps", "19")) == 0
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["head_only_steps"] == 1  # the default: a tenth


# ---------------------------------------------------------------- Trainer's options
def _trainer_state(out):
    return json.loads((out / "trainer_state.json").read_text())


def test_help_lists_trainers_options_beside_ours(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    for flag in ("--learning_rate", "--gradient_checkpointing", "--torch_compile", "--report_to", "--save_total_limit",
                 "--push_to_hub", "--deepspeed", "--fsdp", "--lr_lowrank", "--param_budget", "--method", "--readout",
                 "--train_file", "--lr", "--num-epochs"):
        assert flag in shown, flag
    # The adapter options say the defaults the command line uses, which are not EPTConfig's.
    from ept_fast.training.options import _adapter_options

    helps = {name: spec.metadata["help"] for name, _, spec in _adapter_options()}
    assert helps["num_virtual_tokens"].endswith("(default by method: ept 20, dept 20, pt 98)")
    assert helps["max_length"].endswith("(default: 128)")
    assert helps["r"].endswith("(default by method: ept 44, dept 59)")
    assert helps["readout"].endswith("(default: sentence_embedding for an encoder classifier, else backbone)")


def test_report_to_tensorboard_writes_event_files(tiny_models, sst2_files, tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "tb"
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--report_to", "tensorboard")) == 0
    assert list(out.rglob("events.out.tfevents.*"))  # under output_dir/runs/, where Trainer puts them


def test_gradient_checkpointing_trains_the_same_adapter(tiny_models, sst2_files, tmp_path):
    train(parse_args(_args(tiny_models, sst2_files, tmp_path / "plain", "--task", "sst2")))
    train(parse_args(_args(tiny_models, sst2_files, tmp_path / "ckpt", "--task", "sst2", "--gradient_checkpointing")))
    a = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ckpt" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_torch_compile_trains_a_tiny_model(tiny_models, sst2_files, tmp_path):
    out = tmp_path / "compiled"
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--torch_compile", "--max-steps", "2",
                      "--eval-steps", "2")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["config"]["torch_compile"] is True
    assert all(math.isfinite(e["loss"]) for e in metrics["history"] if "loss" in e)


def test_save_total_limit_keeps_that_many_checkpoints(tiny_models, sst2_files, tmp_path):
    out = tmp_path / "limited"
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--save-steps", "1", "--eval-steps", "1",
                      "--save_total_limit", "2")) == 0
    kept = sorted(path.name for path in out.glob("checkpoint-*"))
    assert len(kept) == 2 and "checkpoint-6" in kept
    best = _trainer_state(out)["best_global_step"]
    assert f"checkpoint-{best}" in kept  # Trainer keeps the best one among them


def _no_dropout_bert(tiny_models, root):
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_models / "bert", hidden_dropout_prob=0.0,
                                                          attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    model.save_pretrained(root)
    AutoTokenizer.from_pretrained(tiny_models / "bert").save_pretrained(root)
    return root


def test_two_processes_validate_as_one_on_the_same_global_batch(tiny_models, sst2_files, tmp_path):
    """torchrun, two CPU processes (gloo, loopback) of 4 examples a step, against one process of
    8: the same validation metrics at every validation, and the same adapter up to the order of
    float sums (dropout off). Adam divides by the root of the squared gradients, so a parameter
    whose gradient is near zero (EPT's gate at its start) moves by up to lr whatever the sign of
    that noise: the head, whose gradients are large, agrees closely, the rest to 1e-3."""
    bert = _no_dropout_bert(tiny_models, tmp_path / "bert")
    one = _args(tiny_models, sst2_files, tmp_path / "one", "--task", "sst2")
    one[1] = str(bert)
    assert main(one) == 0
    two = _args(tiny_models, sst2_files, tmp_path / "two", "--task", "sst2", "--batch-size", "4")
    two[1] = str(bert)
    options = {flag.lstrip("-"): value for flag, value in zip(two[::2], two[1::2]) if flag != "--device"}
    config = tmp_path / "two.json"  # a config file keeps "--r" away from torchrun's abbreviation matching
    config.write_text(json.dumps({**options, "use_cpu": True}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ept_fast.train", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2

    def validations(out):
        return [(e["step"], e["eval_accuracy"]) for e in _trainer_state(out)["log_history"] if "eval_accuracy" in e]

    assert validations(tmp_path / "two") == validations(tmp_path / "one") and len(validations(tmp_path / "one")) == 2
    assert metrics["test"] == json.loads((tmp_path / "one" / "metrics.json").read_text())["test"]
    a = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)
    assert torch.allclose(a["base_model.classifier.weight"], b["base_model.classifier.weight"], atol=1e-5)


def test_warm_up_then_linear_decay_of_both_learning_rates(tiny_models, sst2_files, tmp_path):
    out = tmp_path / "schedule"
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--warmup_steps", "2", "--lr", "0.02",
                      "--lr_lowrank", "0.004")) == 0
    rates = [e["learning_rate"] for e in _trainer_state(out)["log_history"] if "loss" in e]
    # The rate each step ran at (Trainer's warm-up starts at 0): up over 2 steps, then down towards 0.
    assert rates == pytest.approx([0.0, 0.01, 0.02, 0.015, 0.01, 0.005])
    assert json.loads((out / "metrics.json").read_text())["learning_rates"] == {"prompt_and_head": 0.02,
                                                                              "lowrank": 0.004}


def test_gradient_accumulation_trains_as_the_whole_batch(tiny_models, sst2_files, tmp_path):
    bert = _no_dropout_bert(tiny_models, tmp_path / "bert")
    # The spread floor measures its spread over each micro-batch, as batch statistics do: off here.
    whole = _args(tiny_models, sst2_files, tmp_path / "whole", "--task", "sst2", "--spread-floor", "0")
    whole[1] = str(bert)
    parts = _args(tiny_models, sst2_files, tmp_path / "parts", "--task", "sst2", "--batch-size", "4",
                  "--gradient_accumulation_steps", "2", "--spread-floor", "0")
    parts[1] = str(bert)
    assert main(whole) == 0 and main(parts) == 0
    assert [loss for _, loss in _losses(tmp_path / "parts")] == pytest.approx(
        [loss for _, loss in _losses(tmp_path / "whole")], abs=1e-4)
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "adapter_model.safetensors"))
    assert torch.allclose(a["base_model.classifier.weight"], b["base_model.classifier.weight"], atol=1e-5)


def test_early_stopping_ends_the_run_when_validation_stops_improving(tiny_models, sst2_files, tmp_path):
    out = tmp_path / "early"
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--eval-steps", "1", "--lr", "1e-12",
                      "--lr_lowrank", "1e-12", "--early_stopping_patience", "2")) == 0
    metrics = json.loads((out / "metrics.json").read_text())  # a flat validation: steps 2 and 3 do not improve on 1
    assert metrics["steps"] == 3 and metrics["best_step"] == 1


def test_hostile_rerun_cases_of_the_engine(tiny_models, sst2_files, tmp_path, capsys):
    """Cases the rerun of issue 24's hostile classes found: each is refused clearly or keeps the work."""
    assert main(_args(tiny_models, sst2_files, tmp_path / "w", "--task", "sst2", "--warmup_ratio", "6")) == 2
    assert "--warmup_steps: 6 steps of warm-up is the whole run (6 steps)" in capsys.readouterr().err
    mine = tmp_path / "mine"
    (mine / "checkpoint-7").mkdir(parents=True)
    (mine / "checkpoint-7" / "keep.txt").write_text("mine")  # named like a checkpoint, written by the user
    assert main(_args(tiny_models, sst2_files, mine, "--task", "sst2", "--overwrite")) == 0
    assert (mine / "checkpoint-7" / "keep.txt").read_text() == "mine"
    assert main(_args(tiny_models, sst2_files, mine, "--task", "sst2", "--overwrite", "--save_total_limit", "1")) == 2
    assert ("--save_total_limit: Trainer would delete the oldest checkpoint-N folders of" in capsys.readouterr().err
            and (mine / "checkpoint-7" / "keep.txt").read_text() == "mine")
    assert cli_main(["eval", "--adapter", str(mine), "--output-dir", str(mine), "--validation-file", sst2_files[1],
                     "--test-file", sst2_files[2]]) == 2
    assert f"--output_dir: {mine} holds a training run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--learnig_rate", "0.1"])
    assert "did you mean --learning_rate?" in capsys.readouterr().err
    t5 = _args(tiny_models, sst2_files, tmp_path / "t5", "--task", "sst2", "--max-steps", "1", "--eval-steps", "1")
    t5[1] = str(tiny_models / "t5")
    assert main(t5) == 0
    capsys.readouterr()
    t5_on_bert = cli_main(["eval", "--adapter", str(tmp_path / "t5"), "--model", str(tiny_models / "bert"),
                           "--validation-file", sst2_files[1], "--test-file", sst2_files[2], "--task", "sst2"])
    assert t5_on_bert == 2
    assert "(BertConfig) cannot be a SEQ_2_SEQ_LM backbone" in capsys.readouterr().err


def test_a_warm_up_fraction_never_takes_the_whole_run(tiny_models, sst2_files, tmp_path):
    """Trainer rounds a warm-up fraction up: one step at 0.06 would warm up through it at rate 0."""
    out = tmp_path / "one"
    assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--max-steps", "1", "--eval-steps", "1",
                      "--lr", "0.02")) == 0
    assert [e["learning_rate"] for e in _trainer_state(out)["log_history"] if "loss" in e] == [0.02]


def _same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_load_best_model_at_end_keeps_the_best_checkpoint_or_the_last(tiny_models, sst2_files, tmp_path, capsys):
    schedule = ("--max-steps", "6", "--eval-steps", "1", "--save-steps", "1", "--learning-rate", "0.5",
                "--text-column", "sentence")
    assert main(_args(tiny_models, sst2_files, tmp_path / "best", *schedule)) == 0
    best = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert best["best_step"] < best["steps"] == 6  # else the two runs below could not differ
    assert best["kept_step"] == best["best_step"]
    assert _same_weights(tmp_path / "best", tmp_path / "best" / f"checkpoint-{best['best_step']}")

    assert main(_args(tiny_models, sst2_files, tmp_path / "last", *schedule, "--load-best-model-at-end", "false")) == 0
    last = json.loads((tmp_path / "last" / "metrics.json").read_text())
    assert last["best_step"] == best["best_step"] and last["kept_step"] == 6
    assert _same_weights(tmp_path / "last", tmp_path / "last" / "checkpoint-6")
    assert not _same_weights(tmp_path / "last", tmp_path / "last" / f"checkpoint-{last['best_step']}")
    assert re.search(r"adapter from step +6\n", capsys.readouterr().out)

    with pytest.raises(SystemExit):
        main(_args(tiny_models, sst2_files, tmp_path / "bad", "--load-best-model-at-end", "sometimes"))
    assert "--load_best_model_at_end" in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "bad", "--load-best-model-at-end", "false",
                      "--early-stopping-patience", "2")) == 2
    assert "--early_stopping_patience: stops once validation has not improved" in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "unvalidated", "--eval-strategy", "no",
                      "--text-column", "sentence")) == 0
    unvalidated = json.loads((tmp_path / "unvalidated" / "metrics.json").read_text())
    assert unvalidated["best_step"] is None and unvalidated["kept_step"] == unvalidated["steps"] == 6


def test_runs_from_before_load_best_model_at_end_was_honoured_kept_the_best_checkpoint():
    from ept_fast.training.output import LOAD_BEST_HONOURED, check_same_options

    before = {"seed": 1, "load_best_model_at_end": False}  # what such a run recorded
    check_same_options(before, {"seed": 1, "load_best_model_at_end": True}, "the run")
    with pytest.raises(ValueError, match=r"made with other options \(--load_best_model_at_end True -> False\)"):
        check_same_options(before, {"seed": 1, "load_best_model_at_end": False}, "the run")
    check_same_options({**before, **LOAD_BEST_HONOURED}, {"seed": 1, "load_best_model_at_end": False}, "the run")


def test_trainer_options_that_would_do_nothing_here_are_refused(tiny_models, sst2_files, tmp_path, capsys):
    for flags, message in ((("--neftune_noise_alpha", "5"), "--neftune_noise_alpha: NEFTune adds its noise in a hook"),
                           (("--greater_is_better", "false"), "--greater_is_better: every metric a task reports here"),
                           (("--save_strategy", "no"), "--save_strategy: 'no' writes no checkpoint, but keeping")):
        assert main(_args(tiny_models, sst2_files, tmp_path / "x", "--task", "sst2", *flags)) == 2
        assert message in capsys.readouterr().err
    from ept_fast.training.compare import CompareArguments

    with pytest.raises(ValueError, match=r"--method: compare runs each of --methods; got --method 'dept', give "
                                         r"--methods dept instead"):
        CompareArguments(method="dept", methods=["ept"])
    with pytest.raises(ValueError, match=r"--resume: compare resumes every run from its own folder in --output_dir; "
                                         r"give --resume without a value, got 'runs/x/checkpoint-4'"):
        CompareArguments(resume_from_checkpoint="runs/x/checkpoint-4")
    assert CompareArguments(resume_from_checkpoint="true").resume_from_checkpoint is True
    assert CompareArguments(resume_from_checkpoint="false").resume_from_checkpoint is None


def test_save_strategy_no_with_the_last_steps_adapter_writes_no_checkpoint(tiny_models, sst2_files, tmp_path):
    assert main(_args(tiny_models, sst2_files, tmp_path / "run", "--task", "sst2", "--save_strategy", "no",
                      "--load-best-model-at-end", "false")) == 0
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["kept_step"] == 6


def test_dropping_the_last_partial_batch_counts_the_steps_it_leaves(tiny_models, sst2_files, tmp_path, capsys):
    one_epoch = ("--task", "sst2", "--max-steps", "-1", "--num-epochs", "1", "--batch-size", "20",
                 "--dataloader_drop_last")  # 48 examples: 2 whole batches
    assert main(_args(tiny_models, sst2_files, tmp_path / "a", *one_epoch, "--head_only_steps", "2")) == 2
    assert "--head_only_steps: 2 steps of the head alone is the whole run (2 steps)" in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "b", *one_epoch, "--head_only_steps", "1")) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["epoch"]) == (2, 1.0)
    assert main(_args(tiny_models, sst2_files, tmp_path / "c", *one_epoch[:-3], "--batch-size", "64",
                      "--dataloader_drop_last")) == 2
    assert "--dataloader_drop_last: the 48 training examples are fewer than one batch (64)" in capsys.readouterr().err


def test_eval_generates_as_many_tokens_as_the_adapter_was_trained_with(tiny_models, sst2_files, tmp_path, capsys):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from ept_fast.training.options import ModelArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "bert")
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                               pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    args = _args(tiny_models, sst2_files, tmp_path / "no-eos", "--task", "sst2")
    args[1] = str(tmp_path / "gpt2")
    assert main(args) == 2  # the packaged MiniLM tokenizer has no end-of-sequence token
    assert "--model: a causal LM learns to end each answer with its tokenizer's end-of-sequence" in \
        capsys.readouterr().err
    tokenizer.eos_token = tokenizer.sep_token
    tokenizer.save_pretrained(tmp_path / "gpt2")
    args = _args(tiny_models, sst2_files, tmp_path / "lm", "--task", "sst2", "--max-length", "12", "--max-new-tokens",
                 "6", "--max-steps", "2", "--eval-steps", "2")
    args[1] = str(tmp_path / "gpt2")
    assert main(args) == 0
    trained = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    assert trained["task_type"] == "CAUSAL_LM" and trained["inputs_cut_to_max_length"]["test"] > 0  # 6 tokens kept
    files = ["--validation-file", sst2_files[1], "--test-file", sst2_files[2], "--device", "cpu"]
    assert cli_main(["eval", "--adapter", str(tmp_path / "lm"), *files]) == 0
    scored = json.loads((tmp_path / "lm" / "eval" / "metrics.json").read_text())
    assert scored["config"]["max_new_tokens"] == 6
    assert scored["inputs_cut_to_max_length"] == {split: trained["inputs_cut_to_max_length"][split]
                                                  for split in ("validation", "test")}
    assert scored["test"] == trained["test"]
    assert cli_main(["eval", "--adapter", str(tmp_path / "lm"), *files, "--max-new-tokens", "2",
                     "--output-dir", str(tmp_path / "two")]) == 0
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["config"]["max_new_tokens"] == 2
    # predict: each adapter generates what it was trained with, and its inputs keep that room, alone as in a
    # mixed file (the mixed file used to run every row at the most of the two: the short one's inputs cut to 6).
    args = _args(tiny_models, sst2_files, tmp_path / "short", "--task", "sst2", "--max-length", "12",
                 "--max-new-tokens", "2", "--max-steps", "2", "--eval-steps", "2")
    args[1] = str(tmp_path / "gpt2")
    assert main(args) == 2  # [CLS] the answer [SEP] and the end of sequence: longer than its room
    refused = capsys.readouterr().err
    assert "--max-new-tokens: a causal LM trains on each input followed by its answer, and the answer " in refused
    assert ("takes 4 tokens (the end-of-sequence token included), more than the 2 kept for it; give "
            "--max-new-tokens 4 or more") in refused
    args[args.index("--max-new-tokens") + 1] = "4"
    assert main(args + ["--overwrite"]) == 0
    rows = [json.loads(line) for line in open(sst2_files[2])][:6]
    for row in rows:
        row["sentence"] = " ".join([row["sentence"]] * 2)  # cut to 6 tokens for "lm", to 8 for "short"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({**row, "adapter": name}) + "\n" for row in rows for name in ("lm", "short")))

    def predicted(names, source):
        out = tmp_path / f"{'-'.join(names)}.jsonl"
        served = [option for name in names for option in ("--adapter", f"{name}={tmp_path / name}")]
        assert cli_main(["predict", *served, "--input-file", str(source), "--output-file", str(out), "--device",
                         "cpu", "--overwrite"]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    together = predicted(["lm", "short"], mixed)
    for name in ("lm", "short"):
        alone = tmp_path / f"{name}-rows.jsonl"
        alone.write_text("".join(json.dumps(row) + "\n" for row in rows))
        expected = [p["generated"] for p in predicted([name], alone)]
        assert [p["generated"] for p in together if p["adapter"] == name] == expected, name
    several = [{"max_new_tokens": 3}, None, {"split_seed": 1}, {"max_new_tokens": 5}]  # older adapters record none
    assert (ModelArguments().generation_length(several), ModelArguments().generation_length([None]),
            ModelArguments(max_new_tokens=2).generation_length(several)) == (5, 8, 2)


def test_spread_floor_trains_records_and_is_checked(tiny_models, sst2_files, tmp_path, capsys):
    args = _args(tiny_models, sst2_files, tmp_path / "floor", "--task", "sst2", "--spread-floor", "0.5",
                 "--max-steps", "3")
    assert main(args) == 0
    assert json.loads((tmp_path / "floor" / "metrics.json").read_text())["config"]["spread_floor"] == 0.5
    # The command line's default: EPT's head reading the mean over the real tokens has the floor, nothing else.
    for method, readout, expected in (("ept", None, 0.5), ("ept", "mean", 0.5), ("ept", "backbone", 0.0),
                                      ("dept", None, 0.0), ("pt", None, 0.0)):
        out = tmp_path / f"default-{method}-{readout}"
        given = (("--readout", readout) if readout else ()) + (("--num-spaces", "0") if method != "ept" else ()) \
            + (("--r", "0") if method == "pt" else ())
        assert main(_args(tiny_models, sst2_files, out, "--task", "sst2", "--method", method, *given,
                          "--max-steps", "1", "--eval-steps", "1")) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["spread_floor"] == metrics["config"]["spread_floor"] == expected, (method, readout)
    assert [default_spread_floor(*case) for case in (("ept", "SEQ_CLS", "sentence_embedding"), ("ept", "SEQ_2_SEQ_LM",
            "backbone"), ("ept", "CAUSAL_LM", "backbone"), ("ept", None, "mean"), ("head", "SEQ_CLS", "mean"))] == [
        0.5, 0.0, 0.0, 0.0, 0.0]
    # A resume left to the default continues only a run that trained with the floor it resolves to.
    out, options = tmp_path / "resolved", ("--task", "sst2", "--max-steps", "4", "--save-steps", "1")
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options, "--spread-floor", "0.3")),
                 stop_after_steps=2) == {"stopped_at_step": 2}
    with pytest.raises(ValueError, match=re.escape(f"--resume_from_checkpoint: the checkpoint {out / 'checkpoint-2'} "
                                                   f"trained with --spread_floor 0.3 and this run with 0.5: resume "
                                                   f"with --spread_floor 0.3, or start over with --overwrite")):
        train(parse_args(_args(tiny_models, sst2_files, out, *options, "--resume")))
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options, "--spread-floor", "0.3", "--resume"))) \
        ["spread_floor"] == 0.3
    # A run left to the default resumes with the floor it resolved to given, and with the default.
    out = tmp_path / "default"
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options)), stop_after_steps=2) == {
        "stopped_at_step": 2}
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options, "--spread-floor", "0.5", "--resume")),
                 stop_after_steps=3) == {"stopped_at_step": 3}
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options, "--resume")))["spread_floor"] == 0.5
    # A DePT checkpoint made before the option trained without a floor, which is still DePT's default.
    out, dept = tmp_path / "dept", ("--method", "dept", "--num-spaces", "0")
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options, *dept)), stop_after_steps=2) == {
        "stopped_at_step": 2}
    options_file = out / "checkpoint-2" / "ept_fast_options.json"
    saved = json.loads(options_file.read_text())
    assert saved.pop("spread_floor") == 0
    options_file.write_text(json.dumps(saved))
    assert train(parse_args(_args(tiny_models, sst2_files, out, *options, *dept, "--resume")))["steps"] == 4
    assert main([*args, "--max-steps", "6", "--resume", "--spread-floor", "0"]) == 2  # a resume is the same run
    assert "--spread_floor 0.5 -> 0.0 (resolved by the run: left out, it resolves again)" in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "x", "--task", "sst2", "--spread-floor", "-1")) == 2
    assert "--spread_floor: expected a number >= 0 (0: off), got -1.0" in capsys.readouterr().err
    assert main(_args(tiny_models, sst2_files, tmp_path / "y", "--task", "sst2", "--spread-floor", "0.5",
                      "--readout", "backbone")) == 2
    assert "spread_floor: compares what an encoder classifier's head reads" in capsys.readouterr().err
    from ept_fast.training.compare import CompareArguments, run_arguments

    compared = CompareArguments(spread_floor=0.5, methods=["ept", "head"])
    assert run_arguments(compared, "head", 42, tmp_path, None).spread_floor == 0.0  # nothing to floor
    assert run_arguments(compared, "ept", 42, tmp_path, None).spread_floor == 0.5
    # A comparison with the floor resumes: its finished runs are read back, one made before the option is not.
    out = tmp_path / "cmp"
    compare = ["compare", *_args(tiny_models, sst2_files, out, "--task", "sst2", "--max-steps", "2", "--eval-steps",
                                 "2", "--methods", "ept", "head", "--seeds", "1", "--spread-floor", "0.5")]
    assert cli_main(compare) == 0 and cli_main([*compare, "--resume"]) == 0
    assert capsys.readouterr().out.count("finished before, read back") == 2
    metrics_file = out / "ept-seed42" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["config"].pop("spread_floor")
    metrics_file.write_text(json.dumps(metrics))
    assert cli_main([*compare, "--resume"]) == 2
    assert (f"--resume: the finished run in {out / 'ept-seed42'} trained with --spread_floor 0 and this run with 0.5: "
            f"resume with --spread_floor 0, or start over with --overwrite") in capsys.readouterr().err
    assert cli_main([*compare[:-2], "--resume"]) == 2  # left to the default, which is also 0.5 for EPT here
    assert "trained with --spread_floor 0 and this run with 0.5" in capsys.readouterr().err
    assert cli_main([*compare[:-1], "0", "--resume"]) == 0  # as a run made before the option ran: without a floor
    # A DePT comparison made before the option is read back at DePT's default, which is still no floor.
    out = tmp_path / "cmp-dept"
    compare = ["compare", *_args(tiny_models, sst2_files, out, "--task", "sst2", "--max-steps", "2", "--eval-steps",
                                 "2", "--methods", "dept", "--num-spaces", "0", "--seeds", "1")]
    assert cli_main(compare) == 0
    metrics_file = out / "dept-seed42" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    assert metrics["config"].pop("spread_floor") == 0
    metrics_file.write_text(json.dumps(metrics))
    capsys.readouterr()
    assert cli_main([*compare, "--resume"]) == 0 and "finished before, read back" in capsys.readouterr().out
