"""What an encoder classifier's head reads (``EPTConfig.readout``), and the head alone
(``method="head"``): values against a hand computation, saving and loading, mixed batches,
PEFT export and the errors."""

import pytest
import torch

from ept_fast import EPTConfig, EPTModel, Method, Readout, get_ept_model
from ept_fast.budget import adapter_parameters, fit_budget

from helpers import padded_batch
from tiny_models import HIDDEN, VOCAB, adapter_config, moved, tiny_bert_classifier, tiny_gpt2


def _classifier():
    torch.manual_seed(0)
    return tiny_bert_classifier()


def _by_hand(model, input_ids, attention_mask, readout):
    """The logits as the readout defines them: the adapter's head copy on the chosen vector of
    the backbone's last hidden states, through BERT's pooler except for sentence_embedding."""
    backbone = model.get_base_model()
    embeds, mask = model.assemble_inputs(input_ids, attention_mask)
    hidden = backbone.bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    m = embeds.shape[1] - input_ids.shape[1]
    tokens, real = hidden[:, m:], attention_mask.unsqueeze(-1).float()
    vector = {"backbone": hidden[:, 0],
              "first_token": tokens[torch.arange(len(tokens)), attention_mask.argmax(dim=1)],
              "mean": (tokens * real).sum(1) / real.sum(1)}[readout.replace("sentence_embedding", "mean")]
    pooled = vector if readout == "sentence_embedding" else backbone.bert.pooler(vector.unsqueeze(1))
    return model.head_copies[model.active_adapter][0](pooled)


@pytest.mark.parametrize("readout", [r.value for r in Readout])
@pytest.mark.parametrize("method", ["ept", "head"])
def test_the_head_reads_what_the_readout_chooses(readout, method):
    sizes = {} if method == "ept" else dict(num_virtual_tokens=0, r=0, num_spaces=0)
    model = moved(get_ept_model(_classifier(), adapter_config("SEQ_CLS", method=method, readout=readout, **sizes)))
    ids, mask = padded_batch([7, 4, 6], 7, VOCAB, left=False)  # right padding: rows 2 and 3 end early
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        expected = _by_hand(model, ids, mask, readout)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_readouts_differ_and_padding_is_not_read():
    backbone = _classifier()
    ids, mask = padded_batch([7, 4], 7, VOCAB, left=False)
    logits = {}
    for readout in ("backbone", "first_token", "mean", "sentence_embedding"):
        model = get_ept_model(backbone, adapter_config("SEQ_CLS", readout=readout))
        with torch.no_grad():
            logits[readout] = model(input_ids=ids, attention_mask=mask).logits
            # The same row without its padding gives the same logits.
            alone = model(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
        torch.testing.assert_close(logits[readout][1:], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits["backbone"], logits["mean"])
    assert not torch.allclose(logits["first_token"], logits["mean"])
    assert not torch.allclose(logits["sentence_embedding"], logits["mean"])


def test_the_head_alone_trains_only_the_head():
    model = get_ept_model(_classifier(), EPTConfig(method="head", max_length=12, readout="mean"))
    config = model.active_peft_config
    assert (config.num_virtual_tokens, config.r, config.num_spaces, config.fusion) == (0, 0, 0, False)
    assert adapter_parameters(config, HIDDEN) == 0 and model.prompt_encoder().shape == (0, HIDDEN)
    head = model.head_copies["default"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sum(p.numel() for p in head.parameters())
    ids, mask = padded_batch([5, 3], 5, VOCAB, left=False)
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2])).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_readout_and_head_method_are_saved_and_loaded(tmp_path):
    for name, config in (("mean", adapter_config("SEQ_CLS", readout="first_token")),
                         ("head", EPTConfig(method="head", max_length=12, readout="sentence_embedding"))):
        model = moved(get_ept_model(_classifier(), config)) if name == "mean" else get_ept_model(_classifier(), config)
        model.save_pretrained(tmp_path / name)
        loaded = EPTModel.from_pretrained(_classifier(), tmp_path / name)
        assert loaded.active_peft_config.readout is config.readout
        assert loaded.active_peft_config.method is config.method
        ids, mask = padded_batch([6, 3], 6, VOCAB, left=False)
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits,
                                       model.eval()(input_ids=ids, attention_mask=mask).logits)


