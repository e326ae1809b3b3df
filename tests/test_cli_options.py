"""The options of ``ept-fast train`` / ``eval``: help, spellings, config rules, defaults."""

import dataclasses

import pytest

from ept_fast import EPTConfig
from ept_fast.cli import parse_eval_args, parse_train_args
from ept_fast.tasks import get_task
from ept_fast.training import METHOD_DEFAULTS, EvalArguments, TrainArguments
from ept_fast.training.compare import CompareArguments
from ept_fast.training.options import ADAPTER_OPTIONS, OptionParser
from ept_fast.training.serving import PredictArguments


@pytest.mark.parametrize("cls", [TrainArguments, EvalArguments, CompareArguments, PredictArguments],
                         ids=["train", "eval", "compare", "predict"])
def test_every_option_says_what_it_does(cls):
    parser = OptionParser(cls, "ept-fast", "")
    shown = {action.dest: action for action in parser._actions if action.help != "==SUPPRESS=="}
    assert {dest for dest in shown if not dest.startswith("no_")} == \
        {field.name for field in dataclasses.fields(cls) if field.init} | {"help", "config"}
    ours = {field.name for base in (cls.__mro__) if base.__module__.startswith("ept_fast")
            for field in dataclasses.fields(base) if field.name in vars(base).get("__annotations__", {})}
    for dest in ours | {"config"}:  # ours, and Trainer's where we changed them, say what they do
        assert len(shown[dest].help) > 15 and not shown[dest].help.startswith("default"), (dest, shown[dest].help)


def test_hugging_face_spellings_underscores_and_negated_booleans():
    args = parse_train_args([
        "--model_name_or_path", "some/model", "--learning_rate", "0.1", "--per_device_train_batch_size", "4",
        "--num_train_epochs", "2.5", "--max_train_samples", "10", "--max_eval_samples", "5", "--overwrite_output_dir",
        "--per_device_eval_batch_size", "7", "--lr_lowrank", "0.01", "--num_virtual_tokens", "12",
        "--resume_from_checkpoint",
    ])
    assert (args.model, args.learning_rate, args.per_device_train_batch_size, args.num_train_epochs,
            args.limit_train_examples) == ("some/model", 0.1, 4, 2.5, 10)
    assert (args.limit_eval_examples, args.overwrite, args.per_device_eval_batch_size, args.lr_lowrank) == (5, True, 7,
                                                                                                          0.01)
    assert args.num_virtual_tokens == 12 and args.resume_from_checkpoint is True
    ours = parse_train_args(["--lr", "0.2", "--batch-size", "3", "--num-epochs", "2", "--eval-batch-size", "5",
                             "--warmup-ratio", "0.1", "--max-train-samples", "9", "--output-dir", "o", "--overwrite"])
    assert (ours.learning_rate, ours.per_device_train_batch_size, ours.num_train_epochs) == (0.2, 3, 2)
    assert (ours.per_device_eval_batch_size, ours.warmup_steps, ours.limit_train_examples) == (5, 0.1, 9)
    assert ours.output_dir == "o" and ours.overwrite is True
    assert parse_train_args(["--resume_from_checkpoint", "runs/x/checkpoint-4"]).resume_from_checkpoint == \
        "runs/x/checkpoint-4"
    assert parse_train_args(["--resume"]).resume_from_checkpoint is True
    assert parse_train_args([]).resume_from_checkpoint is None
    assert parse_train_args(["--device", "cpu", "--mixed-precision", "no"]).use_cpu is True
    assert parse_train_args(["--overwrite", "false"]).overwrite is False  # HfArgumentParser's booleans
    assert parse_train_args(["--overwrite_output_dir"]).overwrite is True
    # Booleans unset by default (Optional[bool]) take a bare flag as true too, as the README says.
    assert parse_train_args(["--fusion"]).fusion is True and parse_train_args(["--fusion", "false"]).fusion is False
    assert parse_train_args([]).fusion is None
    assert parse_train_args(["--load-best-model-at-end"]).load_best_model_at_end is True
    with pytest.raises(SystemExit):  # no abbreviations: --lr-low is not --lr-lowrank
        parse_train_args(["--lr-low", "0.1"])


def test_device_and_precision_flags_override_a_config_file_and_earlier_flags(tmp_path):
    config = tmp_path / "options.json"
    config.write_text('{"device": "cpu", "mixed_precision": "bf16"}')
    from_file = parse_train_args(["--config", str(config)])
    assert (from_file.use_cpu, from_file.bf16, from_file.fp16) == (True, True, False)
    overridden = parse_train_args(["--config", str(config), "--device", "auto", "--mixed-precision", "no"])
    assert (overridden.use_cpu, overridden.bf16, overridden.fp16) == (False, False, False)
    assert parse_train_args(["--device", "cpu", "--device", "auto"]).use_cpu is False
    last = parse_train_args(["--mixed-precision", "bf16", "--mixed-precision=fp16"])
    assert (last.bf16, last.fp16) == (False, True)
    with pytest.raises(ValueError, match=r"--device: expected one of \['auto', 'cpu', 'cuda'\], got 'gpu'"):
        parse_train_args(["--device", "gpu"])


