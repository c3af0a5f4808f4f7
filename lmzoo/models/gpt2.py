"""GPT-2: a pre-LN causal decoder with learned positions and a final LayerNorm (Radford et al., 2019).

Tanh-approximated GELU, LM head tied to the token embeddings. Hugging Face stores the projections
as ``Conv1D`` (weights transposed, [in, out]) and the attention input projection fused
(``c_attn`` = [q | k | v]); ``hf_tensors_in`` / ``hf_tensors_out`` split/transpose them so the
shared ``Block`` keeps its separate q/k/v ``nn.Linear``.

Attention masks accepted by ``forward`` (the first that applies):
- ``document_ids`` [B, T]: packed CLM rows (``lmzoo.objectives.clm``); a token attends only to
  earlier tokens of the same document (block-diagonal causal mask). Positions default to
  restarting at 0 in each document.
- ``attention_mask`` [B, T] with zeros: causal + key padding (positions as given, default 0..T-1,
  as HF; pass ``position_ids`` for left padding).
- otherwise plain causal attention (SDPA's fused causal kernel).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmzoo.config import ModelConfig, activation_from_hf, activation_to_hf, label_map_from_hf, label_map_to_hf
from lmzoo.errors import UserError
from lmzoo.models.base import FamilySpec, PreTrainedModel
from lmzoo.weights import prefixed
from lmzoo.nn.cache import DecoderState
from lmzoo.nn.dropout import Dropout
from lmzoo.nn.embedding import Embeddings
from lmzoo.nn.heads import decode_logits, last_token
from lmzoo.nn.loss import lm_loss, sequence_classification_loss, token_classification_loss
from lmzoo.nn.masks import document_positions
from lmzoo.nn.segments import packed_attention_mask
from lmzoo.nn.norm import make_norm
from lmzoo.nn.stack import Stack
from lmzoo.outputs import ModelOutput


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """HF GPT2Config dict → ModelConfig."""
    if hf.get("add_cross_attention"):
        raise UserError("unsupported GPT-2 variant: add_cross_attention")
    d_model = hf.get("n_embd", 768)
    return ModelConfig(
        family="gpt2",
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf.get("n_layer", 12),
        n_heads=hf.get("n_head", 12),
        d_ff=hf.get("n_inner") or 4 * d_model,
        max_positions=hf.get("n_positions", 1024),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        pre_norm=True,
        activation=activation_from_hf(hf.get("activation_function", "gelu_new")),
        attention_scale=hf.get("scale_attn_weights", True),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("resid_pdrop", 0.1),
        attention_dropout=hf.get("attn_pdrop", 0.1),
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id", 50256),
        eos_token_id=hf.get("eos_token_id", 50256),
        scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        classifier_dropout=hf.get("classifier_dropout"),
        id2label=label_map_from_hf(hf),
        problem_type=hf.get("problem_type"),
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig → HF GPT2Config dict."""
    return {
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_ff,
        "n_positions": config.max_positions,
        "activation_function": activation_to_hf(config.activation),
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.attention_dropout,
        "scale_attn_weights": config.attention_scale,
        "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
        "tie_word_embeddings": config.tie_embeddings,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        # GPT2Config has no such field, but GPT2ForTokenClassification reads it when present
        **({"classifier_dropout": config.classifier_dropout} if config.classifier_dropout is not None else {}),
        **label_map_to_hf(config),
    }


# HF module path inside GPT2Model (after hf_tensors_in split c_attn) → lmzoo module path.
BODY_KEY_MAP: list[tuple[str, str | None]] = [
    ("wte", "embed.tokens"),
    ("wpe", "embed.positions"),
    ("h.{}.ln_1", "layers.{}.attn_norm"),
    ("h.{}.attn.q_proj", "layers.{}.attn.q"),
    ("h.{}.attn.k_proj", "layers.{}.attn.k"),
    ("h.{}.attn.v_proj", "layers.{}.attn.v"),
    ("h.{}.attn.c_proj", "layers.{}.attn.o"),
    ("h.{}.ln_2", "layers.{}.ffn_norm"),
    ("h.{}.mlp.c_fc", "layers.{}.ffn.up"),
    ("h.{}.mlp.c_proj", "layers.{}.ffn.down"),
    ("ln_f", "norm"),
    ("h.{}.attn.bias", None),  # causal-mask buffers of older checkpoints
    ("h.{}.attn.masked_bias", None),
]

