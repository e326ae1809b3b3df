"""Tiny Hugging Face backbones built from configs (no downloads), in eval mode without dropout, and
small adapters and batches for them."""

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)

from ept_fast import EPTConfig

from helpers import padded_batch

VOCAB, HIDDEN = 64, 40


def tiny_t5():
    return T5ForConditionalGeneration(T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=8,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )).eval()


def tiny_gpt2():
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=HIDDEN, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )).eval()


def tiny_bert_classifier():
    return BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )).eval()


BUILDERS = {"SEQ_2_SEQ_LM": tiny_t5, "CAUSAL_LM": tiny_gpt2, "SEQ_CLS": tiny_bert_classifier}


def adapter_config(task, **overrides):
    values = dict(task_type=task, num_virtual_tokens=4, max_length=12, r=3, num_spaces=2, space_rank=4,
                  prompt_init="RANDOM_VOCAB")
    values.update(overrides)
    return EPTConfig(**values)


def moved(model):
    """Move every trainable adapter parameter away from its initial value, so every term is active."""
    with torch.no_grad():
        for parameter in model.prompt_encoder.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def task_batch(task, left=False):
    ids, mask = padded_batch([7, 4, 6], 7, VOCAB, left=left)
    ids[ids < 2] = 2  # keep pad / eos ids out of the text
    labels = {"SEQ_2_SEQ_LM": torch.randint(2, VOCAB, (3, 3)), "CAUSAL_LM": ids.masked_fill(mask == 0, -100),
              "SEQ_CLS": torch.tensor([0, 2, 1])}[task]
    return ids, mask, labels
