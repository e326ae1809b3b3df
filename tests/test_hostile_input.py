"""Hostile and careless input gets a clear error that names what was wrong, or the reading a user
means: never a silent misreading, and never an error from deep inside another library."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

from ept_fast import EPTConfig, EPTModel, get_ept_model
from ept_fast.interop import dept_checkpoint
from ept_fast.serialization import WEIGHTS_NAME, load_adapter
from ept_fast.tasks import custom_task, format_rows, read_rows
from ept_fast.training.options import TrainArguments, parse_options

from helpers import padded_batch
from tiny_models import VOCAB, adapter_config, tiny_bert_classifier, tiny_t5


def _options(tmp_path, text, suffix=".yaml"):
    path = tmp_path / f"options{suffix}"
    path.write_text(text)
    return parse_options(TrainArguments, ["--config", str(path)], "ept-fast train", "")


@pytest.mark.parametrize("text,expected", [
    ("fusion: 'false'\n", r"fusion expects true or false \(unquoted\), got 'false'"),
    ("lr: [0.1, 0.2]\n", r"lr expects one float, got \[0.1, 0.2\]"),
    ("num_virtual_tokens: 2.5\n", r"num_virtual_tokens expects an integer, got 2.5"),
    ("lr: -0.1\n", r"--learning_rate: expected a number > 0, got -0.1"),
    ("warmup_ratio: -5\n", r"--warmup_steps: expected steps >= 0 or a fraction in \[0, 1\), got -5"),
    ("weight_decay: -1\n", r"--weight_decay: expected a number >= 0, got -1"),
    ("head_only_steps: -2\n", r"--head_only_steps: expected whole steps >= 0 or a fraction in \[0, 1\), got -2"),
    ("head_only_steps: 2.5\n", r"--head_only_steps: expected whole steps >= 0 or a fraction in \[0, 1\), got 2.5"),
    ("head_only_steps: .inf\n", r"--head_only_steps: expected whole steps >= 0 or a fraction in \[0, 1\), got inf"),
])
def test_config_file_values_of_the_wrong_kind_are_errors(tmp_path, text, expected):
    with pytest.raises(ValueError, match=expected):
        _options(tmp_path, text)


def test_config_file_values_read_as_their_flags_read_them(tmp_path):
    options = _options(tmp_path, "label_names: pos\nlr: '0.1'\nresume: some/folder\nfusion: false\n")
    assert options.label_names == ["pos"] and options.learning_rate == 0.1
    assert options.resume_from_checkpoint == "some/folder"
    assert options.fusion is False
    with pytest.raises(ValueError, match=r"--config: .* must hold a mapping of option names to values"):
        _options(tmp_path, "[1, 2]", suffix=".json")
    path = tmp_path / "latin1.yaml"
    path.write_bytes("lr: 0.1 # café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"--config: .*latin1.yaml is not UTF-8 text"):
        parse_options(TrainArguments, ["--config", str(path)], "ept-fast train", "")


def test_labels_that_cannot_train_a_classifier_are_errors():
    rows = [{"text": "a", "label": "0"}, {"text": "b", "label": 0}]
    with pytest.raises(ValueError, match=r"train.jsonl: every label is 0; a classifier needs at least two classes"):
        custom_task(rows, "label", ["text"], "train.jsonl")
    with pytest.raises(ValueError, match=r"train.jsonl, row 2: label column 'label' is nan, not a label"):
        custom_task([{"text": "a", "label": 1.5}, {"text": "b", "label": float("nan")}], "label", ["text"],
                    "train.jsonl")
    with pytest.raises(ValueError, match=r"train.jsonl: every label is 'pos'; a classifier needs at least two"):
        custom_task([{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}], "label", ["text"], "train.jsonl")
    with pytest.raises(ValueError, match=r"--label_names: a classifier needs at least two class names, got \['pos'\]"):
        custom_task([{"text": "a", "label": "pos"}], "label", ["text"], "train.jsonl", label_names=["pos"])
    task = custom_task([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], "label", ["text"], "t")
    with pytest.raises(ValueError, match=r"train.jsonl, row 2: columns \['text'\] are null, not text"):
        format_rows(task, [{"text": "a", "label": "x"}, {"text": None, "label": "y"}], "train.jsonl")


def test_data_files_that_are_not_utf8_or_have_long_fields(tmp_path):
    latin = tmp_path / "train.csv"
    latin.write_bytes("text,label\ncafé,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"data file .*train.csv: not UTF-8 text .* save it as UTF-8"):
        read_rows(latin)
    long_field = tmp_path / "long.csv"
    long_field.write_text("text,label\n" + "w" * 200_000 + ",x\n", encoding="utf-8")
    assert len(read_rows(long_field)[0]["text"]) == 200_000  # past csv's default limit of 128 KB


def test_config_values_that_no_adapter_can_have():
    with pytest.raises(TypeError, match=r"fusion: expected True or False, got str 'false'"):
        EPTConfig(fusion="false")
    with pytest.raises(ValueError, match=r"config: a size of 1,000,000,000 .* is past 1,048,576"):
        EPTConfig(num_virtual_tokens=10**9)


def _saved(tmp_path):
    torch.manual_seed(0)
    model = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS"))
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_broken_adapter_files_name_the_file(tmp_path):
    folder = _saved(tmp_path)
    weights = folder / WEIGHTS_NAME
    tensors = load_adapter(folder).tensors
    tensors["prompt_encoder.prompt"][0, 0] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: tensor 'prompt_encoder.prompt' holds NaN or "
                                         r"infinite values"):
        EPTModel.from_pretrained(tiny_bert_classifier(), folder)
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: not a readable safetensors file"):
        load_adapter(folder)
    (folder / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"adapter_config.json: expected a JSON object of config fields, got list"):
        load_adapter(folder)


def test_a_dept_config_without_its_prompt_length_is_named(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING_LORA"}))
    save_file({"prompt_embeddings": torch.zeros(2, 4), "lora_embedding_A": torch.zeros(3, 1),
               "lora_embedding_B": torch.zeros(1, 4)}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"adapter_config.json: a DePT config names num_virtual_tokens"):
        dept_checkpoint(tmp_path)


def test_backbone_mismatches_are_named_before_transformers_sees_them():
    with pytest.raises(ValueError, match=r"config.task_type: BertForSequenceClassification is a SEQ_CLS backbone, got "
                                         r"SEQ_2_SEQ_LM"):
        get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_2_SEQ_LM"))
    with torch.device("meta"):
        meta = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                                        num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ValueError, match=r"model: BertForSequenceClassification's parameters are on the meta device"):
        get_ept_model(meta, adapter_config("SEQ_CLS"))
    model = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS", max_length=64))  # 64 positions
    ids, mask = padded_batch([61, 3], 61, VOCAB, left=False)
    with pytest.raises(ValueError, match=r"input_ids: the prompt \(m=4\) and the tokens \(T=61\) make 65 positions, "
                                         r"past the 64 of BertForSequenceClassification; shorten the input \(to T <= "
                                         r"60\)"):
        model(input_ids=ids, attention_mask=mask)
    ids, mask = padded_batch([5, 3], 5, VOCAB, left=False)
    with pytest.raises(ValueError, match=r"token_type_ids: expected the shape of input_ids \(2, 5\), got \(2, 4\)"):
        model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros(2, 4, dtype=torch.long))
    t5 = get_ept_model(tiny_t5(), adapter_config("SEQ_2_SEQ_LM", max_length=200))  # relative positions: no limit
    ids, mask = padded_batch([150], 150, VOCAB, left=False)
    assert t5.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1).shape[0] == 1


def test_a_pair_of_adapter_files_from_two_saves_is_read_again_then_refused(tmp_path, monkeypatch):
    from ept_fast import serialization

    first, second = _saved(tmp_path / "a"), _saved(tmp_path / "b")
    (first / "adapter_config.json").write_bytes((second / "adapter_config.json").read_bytes())  # a torn pair
    reads = []
    monkeypatch.setattr(serialization.time, "sleep", lambda seconds: reads.append(seconds))
    with pytest.raises(ValueError, match=r"adapter_config.json and adapter_model.safetensors belong to different saves "
                                         r"\(save_id \w+ and \w+\), still after 20 reads"):
        load_adapter(first)
    assert len(reads) == 20

    def the_other_writer_finishes(seconds):  # the second save's weights land while the reader waits
        (first / WEIGHTS_NAME).write_bytes((second / WEIGHTS_NAME).read_bytes())

    monkeypatch.setattr(serialization.time, "sleep", the_other_writer_finishes)
    assert torch.equal(load_adapter(first).tensors["prompt_encoder.prompt"],
                       load_adapter(second).tensors["prompt_encoder.prompt"])


def test_a_full_disk_is_named_and_replaces_nothing(tmp_path):
    import errno

    from ept_fast.cli import _run
    from ept_fast.serialization import WriteError, atomic_write

    target = tmp_path / "metrics.json"
    target.write_text("kept")

    def no_space(temporary):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=r"could not write .*metrics.json \(No space left on device\); is the disk "
                                         r"full\? nothing was replaced"):
        atomic_write(target, no_space)
    assert target.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert _run("eval", lambda: atomic_write(target, no_space)) == 2  # the commands' clean error, no traceback


@pytest.mark.parametrize("suffix,text,kind", [(".yaml", "a: [\n", "YAML"), (".json", '{"lr": 0.1,}', "JSON")])
def test_a_malformed_config_file_is_named(tmp_path, suffix, text, kind):
    with pytest.raises(ValueError, match=rf"--config: .*options{suffix} is not well-formed {kind}"):
        _options(tmp_path, text, suffix=suffix)


def test_sizes_whose_product_no_memory_holds_are_the_configs_error():
    from transformers import BertConfig, BertForSequenceClassification

    from ept_fast import EPTConfig, get_ept_model

    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ValueError, match=r"config: 100,017,601,093 adapter parameters \(m=1000000, n=1000000, "
                                         r"r=100000.* would take .* GiB in float32; check the sizes"):
        get_ept_model(bert, EPTConfig(num_virtual_tokens=10**6, max_length=10**6, r=10**5, prompt_init="RANDOM"))


def test_labels_and_texts_read_as_the_user_means_or_refused():
    rows = [{"text": "a", "label": "0"}, {"text": "b", "label": "1"}, {"text": "c", "label": "1.0"}]
    with pytest.raises(ValueError, match=r"train.csv: the labels are whole numbers, but row 3 writes '1.0'; write "
                                         r"class ids as integers"):
        custom_task(rows, "label", ["text"], "train.csv")
    assert custom_task(rows, "label", ["text"], "train.csv", metric="pearson").is_regression
    spaced = custom_task([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg "}], "label", ["text"], "f.csv")
    assert spaced.label_names == ("neg", "pos")
    assert format_rows(spaced, [{"text": "c", "label": "neg  "}], "v.csv")[0]["label"] == 0
    with pytest.raises(ValueError, match=r"v.csv, row 1: columns \['text'\] are empty, no text to read"):
        format_rows(spaced, [{"text": "   ", "label": "pos"}], "v.csv")
    stars = custom_task([{"text": "a", "label": "1"}, {"text": "b", "label": "3"}], "label", ["text"], "f.csv",
                        label_names=["1", "2", "3"])
    assert format_rows(stars, [{"text": "c", "label": "1"}], "v.csv")[0]["label"] == 0  # the name "1"
    with pytest.raises(ValueError, match=r"label: expected one of the names \['1', '2', '3'\] \(numbers here are "
                                         r"names, not ids\), got '0'"):
        format_rows(stars, [{"text": "c", "label": "0"}], "v.csv")  # was read as the id of class "1"


def test_a_csv_header_that_names_a_column_twice_is_refused(tmp_path):
    data = tmp_path / "dup.csv"
    data.write_text("text,label,text\nhello world,pos,IGNORED\n")
    with pytest.raises(ValueError, match=r"dup.csv: the header names \['text'\] more than once; give each column"):
        read_rows(data)


def test_an_lm_adapter_saved_with_modules_to_save_loads_without_them(tmp_path):
    from tiny_models import tiny_gpt2

    get_ept_model(tiny_gpt2(), adapter_config("CAUSAL_LM")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    with pytest.warns(UserWarning, match=r"modules_to_save: \['lm_head'\] was saved with this CAUSAL_LM adapter"):
        loaded = EPTModel.from_pretrained(tiny_gpt2(), tmp_path)
    assert loaded.active_peft_config.modules_to_save is None


def test_a_models_inputs_of_the_wrong_kind_are_named_before_the_adapters_are_read():
    from tiny_models import tiny_gpt2

    model = get_ept_model(tiny_gpt2(), adapter_config("CAUSAL_LM"))
    ids = torch.randint(2, VOCAB, (2, 5))
    for call in (model, model.generate):
        with pytest.raises(ValueError, match=r"input_ids: expected a 2-d tensor of shape \(b, T\), got shape \(5,\)"):
            call(input_ids=ids[0], adapter_names=["default"])
        with pytest.raises(TypeError, match=r"input_ids: expected a torch.Tensor, got list"):
            call(input_ids=ids.tolist(), adapter_names=["default", "default"])
    with pytest.raises(ValueError, match=r"adapter_names: expected one adapter name \(a str\) per row, as a list, "
                                         r"got int"):
        model(input_ids=ids, adapter_names=3)
    for labels in (ids[:, :3], torch.randint(2, VOCAB, (2, 8))):  # cut silently, or an index error, before
        with pytest.raises(ValueError, match=r"labels: a causal LM's labels are its input_ids' tokens, expected "
                                             r"their shape \(2, 5\), got"):
            model(input_ids=ids, labels=labels)
    with pytest.raises(ValueError, match=r"config.modules_to_save: trains copies of a classifier's head \(SEQ_CLS\) "
                                         r"with the adapter; a CAUSAL_LM model trains none, got \['lm_head'\]"):
        get_ept_model(tiny_gpt2(), adapter_config("CAUSAL_LM", modules_to_save=["lm_head"]))