_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _split_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Conv1D [in, out] → Linear [out, in]; fused c_attn → q_proj / k_proj / v_proj."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, kind = key.rpartition(".")
        is_conv = any(module == c or module.endswith("." + c) for c in _CONV1D) and ".h." in "." + module
        if is_conv and kind == "weight":
            tensor = tensor.t()
        if is_conv and module.endswith("attn.c_attn"):
            base = module[: -len("c_attn")]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                out[f"{base}{name}.{kind}"] = part.contiguous()
            continue
        out[key] = tensor.contiguous() if is_conv else tensor
    return out


def _fuse_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``_split_hf``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, kind = key.rpartition(".")
        if module.endswith("attn.k_proj") or module.endswith("attn.v_proj"):
            continue
        if module.endswith("attn.q_proj"):
            base = module[: -len("q_proj")]
            fused = torch.cat([state[f"{base}{n}.{kind}"] for n in ("q_proj", "k_proj", "v_proj")], dim=0)
            out[f"{base}c_attn.{kind}"] = fused.t().contiguous() if kind == "weight" else fused
            continue
        is_conv = any(module.endswith(c) for c in _CONV1D[1:]) and ".h." in "." + module
        out[key] = tensor.t().contiguous() if is_conv and kind == "weight" else tensor
    return out


