"""T5 v1.0 and v1.1: a pre-RMSNorm encoder-decoder with relative position buckets (Raffel et al., 2020).

No biases anywhere, no 1/sqrt(d) in attention (folded into the init), one bucketed bias table per
stack, computed once from the first layer and added to every layer's attention mask. v1.0: ReLU
FFN, LM head tied to the embeddings with the d_model**-0.5 rescale; v1.1: gated GELU, untied head.

The encoder-decoder plumbing shared with BART lives in lmzoo/nn/seq2seq.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmzoo.config import ModelConfig, activation_to_hf
from lmzoo.errors import UserError
from lmzoo.models.base import FamilySpec, PreTrainedModel
from lmzoo.nn.dropout import Dropout
from lmzoo.nn.norm import RMSNorm, make_norm
from lmzoo.nn.seq2seq import EncoderDecoderLM, EncoderDecoderState
from lmzoo.nn.stack import Stack
from lmzoo.outputs import ModelOutput

# --- T5 ---------------------------------------------------------------------------------------


def relative_position_bucket(relative_position: torch.Tensor, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Mesh-TensorFlow's bucketing of (key position - query position): exact buckets for small
    distances, logarithmic ones up to ``max_distance``; in the encoder half the buckets are for
    keys after the query, in the decoder the future is never seen and all buckets go to the past."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # clamp(min=1) only avoids log(0) in the branch torch.where discards
    large = max_exact + (
        torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


# --- HF config ----------------------------------------------------------------------------------

HF_FFN = {"relu": ("relu", False), "gated-gelu": ("gelu_tanh", True), "gated-gelu_new": ("gelu_tanh", True),
          "gelu_new": ("gelu_tanh", False), "gelu": ("gelu", False), "gated-relu": ("relu", True),
          "gated-silu": ("silu", True), "silu": ("silu", False)}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """HF T5Config dict → ModelConfig (v1.0 or v1.1, told apart by the FFN and the head scaling)."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in HF_FFN:
        raise UserError(f"unsupported T5 feed_forward_proj {proj!r}")
    activation, gated = HF_FFN[proj]
    # transformers < 5: tie_word_embeddings False = v1.1; transformers 5 writes scale_decoder_outputs
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    n_layers = hf.get("num_layers", 6)
    eos = hf.get("eos_token_id", 1)
    return ModelConfig(
        family="t5",
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        n_layers=n_layers,
        n_decoder_layers=hf.get("num_decoder_layers") or n_layers,
        n_heads=hf["num_heads"],
        d_head=hf.get("d_kv", 64),
        d_ff=hf["d_ff"],
        max_positions=hf.get("n_positions", 512),
        positions="relative_buckets",
        norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        pre_norm=True,
        activation=activation,
        gated_ffn=gated,
        bias=False,
        attention_scale=False,
        tie_embeddings=scaled,
        tied_logits_scale=scaled,
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout=hf.get("dropout_rate", 0.1),
        attention_dropout=hf.get("dropout_rate", 0.1),
        pad_token_id=hf.get("pad_token_id", 0),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)),
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig → HF T5Config dict."""
    hf_act = activation_to_hf(config.activation)
    proj = "gated-gelu" if (config.gated_ffn and config.activation == "gelu_tanh") else (
        ("gated-" if config.gated_ffn else "") + hf_act)
    return {
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.head_dim,
        "d_ff": config.d_ff,
        "num_layers": config.n_layers,
        "num_decoder_layers": config.n_decoder_layers or config.n_layers,
        "num_heads": config.n_heads,
        "relative_attention_num_buckets": config.relative_buckets,
        "relative_attention_max_distance": config.relative_max_distance,
        "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "feed_forward_proj": proj,
        "is_encoder_decoder": True,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "tie_word_embeddings": config.tie_embeddings,
        "scale_decoder_outputs": config.tied_logits_scale,
    }


class T5Stack(nn.Module):
    """Encoder (bidirectional buckets) or decoder (causal buckets + cross-attention) of T5.

    Takes token embeddings (the table is shared and owned by the top model)."""

    def __init__(self, config: ModelConfig, *, decoder: bool) -> None:
        super().__init__()
        self.config = config
        self.decoder = decoder
        n_layers = config.n_decoder_layers if decoder else config.n_layers
        self.relative_bias = nn.Embedding(config.relative_buckets, config.n_heads)
        self.layers = Stack(config, n_layers, causal=decoder, cross_attention=decoder)
        self.final_norm = make_norm(config)
        self.dropout = Dropout(config.dropout)

    def position_bias(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
        """[1, heads, q_len, k_len]; queries sit at absolute positions k_len - q_len .. k_len - 1."""
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, bidirectional=not self.decoder,
                                           num_buckets=self.config.relative_buckets,
                                           max_distance=self.config.relative_max_distance)
        return self.relative_bias(buckets).permute(2, 0, 1)[None]  # (1, H, q, k)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        encoder_states: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        state: EncoderDecoderState | None = None,
    ) -> torch.Tensor:
        """``x``: embeddings (B, T, D); ``attention_mask``: 1/0 over the T keys; ``state``: while
        generating, the decoder's caches and the tokens already in them."""
        past = 0 if state is None else state.length
        bias = self.position_bias(x.shape[1], past + x.shape[1], x.device)  # computed once, shared by all layers
        x = self.layers(self.dropout(x), attention_mask=attention_mask, bias=bias, past=past,
                        caches=None if state is None else state.self_caches, encoder_states=encoder_states,
                        encoder_mask=encoder_mask, cross_caches=None if state is None else state.cross_caches)
        return self.dropout(self.final_norm(x))


