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


# name → (config factory, lmzoo class name built by default)
PRESETS: dict[str, tuple[Callable[[], ModelConfig], str]] = {
    "bert-tiny": (lambda: bert(d_model=128, n_layers=2, n_heads=2), "BertForPreTraining"),
    "bert-mini": (lambda: bert(d_model=256, n_layers=4, n_heads=4), "BertForPreTraining"),
    "bert-base": (lambda: bert(d_model=768, n_layers=12, n_heads=12), "BertForPreTraining"),
    "roberta-tiny": (lambda: roberta(d_model=128, n_layers=2, n_heads=2), "RobertaForMaskedLM"),
    "roberta-base": (lambda: roberta(d_model=768, n_layers=12, n_heads=12), "RobertaForMaskedLM"),
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a preset, with fields overridden (e.g. ``vocab_size``)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    config = PRESETS[name][0]()
    return config.replace(**overrides) if overrides else config
