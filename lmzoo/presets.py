"""Named model sizes. Each preset is a ModelConfig plus the class it builds by default.

The vocabulary size of a preset is the published one; pretraining with your own tokenizer
replaces it with the tokenizer's size (``from_preset(name, vocab_size=...)``).
"""

from __future__ import annotations

from typing import Any, Callable

from lmzoo.config import ModelConfig
from lmzoo.errors import UserError


def bert(*, d_model: int, n_layers: int, n_heads: int, vocab_size: int = 30522, **kw: Any) -> ModelConfig:
    return ModelConfig(family="bert", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       d_ff=4 * d_model, max_positions=512, type_vocab_size=2, norm_eps=1e-12, embedding_norm=True,
                       **kw)


def roberta(*, d_model: int, n_layers: int, n_heads: int, vocab_size: int = 50265, **kw: Any) -> ModelConfig:
    return bert(d_model=d_model, n_layers=n_layers, n_heads=n_heads, vocab_size=vocab_size, **kw).replace(
        family="roberta", position_offset=2, type_vocab_size=1, norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2)


def xlnet(*, d_model: int, n_layers: int, n_heads: int, vocab_size: int = 32000, **kw: Any) -> ModelConfig:
    """XLNet (cased SentencePiece vocabulary of 32000; <pad> = 5, <s> = 1, </s> = 2)."""
    return ModelConfig(**{**dict(family="xlnet", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                                 n_heads=n_heads, d_ff=4 * d_model, max_positions=512,
                                 positions="relative_sinusoidal", norm_eps=1e-12, pad_token_id=5,
                                 bos_token_id=1, eos_token_id=2, classifier_dropout=0.1), **kw})


def t5(*, d_model: int, n_layers: int, n_heads: int, d_ff: int, d_head: int = 64, v1_1: bool = False,
       vocab_size: int = 32128, n_decoder_layers: int | None = None, **kw: Any) -> ModelConfig:
    """T5 v1.0 (ReLU, tied head scaled by d_model**-0.5) or v1.1 (gated GELU, untied); <pad> = 0, </s> = 1."""
    return ModelConfig(family="t5", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                       n_decoder_layers=n_decoder_layers or n_layers, n_heads=n_heads, d_head=d_head, d_ff=d_ff,
                       positions="relative_buckets", norm="rmsnorm", norm_eps=1e-6, pre_norm=True,
                       activation="gelu_tanh" if v1_1 else "relu", gated_ffn=v1_1, bias=False, attention_scale=False,
                       tie_embeddings=not v1_1, tied_logits_scale=not v1_1, pad_token_id=0, eos_token_id=1,
                       decoder_start_token_id=0, **{"attention_dropout": 0.1, **kw})


def bart(*, d_model: int, n_layers: int, n_heads: int, vocab_size: int = 50265, **kw: Any) -> ModelConfig:
    """BART (byte-level BPE vocabulary; <s> = 0, <pad> = 1, </s> = 2 starts the decoder)."""
    return ModelConfig(family="bart", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                       n_decoder_layers=n_layers, n_heads=n_heads, d_ff=4 * d_model, max_positions=1024,
                       position_offset=2, norm_eps=1e-5, embedding_norm=True, pad_token_id=1, bos_token_id=0,
                       eos_token_id=2, decoder_start_token_id=2, **{"attention_dropout": 0.0, **kw})


def gpt2(*, d_model: int, n_layers: int, n_heads: int, vocab_size: int = 50257, max_positions: int = 1024,
         **kw: Any) -> ModelConfig:
    """GPT-2 (byte-level BPE vocabulary of 50257; <|endoftext|> = 50256 is bos, eos and separator; no pad)."""
    return ModelConfig(**{**dict(family="gpt2", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                                 n_heads=n_heads, d_ff=4 * d_model, max_positions=max_positions, norm_eps=1e-5,
                                 pre_norm=True, activation="gelu_tanh", pad_token_id=None,
                                 bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1), **kw})


# name → (config factory, lmzoo class name built by default)
PRESETS: dict[str, tuple[Callable[[], ModelConfig], str]] = {
    "bert-tiny": (lambda: bert(d_model=128, n_layers=2, n_heads=2), "BertForPreTraining"),
    "bert-mini": (lambda: bert(d_model=256, n_layers=4, n_heads=4), "BertForPreTraining"),
    "bert-base": (lambda: bert(d_model=768, n_layers=12, n_heads=12), "BertForPreTraining"),
    "roberta-tiny": (lambda: roberta(d_model=128, n_layers=2, n_heads=2), "RobertaForMaskedLM"),
    "roberta-base": (lambda: roberta(d_model=768, n_layers=12, n_heads=12), "RobertaForMaskedLM"),
    "xlnet-tiny": (lambda: xlnet(d_model=128, n_layers=2, n_heads=2), "XLNetLMHeadModel"),
    "xlnet-base": (lambda: xlnet(d_model=768, n_layers=12, n_heads=12), "XLNetLMHeadModel"),
    "t5-tiny": (lambda: t5(d_model=128, n_layers=2, n_heads=4, d_head=32, d_ff=512), "T5ForConditionalGeneration"),
    "t5-small": (lambda: t5(d_model=512, n_layers=6, n_heads=8, d_ff=2048), "T5ForConditionalGeneration"),
    "t5-base": (lambda: t5(d_model=768, n_layers=12, n_heads=12, d_ff=3072), "T5ForConditionalGeneration"),
    "t5-v1_1-small": (lambda: t5(d_model=512, n_layers=8, n_heads=6, d_ff=1024, v1_1=True),
                      "T5ForConditionalGeneration"),
    "gpt-tiny": (lambda: gpt2(d_model=128, n_layers=2, n_heads=4, max_positions=512), "GPT2LMHeadModel"),
    "gpt-mini": (lambda: gpt2(d_model=384, n_layers=6, n_heads=6, max_positions=512), "GPT2LMHeadModel"),
    "gpt2-small": (lambda: gpt2(d_model=768, n_layers=12, n_heads=12), "GPT2LMHeadModel"),
    "gpt2-medium": (lambda: gpt2(d_model=1024, n_layers=24, n_heads=16), "GPT2LMHeadModel"),
    "bart-tiny": (lambda: bart(d_model=128, n_layers=2, n_heads=4), "BartForConditionalGeneration"),
    "bart-base": (lambda: bart(d_model=768, n_layers=6, n_heads=12), "BartForConditionalGeneration"),
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a preset, with fields overridden (e.g. ``vocab_size``)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    config = PRESETS[name][0]()
    config = config.replace(**overrides) if overrides else config
    # a smaller vocabulary keeps the preset's special ids in range: GPT-2's end-of-text is its last id
    stale = {k: config.vocab_size - 1 for k in ("bos_token_id", "eos_token_id", "pad_token_id")
             if k not in overrides and getattr(config, k) is not None and getattr(config, k) >= config.vocab_size}
    return config.replace(**stale) if stale else config