def stack_key_map(hf: str, ours: str, config: ModelConfig, *, decoder: bool) -> list[tuple[str, str | None]]:
    attn = [(f"{hf}.block.{{}}.layer.0.SelfAttention.{p}", f"{ours}.layers.{{}}.attn.{p}") for p in "qkvo"]
    ffn_layer = 2 if decoder else 1
    ffn = f"{hf}.block.{{}}.layer.{ffn_layer}"
    if config.gated_ffn:
        ffn_map = [(f"{ffn}.DenseReluDense.wi_0", f"{ours}.layers.{{}}.ffn.gate"),
                   (f"{ffn}.DenseReluDense.wi_1", f"{ours}.layers.{{}}.ffn.up")]
    else:
        ffn_map = [(f"{ffn}.DenseReluDense.wi", f"{ours}.layers.{{}}.ffn.up")]
    cross = []
    if decoder:
        cross = [(f"{hf}.block.{{}}.layer.1.EncDecAttention.{p}", f"{ours}.layers.{{}}.cross_attn.{p}") for p in "qkvo"]
        cross += [(f"{hf}.block.{{}}.layer.1.layer_norm", f"{ours}.layers.{{}}.cross_norm"),
                  # older checkpoints carry an unused bias table in the first cross-attention
                  (f"{hf}.block.0.layer.1.EncDecAttention.relative_attention_bias", None)]
    return [
        (f"{hf}.block.0.layer.0.SelfAttention.relative_attention_bias", f"{ours}.relative_bias"),
        *attn,
        (f"{hf}.block.{{}}.layer.0.layer_norm", f"{ours}.layers.{{}}.attn_norm"),
        *cross,
        *ffn_map,
        (f"{ffn}.DenseReluDense.wo", f"{ours}.layers.{{}}.ffn.down"),
        (f"{ffn}.layer_norm", f"{ours}.layers.{{}}.ffn_norm"),
        (f"{hf}.final_layer_norm", f"{ours}.final_norm"),
        (f"{hf}.embed_tokens", None),  # tied to shared
    ]


class T5PreTrainedModel(PreTrainedModel):
    model_types = ("t5",)
    config_from_hf = staticmethod(config_from_hf)
    config_to_hf = staticmethod(config_to_hf)

    def init_weights(self) -> None:
        """T5's (Mesh TensorFlow) init: N(0, fan_in**-0.5) for linear layers, except the query whose extra
        d_head**-0.5 stands in for the missing 1/sqrt(d_head) in attention; unit-variance embeddings."""
        c = self.config
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=c.d_model ** -0.5 if "relative_bias" in name else 1.0)
            elif isinstance(module, nn.Linear):
                fan_in = module.in_features * (c.head_dim if name.endswith("attn.q") else 1)
                nn.init.normal_(module.weight, std=fan_in ** -0.5)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)


class T5EncoderModel(T5PreTrainedModel):
    """The T5 encoder alone (embeddings table + encoder stack)."""

    hf_architecture = "T5EncoderModel"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, decoder=False)
        self.init_weights()

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return [("shared", "shared"), *stack_key_map("encoder", "encoder", config, decoder=False),
                ("decoder", None), ("lm_head", None)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutput:
        return ModelOutput(last_hidden_state=self.encoder(self.shared(input_ids), attention_mask))


class T5ForConditionalGeneration(EncoderDecoderLM, T5PreTrainedModel):
    """Encoder-decoder with the LM head; ``labels`` give teacher forcing and the loss."""

    hf_architecture = "T5ForConditionalGeneration"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if not config.is_encoder_decoder:
            raise UserError("T5ForConditionalGeneration needs n_decoder_layers > 0")
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, decoder=False)
        self.decoder = T5Stack(config, decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.shared.weight

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return [("shared", "shared"), *stack_key_map("encoder", "encoder", config, decoder=False),
                *stack_key_map("decoder", "decoder", config, decoder=True), ("lm_head", "lm_head")]

    @classmethod
    def hf_tensors_in(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # transformers 5 always ties T5's head and saves no lm_head.weight: the head is then `shared`
        if not config.tie_embeddings and "lm_head.weight" not in state and "shared.weight" in state:
            state = {**state, "lm_head.weight": state["shared.weight"]}
        if config.tie_embeddings:
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        return state

    def tied_parameters(self) -> dict[str, str]:
        return {"lm_head.weight": "shared.weight"} if self.config.tie_embeddings else {}

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.shared(input_ids), attention_mask)

    def decode(self, decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor | None,
               encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None,
               state: EncoderDecoderState | None = None) -> torch.Tensor:
        return self.decoder(self.shared(decoder_input_ids), decoder_attention_mask, encoder_states=encoder_states,
                            encoder_mask=encoder_mask, state=state)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """The decoder output as the LM head sees it (v1.0's tied head rescales it by d_model^-0.5)."""
        return hidden * self.config.d_model ** -0.5 if self.config.tied_logits_scale else hidden

    def lm_head_parts(self) -> tuple[nn.Module, torch.Tensor, None]:
        return self.lm_head, self.lm_head.weight, None


SPEC = FamilySpec(
    name="t5",
    architectures=(T5ForConditionalGeneration, T5EncoderModel),
    tokenizer_kind="unigram",
    template="eos",  # A </s> B </s>
    objectives={"span": T5ForConditionalGeneration},
)
