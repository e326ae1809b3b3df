"""Interop with the real ``peft`` package and DePT's checkpoints, on tiny models."""

import copy
import json

import pytest
import torch

from ept_fast import EPTConfig, EPTModel, PromptInit, get_ept_model

from helpers import needs_modules
from tiny_models import BUILDERS, VOCAB, adapter_config, moved, task_batch, tiny_t5

TASKS = list(BUILDERS)


def _peft_model(backbone, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(backbone, str(folder)).eval()


def _logits(model, ids, mask, labels):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, labels=labels).logits


@needs_modules("peft")
@pytest.mark.parametrize("task", TASKS)
def test_pt_export_loads_in_peft_with_bit_identical_outputs(task, tmp_path):
    torch.manual_seed(0)
    backbone = BUILDERS[task]()
    pristine = copy.deepcopy(backbone)
    model = moved(get_ept_model(backbone, adapter_config(task, method="pt", r=None, num_spaces=None)))
    if task == "SEQ_CLS":
        with torch.no_grad():
            model.head_copies.default[0].weight.add_(1.0)  # the trained head goes with the export
    assert model.export_peft_prompt_tuning(tmp_path) == {"lossless": True, "max_abs_difference": 0.0}
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PROMPT_TUNING" and saved["num_transformer_submodules"] == 1
    peft_model = _peft_model(pristine, tmp_path)
    ids, mask, labels = task_batch(task)
    assert torch.equal(_logits(peft_model, ids, mask, labels), _logits(model.eval(), ids, mask, labels))


@needs_modules("peft")
@pytest.mark.parametrize("method", ["dept", "ept"])
def test_lossy_export_is_refused_unless_allowed_and_reports_the_difference(method, tmp_path):
    torch.manual_seed(0)
    backbone = tiny_t5()
    pristine = copy.deepcopy(backbone)
    overrides = {"num_spaces": None} if method == "dept" else {}
    model = moved(get_ept_model(backbone, adapter_config("SEQ_2_SEQ_LM", method=method, **overrides))).eval()
    with pytest.raises(ValueError, match=rf"adapter 'default' is method='{method}', whose low-rank update .* pass "
                                         r"allow_lossy=True"):
        model.export_peft_prompt_tuning(tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    ids = torch.randint(2, VOCAB, (2, 6))
    report = model.export_peft_prompt_tuning(tmp_path, allow_lossy=True, sample_input_ids=ids)
    assert report["lossless"] is False and report["max_abs_difference"] > 1e-4
    start = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        ours = model(input_ids=ids, decoder_input_ids=start).logits
        peft_out = _peft_model(pristine, tmp_path)(input_ids=ids, decoder_input_ids=start).logits
    assert report["max_abs_difference"] == pytest.approx(float((ours - peft_out).abs().max()), rel=1e-5)


def _dept_folder(folder, m, n, r, alpha, d, prefixed, seed=0):
    """Files as DePT's PEFT fork writes them: PROMPT_TUNING_LORA config, adapter_model.bin."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {"prompt_embeddings": torch.randn(m, d, generator=generator),
               "lora_embedding_A": torch.randn(n, r, generator=generator),
               "lora_embedding_B": torch.randn(r, d, generator=generator) * 0.1}
    keys = {name: (f"prompt_encoder.{name}" if prefixed and name.startswith("lora") else name) for name in tensors}
    folder.mkdir()
    torch.save({keys[name]: value for name, value in tensors.items()}, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "PROMPT_TUNING_LORA", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": m, "r": r,
        "lora_alpha": alpha, "max_length": n, "token_dim": d, "num_transformer_submodules": 1,
        "base_model_name_or_path": "t5-base", "prompt_tuning_init": "TEXT"}))
    return tensors


@pytest.mark.parametrize("prefixed", [True, False])
def test_dept_checkpoints_load_with_dept_scaling(prefixed, tmp_path):
    m, n, r, alpha = 3, 10, 2, 8.0
    tensors = _dept_folder(tmp_path / "dept", m, n, r, alpha, 40, prefixed)
    backbone = tiny_t5()
    model = EPTModel.from_dept_checkpoint(backbone, tmp_path / "dept")
    config = model.active_peft_config
    assert (config.method.value, config.num_virtual_tokens, config.max_length, config.r) == ("dept", m, n, r)
    ids = torch.randint(2, VOCAB, (2, 7))  # unpadded rows: DePT adds A·B by position, as here by attended token
    labels = torch.randint(2, VOCAB, (2, 3))
    update = (alpha / r ** 0.5) * tensors["lora_embedding_A"] @ tensors["lora_embedding_B"]
    embeds = torch.cat([tensors["prompt_embeddings"].expand(2, -1, -1),
                        backbone.get_input_embeddings()(ids) + update[:7]], dim=1)
    expected = backbone(inputs_embeds=embeds, attention_mask=torch.ones(2, m + 7, dtype=torch.long), labels=labels)
    ours = model(input_ids=ids, labels=labels)
    assert torch.allclose(ours.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())


def test_dept_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected adapter_config.json, which is missing"):
        EPTModel.from_dept_checkpoint(tiny_t5(), tmp_path)
    _dept_folder(tmp_path / "dept", 3, 10, 2, 8.0, 40, True)
    (tmp_path / "dept" / "adapter_model.bin").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"expected one of \['adapter_model.bin', 'adapter_model.safetensors'\]"):
        EPTModel.from_dept_checkpoint(tiny_t5(), tmp_path / "dept")
    config = tmp_path / "dept" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "peft_type": "LORA"}))
    with pytest.raises(ValueError, match=r"expected DePT's peft_type 'PROMPT_TUNING_LORA', got 'LORA'"):
        EPTModel.from_dept_checkpoint(tiny_t5(), tmp_path / "dept")


def test_peft_spellings_are_aliases():
    config = EPTConfig(prompt_tuning_init="SAMPLE_VOCAB", prompt_tuning_init_text="Topic:")
    assert config.prompt_init is PromptInit.RANDOM_VOCAB and config.prompt_init_text == "Topic:"
    loaded = EPTConfig.from_dict({"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "Say:"})
    assert loaded.prompt_init is PromptInit.TEXT and loaded.prompt_init_text == "Say:"
    assert "prompt_tuning_init" not in config.to_dict()
    with pytest.raises(ValueError, match=r"prompt_init: expected one of 'TEXT', 'RANDOM_VOCAB', 'RANDOM', got 'WORDS'"):
        EPTConfig(prompt_tuning_init="WORDS")
    same = EPTConfig(prompt_init="RANDOM_VOCAB", prompt_tuning_init="SAMPLE_VOCAB")  # one init, two spellings
    assert same.prompt_init is PromptInit.RANDOM_VOCAB
    with pytest.raises(ValueError, match=r"prompt_tuning_init: PEFT's name for prompt_init; got both, and they differ "
                                         r"\(prompt_init='RANDOM_VOCAB', prompt_tuning_init='RANDOM'\)"):
        EPTConfig(prompt_init="RANDOM_VOCAB", prompt_tuning_init="RANDOM")
    with pytest.raises(ValueError, match=r"prompt_tuning_init_text: PEFT's name for prompt_init_text; got both"):
        EPTConfig(prompt_init_text="Topic:", prompt_tuning_init_text="Say:")
