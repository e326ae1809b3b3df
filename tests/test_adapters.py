"""PEFT's model surface on EPTModel: named adapters, disable_adapter, the hub (uploads through a
recording stand-in, loads through a local cache the test fills), dtype, and nothing of the
adapter API reaching the backbone."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from ept_fast import EPTModel, get_ept_model

from tiny_models import BUILDERS, adapter_config, moved, task_batch, tiny_bert_classifier, tiny_gpt2, tiny_t5

TASKS = list(BUILDERS)


def _outputs(model, batch):
    ids, mask, labels = batch
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, labels=labels).logits


def _trained_adapter(task, seed, folder, **overrides):
    """Save an adapter moved away from its initial values (a trained head too) into ``folder``."""
    torch.manual_seed(seed)
    model = moved(get_ept_model(BUILDERS[task](), adapter_config(task, **overrides)))
    if task == "SEQ_CLS":
        with torch.no_grad():
            model.head_copies.default[0].weight.add_(float(seed))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("task", TASKS)
def test_disable_adapter_gives_the_bare_backbone(task):
    torch.manual_seed(0)
    backbone = BUILDERS[task]()
    bare = copy.deepcopy(backbone).requires_grad_(False)  # frozen, as the adapter leaves it (same kernels)
    model = moved(get_ept_model(backbone, adapter_config(task)))
    if task == "SEQ_CLS":
        with torch.no_grad():
            model.head_copies.default[0].weight.add_(1.0)
    batch = ids, mask, labels = task_batch(task)
    prompted = _outputs(model, batch)
    with model.disable_adapter():
        assert torch.equal(_outputs(model, batch), bare(input_ids=ids, attention_mask=mask, labels=labels).logits)
        if task != "SEQ_CLS":
            options = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
            assert torch.equal(model.generate(ids, attention_mask=mask, **options),
                               bare.generate(input_ids=ids, attention_mask=mask, **options))
    assert torch.equal(_outputs(model, batch), prompted)  # the adapter is back after the block
    assert model.get_base_model() is backbone


def test_the_backbone_is_left_as_it_was():
    """Called directly, shared by two EPTModels, copied or pickled: the backbone's own head answers
    outside an EPTModel's call, and each EPTModel uses its own adapter's head."""
    import pickle

    torch.manual_seed(0)
    backbone = tiny_bert_classifier()
    bare = copy.deepcopy(backbone).requires_grad_(False)
    batch = ids, mask, _ = task_batch("SEQ_CLS")
    first, second = (moved(get_ept_model(backbone, adapter_config("SEQ_CLS"))) for _ in range(2))
    with torch.no_grad():
        second.head_copies.default[0].weight.add_(1.0)
    first_logits, second_logits = _outputs(first, batch), _outputs(second, batch)
    assert not torch.equal(first_logits, second_logits)
    assert torch.equal(_outputs(first, batch), first_logits)  # building and running the second changed nothing
    assert torch.equal(backbone(input_ids=ids, attention_mask=mask).logits,
                       bare(input_ids=ids, attention_mask=mask).logits)
    assert backbone.state_dict().keys() == bare.state_dict().keys()
    assert torch.equal(_outputs(copy.deepcopy(second), batch), second_logits)
    assert torch.equal(_outputs(pickle.loads(pickle.dumps(second)), batch), second_logits)
    with second.disable_adapter():
        with second.disable_adapter():
            pass
        assert torch.equal(_outputs(second, batch), bare(input_ids=ids, attention_mask=mask, labels=batch[2]).logits)


@pytest.mark.parametrize("task", TASKS)
def test_named_adapters_switch_like_separate_models(task, tmp_path):
    first = _trained_adapter(task, 1, tmp_path / "first")
    second = _trained_adapter(task, 2, tmp_path / "second", num_virtual_tokens=3, method="dept", num_spaces=None)
    torch.manual_seed(0)
    backbone = BUILDERS[task]()
    batch = task_batch(task)
    alone = {name: _outputs(EPTModel.from_pretrained(copy.deepcopy(backbone), folder), batch)
             for name, folder in (("first", first), ("second", second))}

    model = EPTModel.from_pretrained(backbone, first, adapter_name="first")
    model.load_adapter(second, adapter_name="second")
    assert model.active_adapter == "first" and sorted(model.peft_config) == ["first", "second"]
    assert model.peft_config["second"].num_virtual_tokens == 3 and model.peft_config["second"].method.value == "dept"
    assert torch.equal(_outputs(model, batch), alone["first"])
    model.set_adapter("second")
    assert model.active_peft_config is model.peft_config["second"]
    assert torch.equal(_outputs(model, batch), alone["second"])
    model.delete_adapter("second")
    assert model.active_adapter == "first" and list(model.peft_config) == ["first"]
    assert torch.equal(_outputs(model, batch), alone["first"])


def test_only_the_active_trainable_adapter_trains():
    model = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS"))
    model.add_adapter("other", adapter_config("SEQ_CLS", num_virtual_tokens=2))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in name for name in trainable)
    model.set_adapter("other")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in name for name in trainable)
    assert {"head_copies.other.0.weight", "prompt_encoders.other.prompt"} <= trainable


def test_adapter_name_errors(tmp_path):
    model = get_ept_model(tiny_t5(), adapter_config("SEQ_2_SEQ_LM"))
    with pytest.raises(ValueError, match=r"adapter_name: no adapter named 'nope'; this model has \['default'\]"):
        model.set_adapter("nope")
    with pytest.raises(ValueError, match=r"adapter_name: an adapter named 'default' exists already"):
        model.add_adapter("default", adapter_config("SEQ_2_SEQ_LM"))
    with pytest.raises(ValueError, match=r"'default' is this model's only adapter; use get_base_model\(\)"):
        model.delete_adapter("default")
    with pytest.raises(ValueError, match=r"config.task_type: this model's adapters are SEQ_2_SEQ_LM, got CAUSAL_LM"):
        model.add_adapter("lm", adapter_config("CAUSAL_LM"))
    with pytest.raises(FileNotFoundError,
                       match=r"adapter directory: expected a folder .* but .*nowhere does not exist"):
        model.load_adapter(str(tmp_path / "nowhere"), adapter_name="x")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FileNotFoundError, match=r"adapter directory: expected a folder .* but .*a_file is a file"):
        model.load_adapter(str(tmp_path / "a_file"), adapter_name="x")
    for bad in ("../up", "a.b", "", "update"):
        with pytest.raises(ValueError, match=r"adapter_name: expected letters, digits, '_' or '-'"):
            model.add_adapter(bad, adapter_config("SEQ_2_SEQ_LM"))


def test_a_failed_load_leaves_no_adapter_behind(tmp_path):
    from safetensors.torch import load_file, save_file

    model = get_ept_model(tiny_t5(), adapter_config("SEQ_2_SEQ_LM"))
    model.save_pretrained(tmp_path / "good")
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    tensors = load_file(str(tmp_path / "bad" / "adapter_model.safetensors"))
    del tensors["prompt_encoder.lora_b"]
    save_file(tensors, str(tmp_path / "bad" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"tensors do not match this model \(missing \['prompt_encoder.lora_b'\]"):
        model.load_adapter(tmp_path / "bad", adapter_name="x")
    assert list(model.peft_config) == ["default"] and list(model.prompt_encoders) == ["default"]
    model.load_adapter(tmp_path / "good", adapter_name="x")
    assert sorted(model.peft_config) == ["default", "x"]


def test_save_pretrained_writes_each_adapter_as_peft_does_and_only_on_the_main_process(tmp_path):
    model = get_ept_model(tiny_t5(), adapter_config("SEQ_2_SEQ_LM"))
    model.add_adapter("extra", adapter_config("SEQ_2_SEQ_LM", num_virtual_tokens=2))
    model.save_pretrained(tmp_path / "worker", is_main_process=False)
    assert not (tmp_path / "worker").exists()
    model.save_pretrained(tmp_path / "all")
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "extra"]
    assert json.loads((tmp_path / "all" / "extra" / "adapter_config.json").read_text())["num_virtual_tokens"] == 2
    loaded = EPTModel.from_pretrained(tiny_t5(), tmp_path / "all", subfolder="extra")
    assert loaded.active_peft_config.num_virtual_tokens == 2

    # selected_adapters as in PEFT: every name checked before anything is written; [] writes none.
    with pytest.raises(ValueError, match=r"selected_adapters: no adapter named \['nope'\]; this model has "
                                         r"\['default', 'extra'\]"):
        model.save_pretrained(tmp_path / "some", selected_adapters=["extra", "nope"])
    assert not (tmp_path / "some").exists()
    model.save_pretrained(tmp_path / "none", selected_adapters=[])
    assert not (tmp_path / "none").exists()
    model.save_pretrained(tmp_path / "one", selected_adapters="extra", safe_serialization=True)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["extra"]
    with pytest.raises(ValueError, match=r"safe_serialization: ept_fast writes adapter_model.safetensors only"):
        model.save_pretrained(tmp_path / "bin", safe_serialization=False)


def test_a_failed_save_leaves_the_previous_pair_of_files(tmp_path, monkeypatch):
    """The weights are renamed in only once the config is written too: no new weights with an old config."""
    import pathlib

    model = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS"))
    model.save_pretrained(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}
    with torch.no_grad():
        model.prompt_encoder.prompt.add_(1.0)
    model.active_peft_config.lora_alpha = 3.0

    def failing_write_text(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", failing_write_text)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temporary left behind


def test_adapter_names_that_clash_with_module_attributes_are_refused():
    model = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS"))
    for name in ("training", "_modules", "keys"):
        with pytest.raises(ValueError, match=rf"adapter_name: expected letters, digits, '_' or '-' \(and not an "
                                             rf"attribute of nn.ModuleDict\), got '{name}'"):
            model.add_adapter(name, adapter_config("SEQ_CLS"))


@pytest.mark.parametrize("task,builder", [("SEQ_2_SEQ_LM", tiny_t5), ("CAUSAL_LM", tiny_gpt2)])
def test_generate_takes_input_ids_by_position(task, builder):
    model = moved(get_ept_model(builder(), adapter_config(task)))
    ids, mask, _ = task_batch(task)
    options = dict(attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **options), model.generate(input_ids=ids, **options))


def test_no_adapter_or_hub_method_reaches_the_backbone():
    model = get_ept_model(tiny_gpt2(), adapter_config("CAUSAL_LM"))
    names = ["push_to_hub", "save_pretrained", "from_pretrained", "load_adapter", "set_adapter", "add_adapter",
             "delete_adapter", "disable_adapter", "active_adapter", "active_adapters", "enable_adapters",
             "disable_adapters", "get_adapter_state_dict", "merge_and_unload", "unload", "get_base_model",
             "peft_config", "_hf_peft_config_loaded", "print_trainable_parameters", "get_nb_trainable_parameters"]
    for name in names:
        if hasattr(type(model), name) or name in vars(model):
            continue  # EPTModel's own
        with pytest.raises(AttributeError, match=f"EPTModel has no attribute '{name}'"):
            getattr(model, name)
    assert model.push_to_hub.__func__ is EPTModel.push_to_hub
    assert model.generation_config is model.base_model.generation_config  # other names still reach it


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the files each upload would send."""

    calls = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {p.name: p.read_bytes() for p in sorted(Path(folder_path).rglob("*"))}
        self.calls.append(("upload_folder", repo_id, files, kwargs))
        return "commit-info"


