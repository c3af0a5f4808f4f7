"""One flat model config: every architecture difference between the families is a field.

Shared building blocks in ``lmzoo.nn`` read these fields; no block ever asks which family it
is in. Each family file (``lmzoo/models/<family>.py``) converts its Hugging Face ``config.json``
to and from this dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmzoo.errors import UserError

FAMILIES = ("bert", "roberta", "gpt2", "t5", "bart", "xlnet")
MAX_VOCAB = 2**32  # the tokenizers library numbers tokens with u32 ids
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "relative_buckets", "relative_sinusoidal", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
SUMMARY_TYPES = ("last", "first", "mean")
SUMMARY_ACTIVATIONS = (None, "tanh", "linear")
# HF activation names → lmzoo's (the first HF name of each is the one written back)
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                  "silu": "silu", "swish": "silu"}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of one model, the same fields for every family."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int  # encoder layers (or decoder layers of a decoder-only model)
    n_heads: int
    d_ff: int
    n_decoder_layers: int = 0  # > 0 for encoder-decoder models
    n_decoder_heads: int = 0  # decoder attention heads (0 = n_heads); BART may differ from its encoder
    d_decoder_ff: int = 0  # decoder feed-forward width (0 = d_ff)
    d_head: int = 0  # 0 = d_model // n_heads
    max_positions: int = 512  # longest usable sequence
    position_offset: int = 0  # learned-position rows before position 0 (RoBERTa / BART: 2)
    positions: str = "learned"
    type_vocab_size: int = 0  # 0 = no token-type embeddings
    norm: str = "layernorm"
    norm_eps: float = 1e-12
    pre_norm: bool = False  # True: norm before each sublayer and a final norm (GPT-2, T5)
    embedding_norm: bool = False  # LayerNorm right after the embeddings (BERT, BART)
    embedding_scale: bool = False  # multiply token embeddings by sqrt(d_model) (BART scale_embedding)
    activation: str = "gelu"
    gated_ffn: bool = False  # T5 v1.1 gated-GELU feed-forward
    bias: bool = True  # biases in linear layers and norms
    attention_scale: bool = True  # divide scores by sqrt(d_head); T5 folds it into its init
    tie_embeddings: bool = True
    tied_logits_scale: bool = False  # T5 v1.0: hidden * d_model**-0.5 before the tied LM head
    scale_attn_by_inverse_layer_idx: bool = False  # GPT-2 variant: layer i's scores also divided by i + 1
    relative_buckets: int = 32
    relative_max_distance: int = 128
    mem_len: int = 0  # XLNet: hidden states kept as memory per layer (0 = keep all that are passed on)
    reuse_len: int = 0  # XLNet: only the first reuse_len tokens of a segment go to memory (0 = all)
    bi_data: bool = False  # XLNet: 2nd half of each batch is the reversed text, with backward positions
    clamp_len: int = -1  # XLNet: clamp relative distances to +-clamp_len (-1 = no clamp)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    # generation: the first / last new token forced to these ids (BART checkpoints set them; HF's
    # ForcedBOS / ForcedEOS logits processors)
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    id2label: dict[int, str] | None = None  # task heads: label names, as HF stores them
    problem_type: str | None = None  # "single_label_classification" | "multi_label_classification" | "regression"
    summary_type: str = "last"  # XLNet sequence summary: which state the classifier reads ("last", "first", "mean")
    summary_use_proj: bool = True  # XLNet sequence summary: a d_model x d_model projection before the activation
    summary_activation: str | None = "tanh"  # XLNet sequence summary: "tanh", or None / "linear" for none
    # HF config.json fields lmzoo does not read, written back unchanged so a folder round-trips
    # (e.g. BART's init_std); nothing in lmzoo may read this
    hf_passthrough: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise UserError(f"invalid model config: {msg}")

        _check_types(self, bad)
        if self.family not in FAMILIES:
            bad(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_positions"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size > MAX_VOCAB:  # before an embedding table of terabytes is allocated
            bad(f"vocab_size {self.vocab_size} is beyond the {MAX_VOCAB} ids a tokenizer can have (32-bit ids)")
        if self.d_head == 0 and self.d_model % self.n_heads:
            bad(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_decoder_layers < 0 or self.d_head < 0 or self.position_offset < 0 or self.type_vocab_size < 0:
            bad("n_decoder_layers, d_head, position_offset and type_vocab_size must be >= 0")
        if self.norm not in NORMS:
            bad(f"norm {self.norm!r} is not one of {NORMS}")
        if self.positions not in POSITIONS:
            bad(f"positions {self.positions!r} is not one of {POSITIONS}")
        if self.activation not in ACTIVATIONS:
            bad(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.mem_len < 0 or self.reuse_len < 0:
            bad("mem_len and reuse_len must be >= 0")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            bad(f"pad_token_id {self.pad_token_id} outside the vocabulary of {self.vocab_size}")
        if self.n_decoder_heads < 0 or self.d_decoder_ff < 0:
            bad("n_decoder_heads and d_decoder_ff must be >= 0")
        if self.n_decoder_heads and self.d_head == 0 and self.d_model % self.n_decoder_heads:
            bad(f"d_model {self.d_model} is not divisible by n_decoder_heads {self.n_decoder_heads}")
        if self.summary_type not in SUMMARY_TYPES:
            bad(f"summary_type {self.summary_type!r} is not one of {SUMMARY_TYPES}")
        if self.summary_activation not in SUMMARY_ACTIVATIONS:
            bad(f"summary_activation {self.summary_activation!r} is not one of {SUMMARY_ACTIVATIONS}")

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    @property
    def is_encoder_decoder(self) -> bool:
        return self.n_decoder_layers > 0

    def decoder_config(self) -> "ModelConfig":
        """The config the decoder's blocks are built from: the decoder's own heads and FFN width."""
        if not (self.n_decoder_heads or self.d_decoder_ff):
            return self
        return self.replace(n_heads=self.n_decoder_heads or self.n_heads, d_ff=self.d_decoder_ff or self.d_ff,
                            n_decoder_heads=0, d_decoder_ff=0)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"invalid model config: unknown field(s) {', '.join(unknown)}")
        data = dict(data)
        if data.get("id2label"):
            data["id2label"] = {int(k): v for k, v in data["id2label"].items()}
        return cls(**data)


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,)}


def _check_types(config: ModelConfig, bad: Any) -> None:
    """Each field holds a value of its annotated type (a config.json string where a number belongs
    would otherwise fail deep inside a comparison); floats are finite."""
    for f in dataclasses.fields(config):
        value, kinds = getattr(config, f.name), str(f.type).replace(" ", "").split("|")
        if value is None and "None" in kinds:
            continue
        allowed = tuple(t for k in kinds for t in _TYPES.get(k.split("[")[0], ()))
        if not allowed:
            continue
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            bad(f"{f.name} must be {' or '.join(kinds).replace('None', 'null')}, got {json.dumps(value, default=str)}")
        if isinstance(value, float) and not math.isfinite(value):
            bad(f"{f.name} must be a finite number, got {value}")


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from a file, with a one-line error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


# --- HF config.json helpers shared by the families' converters ------------------------------


def activation_from_hf(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise UserError(f"unsupported activation {name!r} in config.json")
    return HF_ACTIVATIONS[name]


def activation_to_hf(name: str) -> str:
    return next(hf for hf, ours in HF_ACTIVATIONS.items() if ours == name)


def label_map_from_hf(hf: dict[str, Any]) -> dict[int, str] | None:
    id2label = hf.get("id2label")
    if not id2label:
        return None
    try:
        return {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError, AttributeError):
        raise UserError(f"config.json: id2label keys must be label ids (integers), got {id2label!r}") from None


def label_map_to_hf(config: ModelConfig) -> dict[str, Any]:
    if not config.id2label:
        return {}
    return {
        "id2label": {str(k): v for k, v in config.id2label.items()},
        "label2id": {v: k for k, v in config.id2label.items()},
        **({"problem_type": config.problem_type} if config.problem_type else {}),
    }
