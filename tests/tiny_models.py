"""Tiny Hugging Face backbones built from configs (no downloads), in eval mode without dropout."""

from transformers import (
    BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration,
)

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