def test_a_config_saved_before_the_option_reads_position_0():
    values = adapter_config("SEQ_CLS").to_dict()
    del values["readout"]
    assert EPTConfig.from_dict(values).readout is Readout.BACKBONE


def test_a_mixed_batch_reads_each_row_as_its_adapter_does():
    model = get_ept_model(_classifier(), adapter_config("SEQ_CLS", readout="mean"), adapter_name="mean")
    model.add_adapter("first", adapter_config("SEQ_CLS", num_virtual_tokens=2, r=2, readout="first_token"))
    model.add_adapter("plain", adapter_config("SEQ_CLS", num_virtual_tokens=3, readout="backbone"))
    model.add_adapter("head", EPTConfig(method="head", max_length=12, readout="mean"))
    model.add_adapter("embedding", adapter_config("SEQ_CLS", num_virtual_tokens=2, readout="sentence_embedding"))
    model.eval()
    ids, mask = padded_batch([7, 4, 6, 5, 3, 6], 7, VOCAB, left=False)
    names = ["mean", "first", "plain", "head", "embedding", "first"]
    with torch.no_grad():
        mixed = model(input_ids=ids, attention_mask=mask, adapter_names=names).logits
        for row, name in enumerate(names):
            model.set_adapter(name)
            alone = model(input_ids=ids[row:row + 1], attention_mask=mask[row:row + 1]).logits
            torch.testing.assert_close(mixed[row:row + 1], alone, atol=1e-5, rtol=1e-5)


def test_readout_and_head_errors():
    with pytest.raises(ValueError, match=r"readout: expected one of 'backbone', 'first_token', 'mean', "
                                         r"'sentence_embedding', got 'cls'"):
        EPTConfig(readout="cls")
    with pytest.raises(ValueError, match=r"readout: 'mean' chooses what a classifier's head reads \(SEQ_CLS\); "
                                         r"task_type is SEQ_2_SEQ_LM"):
        EPTConfig(task_type="SEQ_2_SEQ_LM", readout="mean")
    with pytest.raises(ValueError, match=r"num_virtual_tokens: method='head' \(the head alone\) has no prompt, so "
                                         r"num_virtual_tokens must be 0, got 4"):
        EPTConfig(method="head", num_virtual_tokens=4)
    with pytest.raises(ValueError, match=r"r: method='head' \(the head alone\) has no low-rank update, so r must be 0, "
                                         r"got 3"):
        EPTConfig(method="head", r=3)
    with pytest.raises(ValueError, match=r"param_budget: method 'head' trains the head alone"):
        fit_budget(EPTConfig(method="head"), 1000, HIDDEN)
    with pytest.raises(ValueError, match=r"readout: 'mean' chooses what a classifier's head reads .* task_type is "
                                         r"CAUSAL_LM"):
        get_ept_model(tiny_gpt2(), adapter_config(None, readout="mean"))  # the task type comes from the model
    from transformers import GPT2Config, GPT2ForSequenceClassification

    decoder = GPT2ForSequenceClassification(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=HIDDEN, n_layer=1,
                                                       n_head=2, num_labels=2, pad_token_id=0))
    with pytest.raises(ValueError, match=r"readout: a decoder classifier \(head 'score'\) reads each row's last "
                                         r"token; 'mean' is for encoder classifiers"):
        get_ept_model(decoder, adapter_config("SEQ_CLS", readout="mean"))


def test_sentence_embedding_skips_only_a_frozen_pooler_it_can_do_without():
    from torch import nn
    from transformers import (
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    sizes = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=64, num_labels=2)
    config = adapter_config("SEQ_CLS", readout="sentence_embedding")
    # RoBERTa's head pools with its own trained dense layer: nothing frozen to skip, so it reads as mean does.
    roberta = RobertaForSequenceClassification(RobertaConfig(**sizes, pad_token_id=1)).eval()
    ids, mask = padded_batch([6, 3], 6, VOCAB, left=False)
    logits = {}
    for readout in ("mean", "sentence_embedding"):
        torch.manual_seed(0)  # the same prompt; both head copies start as RoBERTa's own head
        model = get_ept_model(roberta, adapter_config("SEQ_CLS", readout=readout))
        with torch.no_grad():
            logits[readout] = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits["mean"], logits["sentence_embedding"])
    distilbert = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64, num_labels=2))
    with pytest.raises(ValueError, match=r"readout: 'sentence_embedding' gives the head the mean itself, but "
                                         r"DistilBertForSequenceClassification passes it through its frozen "
                                         r"pre_classifier and a ReLU; use 'mean'"):
        get_ept_model(distilbert, config)
    deberta = DebertaV2ForSequenceClassification(DebertaV2Config(**sizes)).eval()
    assert get_ept_model(deberta, config)(input_ids=ids, attention_mask=mask).logits.shape == (2, 2)
    narrow = _classifier()  # a pooler that changes the width: its head cannot read the mean itself
    narrow.bert.pooler.dense, narrow.classifier = nn.Linear(HIDDEN, 8), nn.Linear(8, 3)
    with pytest.raises(ValueError, match=rf"readout: 'sentence_embedding' skips the backbone's pooler, but bert.pooler "
                                         rf"\(BertPooler\) is not a dense layer of the hidden size \({HIDDEN}\)"):
        get_ept_model(narrow, config)