def test_greater_is_better_false_is_refused_only_when_given():
    with pytest.raises(ValueError, match=r"--greater_is_better: every metric a task reports here is higher-is-better"):
        parse_train_args(["--greater_is_better", "false"])
    # Trainer sets it false itself for a metric named *loss; the task's check names that metric when the run starts
    assert parse_train_args(["--metric_for_best_model", "loss"]).metric_for_best_model == "loss"


def test_adapter_options_are_eptconfig_fields_with_one_table_of_defaults():
    fields = {field.name for field in dataclasses.fields(EPTConfig)}
    assert set(ADAPTER_OPTIONS) <= fields
    assert all(getattr(TrainArguments(), name) is None for name in ADAPTER_OPTIONS)  # none re-declared
    for method, row in METHOD_DEFAULTS.items():
        config = TrainArguments(method=method).adapter_config()
        assert all(getattr(config, name) == value for name, value in row.items() if name in ADAPTER_OPTIONS)
        assert TrainArguments(method=method).learning_rates() == (row["lr"], row["lr_lowrank"])
        assert TrainArguments(method=method).learning_rate is None  # resolved when the run starts
    assert (TrainArguments(method="dept").adapter_config().r, TrainArguments(method="dept").adapter_config().num_spaces,
            TrainArguments(method="pt").adapter_config().r) == (59, 0, 0)
    assert TrainArguments(r=16, num_spaces=2).adapter_config().r == 16
    assert TrainArguments(method="pt", learning_rate=0.3).learning_rates() == (0.3, METHOD_DEFAULTS["pt"]["lr_lowrank"])


def test_the_methods_defaults_spend_one_budget():
    from ept_fast.budget import adapter_parameters

    spent = [adapter_parameters(TrainArguments(method=m).adapter_config(), 384) for m in ("ept", "dept", "pt")]
    assert spent == [37_893, 37_888, 37_632] and all(37_893 - 384 < n <= 37_893 for n in spent)


@pytest.mark.parametrize("values, message", [
    (dict(method="dept", num_spaces=4), r"num_spaces: method='dept' has no multi-space projection, so num_spaces "
                                        r"must be 0, got 4"),
    (dict(method="dept", num_spaces=3), r"num_spaces: method='dept' has no multi-space projection"),
    (dict(method="pt", r=8), r"r: method='pt' \(vanilla prompt tuning\) has no low-rank update, so r must be 0"),
    (dict(method="lora"), r"--method: expected one of 'ept', 'dept', 'pt', 'head', got 'lora'"),
])
def test_a_value_that_contradicts_the_method_is_the_configs_error(values, message):
    with pytest.raises(ValueError, match=message):
        TrainArguments(**values)
    with pytest.raises(ValueError, match=message.replace("--method", "method")):
        EPTConfig(**values)


def test_the_head_alone_has_no_head_only_phase():
    with pytest.raises(ValueError, match="--head_only_steps: method .head. trains the head alone at every step alr"):
        TrainArguments(method="head", head_only_steps=2)
    for method, encoder_classifier, expected in (("head", True, 0), ("ept", True, 10), ("ept", False, 0)):
        assert TrainArguments(method=method).head_only_steps_for(encoder_classifier, 100, "Backbone") == expected


def test_the_init_text_fits_the_task():
    args = TrainArguments()
    assert args.adapter_config(get_task("bbc_news")).prompt_init_text == "Classify the topic of this news article:"
    assert args.adapter_config(get_task("sst2")).prompt_init_text == "Classify the sentiment of this sentence:"
    assert args.adapter_config().prompt_init_text == EPTConfig().prompt_init_text  # user files: the generic one
    assert TrainArguments(prompt_init_text="mine").adapter_config(get_task("sst2")).prompt_init_text == "mine"


def test_eval_needs_an_adapter():
    with pytest.raises(ValueError, match=r"--adapter: expected the folder of a saved adapter, got none"):
        parse_eval_args([])
    assert parse_eval_args(["--adapter", "runs/x", "--task", "sst2"]).adapter == "runs/x"
    with pytest.raises(ValueError, match=r"--max_train_samples: eval scores the validation and test splits and "
                                         r"reads no training examples, got 100"):
        parse_eval_args(["--adapter", "runs/x", "--max-train-samples", "100"])


def test_predict_takes_no_split_seed():
    from ept_fast.cli import parse_predict_args

    with pytest.raises(SystemExit):  # it predicts the rows of its input file: there is no split
        parse_predict_args(["--adapter", "runs/x", "--input-file", "in.jsonl", "--seed", "7"])


def test_list_options_replace_a_config_value_and_add_up_when_repeated(tmp_path):
    from ept_fast.cli import parse_compare_args, parse_predict_args, parse_train_args

    config = tmp_path / "run.yaml"
    config.write_text("label_names: [neg, pos]\n")
    assert parse_train_args(["--config", str(config)]).label_names == ["neg", "pos"]
    assert parse_train_args(["--config", str(config), "--label-names", "bad", "good"]).label_names == ["bad", "good"]
    assert parse_compare_args(["--methods", "ept", "--methods", "pt"]).methods == ["ept", "pt"]
    assert parse_compare_args([]).methods == ["ept", "dept", "pt"]
    args = parse_predict_args(["--adapter", "a=runs/lr=1e-3", "--adapter", "runs/b", "--input-file", "in.jsonl"])
    assert {name: str(path) for name, path in args.adapters().items()} == {"a": "runs/lr=1e-3", "b": "runs/b"}
