"""BART: a post-LN encoder-decoder trained as a denoising autoencoder (Lewis et al., 2020).

Learned positions with a table offset of 2, a LayerNorm right after the embeddings of both
stacks, GELU, embeddings tied to the LM head, plus a ``final_logits_bias`` added to the logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmzoo.config import ModelConfig, activation_from_hf, activation_to_hf
from lmzoo.errors import UserError
from lmzoo.models.base import FamilySpec, PreTrainedModel
from lmzoo.nn.dropout import Dropout
from lmzoo.nn.norm import make_norm
from lmzoo.nn.seq2seq import EncoderDecoderLM, EncoderDecoderState, decoder_start_id, encoder_mask, shift_right
from lmzoo.nn.stack import Stack
from lmzoo.outputs import ModelOutput


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """HF BartConfig dict → ModelConfig."""
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        raise UserError("unsupported BART variant (pre-norm / final layer norm: mBART)")
    kept = ("activation_dropout", "init_std")
    # absent = not forced: what transformers' generate does with such a folder (BartConfig() itself writes eos 2)
    forced = {k: hf.get(k) for k in ("forced_bos_token_id", "forced_eos_token_id")}
    for name, value in forced.items():
        if value is not None and not isinstance(value, int):
            raise UserError(f"config.json: {name} must be one token id or null, got {value!r}")
    heads, ffn = hf.get("encoder_attention_heads", 16), hf.get("encoder_ffn_dim", 4096)
    decoder_heads, decoder_ffn = hf.get("decoder_attention_heads", 16), hf.get("decoder_ffn_dim", 4096)
    return ModelConfig(
        family="bart",
        vocab_size=hf["vocab_size"],
        d_model=hf.get("d_model", 1024),
        n_layers=hf.get("encoder_layers", 12),
        n_decoder_layers=hf.get("decoder_layers", 12),
        n_heads=heads,
        n_decoder_heads=0 if decoder_heads == heads else decoder_heads,
        d_ff=ffn,
        d_decoder_ff=0 if decoder_ffn == ffn else decoder_ffn,
        max_positions=hf.get("max_position_embeddings", 1024),
        tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
        position_offset=2,
        norm_eps=1e-5,
        embedding_norm=True,
        embedding_scale=bool(hf.get("scale_embedding", False)),
        activation=activation_from_hf(hf.get("activation_function", "gelu")),
        dropout=hf.get("dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.0),
        pad_token_id=hf.get("pad_token_id", 1),
        bos_token_id=hf.get("bos_token_id", 0),
        eos_token_id=hf.get("eos_token_id", 2),
        decoder_start_token_id=hf.get("decoder_start_token_id", 2),
        **forced,
        hf_passthrough={k: hf[k] for k in kept if k in hf},
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig → HF BartConfig dict."""
    return {
        "model_type": "bart",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "encoder_layers": config.n_layers,
        "decoder_layers": config.n_decoder_layers,
        "encoder_attention_heads": config.n_heads,
        "decoder_attention_heads": config.n_decoder_heads or config.n_heads,
        "encoder_ffn_dim": config.d_ff,
        "decoder_ffn_dim": config.d_decoder_ff or config.d_ff,
        "max_position_embeddings": config.max_positions,
        "scale_embedding": config.embedding_scale,
        "activation_function": activation_to_hf(config.activation),
        "dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "forced_bos_token_id": config.forced_bos_token_id,
        "forced_eos_token_id": config.forced_eos_token_id,
        "is_encoder_decoder": True,
        "tie_word_embeddings": config.tie_embeddings,
        **config.hf_passthrough,
    }


class BartStack(nn.Module):
    """Encoder or decoder: + positions → LayerNorm → dropout → post-LN blocks (token embeddings come in).
    ``tokens``: the stack's own token table, only when tie_embeddings is off (HF then unties each
    stack's ``embed_tokens`` from ``shared``); otherwise the model's ``shared`` table is used."""

    def __init__(self, config: ModelConfig, *, decoder: bool) -> None:
        super().__init__()
        self.config = config
        self.tokens = None if config.tie_embeddings else nn.Embedding(config.vocab_size, config.d_model)
        self.positions = nn.Embedding(config.max_positions + config.position_offset, config.d_model)
        self.embed_norm = make_norm(config)
        n_layers = config.n_decoder_layers if decoder else config.n_layers
        self.layers = Stack(config.decoder_config() if decoder else config, n_layers, causal=decoder,
                            cross_attention=decoder)
        self.dropout = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        encoder_states: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        state: EncoderDecoderState | None = None,
    ) -> torch.Tensor:
        """``x``: scaled token embeddings (B, T, D); ``state``: while generating, the decoder's
        caches and the tokens already in them."""
        length, past = x.shape[1], 0 if state is None else state.length
        if past + length > self.config.max_positions:
            raise UserError(f"sequence of {past + length} tokens exceeds max_positions {self.config.max_positions}")
        positions = torch.arange(past, past + length, device=x.device) + self.config.position_offset
        x = self.dropout(self.embed_norm(x + self.positions(positions)))
        return self.layers(x, attention_mask=attention_mask, past=past,
                           caches=None if state is None else state.self_caches, encoder_states=encoder_states,
                           encoder_mask=encoder_mask, cross_caches=None if state is None else state.cross_caches)