def test_peft_export_refuses_what_it_cannot_express(tmp_path):
    model = get_ept_model(_classifier(), adapter_config("SEQ_CLS", method="pt", r=0, num_spaces=0, readout="mean"))
    with pytest.raises(ValueError, match=r"adapter 'default' is read out with readout='mean', which PEFT's prompt "
                                         r"tuning cannot express .* pass allow_lossy=True"):
        model.export_peft_prompt_tuning(tmp_path / "pt")
    report = model.export_peft_prompt_tuning(tmp_path / "pt", allow_lossy=True)
    assert not report["lossless"] and report["max_abs_difference"] > 0
    head = get_ept_model(_classifier(), EPTConfig(method=Method.HEAD))
    with pytest.raises(ValueError, match=r"adapter 'default' is method='head', which has no prompt to export"):
        head.export_peft_prompt_tuning(tmp_path / "head", allow_lossy=True)


def test_the_head_alone_runs_no_backward_through_the_backbone():
    model = get_ept_model(_classifier(), EPTConfig(method="head", max_length=12))
    ids, mask = padded_batch([5, 3], 5, VOCAB, left=False)
    embeds, _ = model.assemble_inputs(ids, mask)
    assert not embeds.requires_grad  # nothing before the head needs a gradient
    assert all(p.requires_grad == (p.numel() > 0) for p in model.head_copies["default"].parameters())
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())


def test_the_head_alone_is_for_classifiers_and_the_moved_param_groups_says_where():
    with pytest.raises(ValueError, match=r"method: 'head' trains a classifier's head alone; task_type CAUSAL_LM"):
        EPTConfig(method="head", task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match=r"method: 'head' .* task_type CAUSAL_LM"):
        get_ept_model(tiny_gpt2(), EPTConfig(method="head"))
    model = get_ept_model(_classifier(), adapter_config("SEQ_CLS"))
    with pytest.raises(AttributeError, match=r"EPTModel.param_groups moved: use ept_fast.param_groups\(model"):
        model.param_groups(0.1, 0.01)


def test_baselines_keep_their_optimizer_groups():
    """Only the head alone freezes its empty tensors: DePT's and PT's groups (and so their saved
    optimizer states) are as they were."""
    from ept_fast import param_groups

    for method, sizes in (("dept", dict(num_spaces=0)), ("pt", dict(r=0, num_spaces=0))):
        model = get_ept_model(_classifier(), adapter_config("SEQ_CLS", method=method, **sizes))
        trainable = {name for name, p in model.prompt_encoder.named_parameters() if p.requires_grad}
        assert trainable == {"prompt", "lora_a", "lora_b", "proj_down", "proj_up", "gate_weight", "gate_bias"}
        assert len(param_groups(model, 0.1, 0.01)) == 2


def test_a_bf16_backbone_reads_the_mean_with_float32_weights():
    """The weights (1/3 is not a bf16 number) and the sum stay float32; the vector is cast once."""
    from ept_fast.heads import read_out

    hidden = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    weights = torch.tensor([[0.0, 1 / 3, 1 / 3, 1 / 3, 0.0], [0.0, 0.5, 0.5, 0.0, 0.0]])
    out = read_out(weights)(None, (), hidden)
    expected = torch.einsum("bs,bsd->bd", weights, hidden.float()).to(torch.bfloat16)
    assert torch.equal(out[:, 0], expected) and torch.equal(out[:, 1:], hidden[:, 1:])
