"""The real all-MiniLM-L6-v2 (packaged, offline) as a SEQ_CLS backbone on BBC News texts."""

import os

import pytest
import torch

from ept_fast import EPTConfig, get_ept_model, param_groups
from ept_fast.offline import bbc_news, minilm_path

from helpers import needs_offline_data

pytestmark = needs_offline_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)
    return model, tokenizer


def test_a_few_steps_lower_the_loss(minilm):
    backbone, tokenizer = minilm
    texts, labels, _ = bbc_news()
    picked = list(range(0, len(texts), len(texts) // 24))[:24]  # every topic, in file order
    batch = tokenizer([texts[i] for i in picked], truncation=True, max_length=96, padding=True, return_tensors="pt")
    targets = torch.tensor([labels[i] for i in picked])
    config = EPTConfig(num_virtual_tokens=8, max_length=96, r=8, num_spaces=2, space_rank=4,
                       prompt_init_text="Classify the topic of this news article:")
    model = get_ept_model(backbone, config, tokenizer=tokenizer)
    assert model.active_peft_config.task_type.value == "SEQ_CLS"
    optimizer = torch.optim.AdamW(param_groups(model, lr_prompt=3e-2, lr_lowrank=3e-3))

    def loss():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=targets).loss

    model.eval()
    with torch.no_grad():
        before = loss().item()
    model.train()
    for _ in range(6):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.8 * before, (before, after)