def test_push_to_hub_uploads_the_adapter_files_and_a_card_only(monkeypatch):
    import ept_fast.hub

    RecordingHfApi.calls = []
    monkeypatch.setattr(ept_fast.hub, "HfApi", RecordingHfApi)
    model = get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS"))
    model.task_metadata = {"name": "topics", "label_names": ["a", "b", "c"]}
    assert model.push_to_hub("me/topics", metrics={"test_accuracy": 0.9512}, private=True) == "commit-info"
    (create, repo, options), (upload, uploaded_to, files, upload_options) = RecordingHfApi.calls
    assert (create, repo, options["private"], options["exist_ok"]) == ("create_repo", "me/topics", True, True)
    assert (upload, uploaded_to) == ("upload_folder", "me/topics")
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = files["README.md"].decode()
    trainable = model.get_nb_trainable_parameters()[0]
    for expected in ("method | ept", "m (prompt length) | 4", "r | 3", "K (subspaces) | 2", "h (subspace rank) | 4",
                     f"trainable parameters | {trainable:,d}", "test_accuracy | 0.9512", "labels | a, b, c"):
        assert expected in card
    backbone_bytes = sum(p.numel() * p.element_size() for p in model.base_model.parameters())
    assert len(files["adapter_model.safetensors"]) < backbone_bytes / 4  # the adapter, not the model

    RecordingHfApi.calls = []  # to a branch: created first (it may not exist yet), as transformers does
    model.push_to_hub("me/topics", revision="v2")
    assert [call[0] for call in RecordingHfApi.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert RecordingHfApi.calls[1][2] == {"branch": "v2", "exist_ok": True, "repo_type": "model"}
    assert RecordingHfApi.calls[2][3]["revision"] == "v2"


def _fill_hub_cache(cache, repo_id, folder, commit, branch="main", subfolder=None):
    """Lay ``folder``'s files out as huggingface_hub's cache holds a download of ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit / (subfolder or "")
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        shutil.copy(path, snapshot / path.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)


def test_from_pretrained_and_load_adapter_read_a_hub_id_from_the_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    first = _trained_adapter("SEQ_CLS", 1, tmp_path / "first")
    second = _trained_adapter("SEQ_CLS", 2, tmp_path / "second")
    _fill_hub_cache(cache, "me/topics", first, "a" * 40)
    _fill_hub_cache(cache, "me/topics", second, "b" * 40, branch="v2", subfolder="sub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    torch.manual_seed(0)
    backbone = tiny_bert_classifier()
    batch = task_batch("SEQ_CLS")
    expected = {name: _outputs(EPTModel.from_pretrained(copy.deepcopy(backbone), folder), batch)
                for name, folder in (("first", first), ("second", second))}
    model = EPTModel.from_pretrained(backbone, "me/topics", adapter_name="first")
    model.load_adapter("me/topics", adapter_name="second", revision="v2", subfolder="sub")
    assert torch.equal(_outputs(model, batch), expected["first"])
    model.set_adapter("second")
    assert torch.equal(_outputs(model, batch), expected["second"])
    with pytest.raises(FileNotFoundError, match=r"'me/absent' is neither a local adapter folder nor an adapter on "
                                                r"the Hugging Face hub"):
        model.load_adapter("me/absent", adapter_name="third")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_casting_the_model_keeps_the_adapter_in_float32(dtype):
    model = moved(get_ept_model(tiny_bert_classifier(), adapter_config("SEQ_CLS")))
    before = {name: p.detach().clone() for name, p in model.prompt_encoder.named_parameters()}
    model.merge_prompt()
    model.to(dtype)
    for name, parameter in model.prompt_encoder.named_parameters():
        assert parameter.dtype == torch.float32 and torch.equal(parameter, before[name]), name
    assert model.ept_prompt().dtype == torch.float32
    assert model.base_model.bert.embeddings.word_embeddings.weight.dtype == dtype
    assert model.head_copies.default[0].weight.dtype == dtype  # the head runs on the backbone's output
    model.half().float()
    assert all(torch.equal(p, before[n]) for n, p in model.prompt_encoder.named_parameters())