class GPT2PreTrainedModel(PreTrainedModel):
    model_types = ("gpt2",)
    config_from_hf = staticmethod(config_from_hf)
    config_to_hf = staticmethod(config_to_hf)

    @classmethod
    def hf_tensors_in(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _split_hf(state)

    @classmethod
    def hf_tensors_out(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _fuse_hf(state)


class GPT2Model(GPT2PreTrainedModel):
    """The bare decoder: token + position embeddings → pre-LN causal blocks → final LayerNorm."""

    hf_architecture = "GPT2Model"
    prefix_in_heads = "transformer"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.embed = Embeddings(config)
        self.layers = Stack(config, config.n_layers, causal=True)
        self.norm = make_norm(config)
        if config.scale_attn_by_inverse_layer_idx:
            for i, layer in enumerate(self.layers):
                layer.attn.scale = (1.0 if not config.attention_scale else config.head_dim ** -0.5) / (i + 1)
        self.init_weights()

    def init_weights(self) -> None:
        """N(0, 0.02), and the residual projections scaled by 1/sqrt(2 * n_layers) (GPT-2 paper)."""
        super().init_weights()
        std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for layer in self.layers:
            nn.init.normal_(layer.attn.o.weight, std=std)
            nn.init.normal_(layer.ffn.down.weight, std=std)

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return BODY_KEY_MAP

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        state: DecoderState | None = None,
    ) -> ModelOutput:
        """``state``: incremental decoding (see ``prepare_generation``); positions and masks come from it."""
        length = input_ids.shape[1]
        mask, past, caches = None, 0, None
        if state is not None:
            position_ids, attention_mask, past = state.advance(length)
            caches = state.caches
        elif length > self.config.max_positions:
            raise UserError(f"sequence of {length} tokens exceeds the model's {self.config.max_positions} positions")
        elif document_ids is not None:
            if position_ids is None:
                position_ids = document_positions(document_ids)
            dropout_p = self.config.attention_dropout if self.training else 0.0
            mask = packed_attention_mask(document_ids, attention_mask, self.embed.tokens.weight.dtype, dropout_p)
        x = self.embed(input_ids, position_ids)  # (B, T, D)
        x = self.layers(x, attention_mask=attention_mask, mask=mask, past=past, caches=caches)
        return ModelOutput(last_hidden_state=self.norm(x))


class GPT2LMHeadModel(GPT2PreTrainedModel):
    """GPT-2 with the tied LM head. With ``labels`` (usually = input_ids; -100 = ignored) the loss is
    the mean next-token cross-entropy: logits at position t predict labels at t + 1 (as HF). In training
    mode with grad enabled the loss is fused with the head (``lmzoo.nn.loss``) and ``logits`` is None."""

    hf_architecture = "GPT2LMHeadModel"
    base_prefix = "transformer"
    head_modules = ("lm_head",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.embed.tokens.weight

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        head = ("lm_head", None if config.tie_embeddings else "lm_head")
        return prefixed(BODY_KEY_MAP, "transformer", "transformer") + [head]

    def tied_parameters(self) -> dict[str, str]:
        return {"lm_head.weight": "transformer.embed.tokens.weight"} if self.config.tie_embeddings else {}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        hidden = self.transformer(input_ids, attention_mask, position_ids, document_ids).last_hidden_state
        logits, loss = lm_loss(hidden, labels, weight=self.lm_head.weight, head=self.lm_head, shift=True,
                               fused=self.training and torch.is_grad_enabled())
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=hidden)

    # --- generation protocol (lmzoo.generate) ---

    @torch.no_grad()
    def prepare_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           max_new_tokens: int) -> DecoderState:
        """Preallocated caches for the prompt (left padding = zeros in ``attention_mask``) + max_new_tokens."""
        batch, prompt = input_ids.shape
        capacity = prompt + max_new_tokens
        if capacity > self.config.max_positions:
            raise UserError(f"prompt of {prompt} tokens + {max_new_tokens} new tokens exceeds the model's "
                            f"{self.config.max_positions} positions")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return DecoderState.allocate(self.config.n_layers, self.config.n_heads, self.config.head_dim,
                                     attention_mask.long(), capacity, dtype=self.transformer.embed.tokens.weight.dtype)

    @torch.no_grad()
    def generation_step(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Feed ``tokens`` [B, t] (the prompt first, then one token per step); logits [B, vocab] of the last."""
        hidden = self.transformer(tokens, state=state).last_hidden_state
        return decode_logits(hidden[:, -1], self.lm_head)


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """Sequence classification / regression from the state of the last real token (the only one that
    has seen the whole text in a causal model) → ``score`` (a Linear without bias), as HF's class.

    Which token is last: the last 1 of ``attention_mask`` when it is given (right or left padding);
    else HF's rule, the last token that is not ``pad_token_id``; else (no mask, no pad id) the last
    position of every row, which is right only for unpadded rows (HF refuses batches there).
    The mask and HF's rule agree unless a real token equals the pad id (e.g. a GPT-2 tokenizer padding
    with <|endoftext|> and a text that ends with it), where the mask picks the real token and HF the one
    before it. Loss by ``config.problem_type``: single-label CE, multi-label BCE, regression MSE."""

    hf_architecture = "GPT2ForSequenceClassification"
    head_kind = "sequence_classification"
    base_prefix = "transformer"
    head_modules = ("score",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.d_model, config.num_labels, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return prefixed(BODY_KEY_MAP, "transformer", "transformer") + [("score", "score")]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        hidden = self.transformer(input_ids, attention_mask, position_ids).last_hidden_state  # (B, T, D)
        real = attention_mask
        if real is None and self.config.pad_token_id is not None:
            real = input_ids != self.config.pad_token_id
        logits = self.score(last_token(hidden, real))  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=hidden)


class GPT2ForTokenClassification(GPT2PreTrainedModel):
    """Per-token labels (NER): each position's state → dropout → ``classifier``; labels -100 are not
    scored. Each token sees only the tokens before it (causal), as in HF's class. The dropout is
    ``classifier_dropout``, else 0.1 (HF's default: GPT2Config has no hidden dropout to fall back on)."""

    hf_architecture = "GPT2ForTokenClassification"
    head_kind = "token_classification"
    base_prefix = "transformer"
    head_modules = ("classifier",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.dropout = Dropout(0.1 if config.classifier_dropout is None else config.classifier_dropout)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return prefixed(BODY_KEY_MAP, "transformer", "transformer") + [("classifier", "classifier")]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        hidden = self.transformer(input_ids, attention_mask, position_ids).last_hidden_state
        logits = self.classifier(self.dropout(hidden))  # (B, T, num_labels)
        loss = None if labels is None else token_classification_loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=hidden)


SPEC = FamilySpec(
    name="gpt2",
    architectures=(GPT2LMHeadModel, GPT2Model, GPT2ForSequenceClassification, GPT2ForTokenClassification),
    tokenizer_kind="bpe",
    template="plain",  # nothing added: <|endoftext|> separates documents in the corpus itself
    objectives={"clm": GPT2LMHeadModel},
)