def stack_key_map(hf: str, ours: str, *, decoder: bool, tied: bool) -> list[tuple[str, str | None]]:
    layer = f"{hf}.layers.{{}}"
    mine = f"{ours}.layers.{{}}"
    attn = [(f"{layer}.self_attn.{p}_proj", f"{mine}.attn.{p}") for p in "qkv"]
    attn += [(f"{layer}.self_attn.out_proj", f"{mine}.attn.o"), (f"{layer}.self_attn_layer_norm", f"{mine}.attn_norm")]
    cross = []
    if decoder:
        cross = [(f"{layer}.encoder_attn.{p}_proj", f"{mine}.cross_attn.{p}") for p in "qkv"]
        cross += [(f"{layer}.encoder_attn.out_proj", f"{mine}.cross_attn.o"),
                  (f"{layer}.encoder_attn_layer_norm", f"{mine}.cross_norm")]
    return [
        (f"{hf}.embed_tokens", None if tied else f"{ours}.tokens"),  # tied: the same tensor as shared
        (f"{hf}.embed_positions", f"{ours}.positions"),
        (f"{hf}.layernorm_embedding", f"{ours}.embed_norm"),
        *attn,
        *cross,
        (f"{layer}.fc1", f"{mine}.ffn.up"),
        (f"{layer}.fc2", f"{mine}.ffn.down"),
        (f"{layer}.final_layer_norm", f"{mine}.ffn_norm"),
    ]


class BartPreTrainedModel(PreTrainedModel):
    model_types = ("bart",)
    config_from_hf = staticmethod(config_from_hf)
    config_to_hf = staticmethod(config_to_hf)


class BartModel(BartPreTrainedModel):
    """Shared token embeddings, encoder and decoder; returns the decoder's last hidden state."""

    hf_architecture = "BartModel"
    prefix_in_heads = "model"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if not config.is_encoder_decoder:
            raise UserError("BART needs n_decoder_layers > 0")
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = BartStack(config, decoder=False)
        self.decoder = BartStack(config, decoder=True)
        self.embed_scale = math.sqrt(config.d_model) if config.embedding_scale else 1.0
        self.init_weights()

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        tied = config.tie_embeddings
        return [("shared", "shared"), *stack_key_map("encoder", "encoder", decoder=False, tied=tied),
                *stack_key_map("decoder", "decoder", decoder=True, tied=tied)]

    def embed(self, ids: torch.Tensor, stack: BartStack) -> torch.Tensor:
        return (self.shared if stack.tokens is None else stack.tokens)(ids) * self.embed_scale

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.embed(input_ids, self.encoder), attention_mask)

    def decode(self, decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor | None,
               encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None,
               state: EncoderDecoderState | None = None) -> torch.Tensor:
        return self.decoder(self.embed(decoder_input_ids, self.decoder), decoder_attention_mask,
                            encoder_states=encoder_states, encoder_mask=encoder_mask, state=state)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        if decoder_input_ids is None:  # as HF: the decoder reads the input shifted right
            decoder_input_ids = shift_right(input_ids, decoder_start_id(self.config), self.config.pad_token_id)
        enc = self.encode(input_ids, attention_mask)
        hidden = self.decode(decoder_input_ids, decoder_attention_mask, enc, encoder_mask(attention_mask, enc.dtype))
        return ModelOutput(last_hidden_state=hidden, encoder_last_hidden_state=enc)


class BartForConditionalGeneration(EncoderDecoderLM, BartPreTrainedModel):
    """BartModel + LM head (the shared embeddings unless tie_embeddings is off) + final_logits_bias;
    ``labels`` give teacher forcing and the loss."""

    hf_architecture = "BartForConditionalGeneration"
    base_prefix = "model"
    head_modules = ("final_logits_bias", "lm_head")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.model = BartModel(config)
        self.register_buffer("final_logits_bias", torch.zeros(config.vocab_size))  # saved, never trained
        # only an untied head is a module of its own, so tied models keep their state-dict keys
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        body = [(f"model.{h}", None if o is None else f"model.{o}") for h, o in BartModel.hf_key_map(config)]
        return [*body, ("final_logits_bias", "final_logits_bias"),
                ("lm_head", None if config.tie_embeddings else "lm_head")]

    @classmethod
    def hf_tensors_in(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "final_logits_bias" in state:
            state = {**state, "final_logits_bias": state["final_logits_bias"].reshape(-1)}
        return state

    @classmethod
    def hf_tensors_out(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**state, "final_logits_bias": state["final_logits_bias"].reshape(1, -1)}

    def decoder_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """As HF: the labels shifted right, or without labels the input shifted right."""
        source = labels if labels is not None else input_ids
        return shift_right(source, decoder_start_id(self.config), self.config.pad_token_id)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.encode(input_ids, attention_mask)

    def decode(self, decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor | None,
               encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None,
               state: EncoderDecoderState | None = None) -> torch.Tensor:
        return self.model.decode(decoder_input_ids, decoder_attention_mask, encoder_states, encoder_mask, state)

    def lm_head_parts(self) -> tuple[None, torch.Tensor, torch.Tensor]:
        """The shared embeddings (or the untied head's weight), plus final_logits_bias."""
        weight = self.model.shared.weight if self.lm_head is None else self.lm_head.weight
        return None, weight, self.final_logits_bias


SPEC = FamilySpec(
    name="bart",
    architectures=(BartForConditionalGeneration, BartModel),
    tokenizer_kind="bpe",
    template="cls_sep_sep",  # <s> A </s></s> B </s>, as RoBERTa
    objectives={"denoise": BartForConditionalGeneration},
)
