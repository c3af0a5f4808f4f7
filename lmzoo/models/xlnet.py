"""XLNet: permutation language modelling with two-stream relative attention (Yang et al., 2019).

Two streams run through the same layers. The content stream ``h`` is an ordinary encoder that
sees its own token; the query stream ``g`` starts from one learned vector (``mask_emb``) at each
predicted position and sees the content of other tokens, never its own. Which token sees which is
set by ``perm_mask`` (the factorization order); ``target_mapping`` picks the predicted positions.
The query stream is computed only at those positions (HF runs it at every position).

Shapes are batch-first (HF's XLNet is length-first). Attention goes through
``scaled_dot_product_attention``: SDPA computes the content term ``(q + r_w)·k``; the relative
position term ``(q + r_r)·r`` and the segment term ``(q + r_s)·s`` ride in its additive mask.
Weights keep HF's layout ([d_model, n_head, d_head] for q/k/v/o/r) so loading is a rename.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import (SUMMARY_ACTIVATIONS, SUMMARY_TYPES, ModelConfig, activation_from_hf, activation_to_hf,
                          label_map_from_hf, label_map_to_hf)
from lmzoo.weights import prefixed
from lmzoo.errors import UserError
from lmzoo.models.base import FamilySpec, PreTrainedModel
from lmzoo.nn.dropout import Dropout, attention
from lmzoo.nn.embedding import Embeddings
from lmzoo.nn.ffn import FeedForward
from lmzoo.nn.norm import make_norm
from lmzoo.nn.stack import run_layer
from lmzoo.nn.heads import decode_logits, last_token
from lmzoo.nn.loss import masked_lm_loss, sequence_classification_loss, token_classification_loss
from lmzoo.outputs import ModelOutput


# HF XLNet fields lmzoo does not read (its question-answering and mems switches): passed through
# when they differ from these defaults.
HF_PASSTHROUGH_DEFAULTS = {"use_mems_eval": True, "use_mems_train": False, "start_n_top": 5, "end_n_top": 5}


# --- config ---------------------------------------------------------------------------------

def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """HF XLNetConfig dict → ModelConfig (sequence-summary settings kept in ``extra``)."""
    if hf.get("attn_type", "bi") != "bi" or hf.get("same_length", False):
        raise UserError("only XLNet with attn_type 'bi' and same_length false is supported")
    d_model, n_heads = hf["d_model"], hf["n_head"]
    if hf.get("d_head") not in (None, d_model // n_heads):
        raise UserError(f"XLNet d_head {hf['d_head']} must equal d_model // n_head = {d_model // n_heads}")
    if hf.get("summary_type", "last") not in SUMMARY_TYPES:
        raise UserError(f"unsupported XLNet summary_type {hf['summary_type']!r} (supported: {SUMMARY_TYPES})")
    if hf.get("summary_activation", "tanh") not in SUMMARY_ACTIVATIONS:
        raise UserError(f"unsupported XLNet summary_activation {hf['summary_activation']!r}")
    return ModelConfig(
        family="xlnet",
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["n_layer"],
        n_heads=n_heads,
        d_ff=hf["d_inner"],
        max_positions=hf.get("lmzoo_max_positions", 512),
        tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
        positions="relative_sinusoidal",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=activation_from_hf(hf.get("ff_activation", "gelu")),
        mem_len=hf.get("mem_len") or 0,
        reuse_len=hf.get("reuse_len") or 0,
        bi_data=hf.get("bi_data", False),
        clamp_len=hf.get("clamp_len", -1),
        dropout=hf.get("dropout", 0.1),
        attention_dropout=hf.get("dropout", 0.1),
        classifier_dropout=hf.get("summary_last_dropout", 0.1),
        pad_token_id=hf.get("pad_token_id", 5),
        bos_token_id=hf.get("bos_token_id", 1),
        eos_token_id=hf.get("eos_token_id", 2),
        id2label=label_map_from_hf(hf),
        problem_type=hf.get("problem_type"),
        summary_type=hf.get("summary_type", "last"),
        summary_use_proj=hf.get("summary_use_proj", True),
        summary_activation=hf.get("summary_activation", "tanh"),
        hf_passthrough={k: hf[k] for k, default in HF_PASSTHROUGH_DEFAULTS.items() if hf.get(k, default) != default},
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig → HF XLNetConfig dict."""
    return {
        "model_type": "xlnet",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "d_head": config.head_dim,
        "d_inner": config.d_ff,
        "ff_activation": activation_to_hf(config.activation),
        "attn_type": "bi",
        "layer_norm_eps": config.norm_eps,
        "dropout": config.dropout,
        "mem_len": config.mem_len or None,
        "reuse_len": config.reuse_len or None,
        "bi_data": config.bi_data,
        "clamp_len": config.clamp_len,
        "same_length": False,
        "summary_type": config.summary_type,
        "summary_use_proj": config.summary_use_proj,
        "summary_activation": config.summary_activation,
        **HF_PASSTHROUGH_DEFAULTS,
        **config.hf_passthrough,
        "summary_last_dropout": 0.1 if config.classifier_dropout is None else config.classifier_dropout,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "tie_word_embeddings": config.tie_embeddings,
        "lmzoo_max_positions": config.max_positions,
        **label_map_to_hf(config),
    }


# HF module path (inside XLNetModel) → lmzoo module path. Order matters: first match wins.
BODY_KEY_MAP: list[tuple[str, str | None]] = [
    ("word_embedding", "embed.tokens"),
    ("mask_emb", "mask_emb"),
    ("layer.{}.rel_attn.layer_norm", "layers.{}.attn_norm"),
    ("layer.{}.rel_attn", "layers.{}.attn"),  # q k v o r r_w_bias r_r_bias r_s_bias seg_embed
    ("layer.{}.ff.layer_1", "layers.{}.ffn.up"),
    ("layer.{}.ff.layer_2", "layers.{}.ffn.down"),
    ("layer.{}.ff.layer_norm", "layers.{}.ffn_norm"),
]


# --- attention ------------------------------------------------------------------------------

@dataclass
class Stream:
    """Where one stream's queries sit and what they may see, shared by every layer.

    ``rows``: (B, Q) position of each query inside the current segment (None = 0..T-1, the
    content stream); a row may be T, one past the end (generation). ``blocked`` and ``different``
    (B, Q, K) booleans over the keys (memory first): True = may not attend / other segment.
    ``valid`` (B, Q): False for empty target_mapping rows (their attention output is zero, as HF).
    """

    rows: torch.Tensor | None = None
    blocked: torch.Tensor | None = None
    different: torch.Tensor | None = None
    valid: torch.Tensor | None = None


def rel_shift(x: torch.Tensor, klen: int) -> torch.Tensor:
    """(B, H, T, R) scores against table rows → (B, H, T, klen): out[i, j] = x[i, j + T - i]."""
    b, n, t, r = x.shape
    return x.reshape(b, n, r, t)[:, :, 1:].reshape(b, n, t, r - 1)[..., :klen]


class TwoStreamAttention(nn.Module):
    """XLNet's relative multi-head attention; the same weights serve both streams."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, self.n_heads, self.d_head = config.d_model, config.n_heads, config.head_dim
        for name in ("q", "k", "v", "o", "r"):
            setattr(self, name, nn.Parameter(torch.empty(d, self.n_heads, self.d_head)))
        for name in ("r_w_bias", "r_r_bias", "r_s_bias"):
            setattr(self, name, nn.Parameter(torch.empty(self.n_heads, self.d_head)))
        self.seg_embed = nn.Parameter(torch.empty(2, self.n_heads, self.d_head))
        self.scale = self.d_head**-0.5
        self.attention_dropout = config.attention_dropout

    def heads(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, T, D) @ (D, H, Dh) → (B, H, T, Dh)."""
        return (x @ weight.flatten(1).to(x.dtype)).unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)

    def out(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, Q, Dh) → (B, Q, D) through o."""
        return y.transpose(1, 2).flatten(2) @ self.o.flatten(1).to(y.dtype).t()

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_r: torch.Tensor, s: Stream) -> torch.Tensor:
        """q (B, H, Q, Dh); k, v (B, H, K, Dh); k_r (1|B, H, R, Dh) heads of the distance table."""
        b, n, nq, _ = q.shape
        klen, dt = k.shape[2], q.dtype
        # Position term: table row klen - d holds distance d = (query position) - (key position).
        # The 1/sqrt(d_head) scale goes on the (small) queries, not on the (B, H, Q, K) scores.
        pos = ((q + self.r_r_bias.to(dt)[:, None]) * self.scale) @ k_r.transpose(-1, -2)  # (B, H, Q, R)
        if s.rows is None:
            bias = rel_shift(pos, klen)
        else:
            qlen = k_r.shape[2] - klen
            index = torch.arange(klen, device=q.device) + qlen - s.rows[..., None]  # (B, Q, K)
            bias = pos.gather(-1, index[:, None].expand(b, n, nq, klen))
        if s.different is not None:
            seg = ((q + self.r_s_bias.to(dt)[:, None]) * self.scale) @ self.seg_embed.to(dt).permute(1, 2, 0)  # (B, H, Q, 2)
            bias = bias + torch.where(s.different[:, None], seg[..., 1:], seg[..., :1])
        if s.blocked is not None:
            bias = bias.masked_fill(s.blocked[:, None], torch.finfo(dt).min)
        y = attention(
            q + self.r_w_bias.to(dt)[:, None], k, v, attn_mask=bias,
            dropout_p=self.attention_dropout if self.training else 0.0, scale=self.scale,
        )
        if s.valid is not None:
            y = y * s.valid[:, None, :, None].to(dt)
        return y


class XLNetLayer(nn.Module):
    """Post-LN: both streams go through attention → norm → FFN → norm with shared weights."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn = TwoStreamAttention(config)
        self.attn_norm = make_norm(config)
        self.ffn = FeedForward(config)
        self.ffn_norm = make_norm(config)
        self.dropout = Dropout(config.dropout)

    def post(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn.out(y)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))

    def forward(
        self,
        h: torch.Tensor,
        g: torch.Tensor | None,
        mem: torch.Tensor | None,
        table: torch.Tensor,
        content: Stream,
        query: Stream | None,
        *,
        need_h: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``need_h=False`` skips the content stream's output (its keys/values are still used):
        the last layer of a two-stream pass returns only ``g``."""
        attn = self.attn
        cat = h if mem is None else torch.cat([mem.to(h.dtype), h], dim=1)  # (B, K, D)
        k, v = attn.heads(cat, attn.k), attn.heads(cat, attn.v)
        return self.streams(h, g, k, v, attn.heads(table, attn.r), content, query, need_h=need_h)

    def streams(
        self, h: torch.Tensor, g: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor, k_r: torch.Tensor,
        content: Stream, query: Stream | None, *, need_h: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Both streams given the keys/values (B, H, K, Dh) and distance-table heads k_r (1|B, H, R, Dh)."""
        attn = self.attn
        new_h = self.post(h, attn.attend(attn.heads(h, attn.q), k, v, k_r, content)) if need_h else None
        new_g = self.post(g, attn.attend(attn.heads(g, attn.q), k, v, k_r, query)) if g is not None else None
        return new_h, new_g


def relative_table(config: ModelConfig, qlen: int, klen: int, batch: int, device: torch.device) -> torch.Tensor:
    """Sinusoids of distances klen, klen-1, ..., -qlen+1: (1, R, D), or (B, R, D) with bi_data
    (backward distances for the second half of the batch). Same float ops as HF."""
    freq = torch.arange(0, config.d_model, 2.0, dtype=torch.int64, device=device).float()
    inv_freq = 1 / torch.pow(10000, freq / config.d_model)
    pos = torch.arange(klen, -qlen, -1.0, dtype=torch.int64, device=device).float()
    pos = torch.stack([pos, -pos]) if config.bi_data else pos[None]
    if config.clamp_len > 0:
        pos = pos.clamp(-config.clamp_len, config.clamp_len)
    sinusoid = pos[..., None] * inv_freq
    table = torch.cat([torch.sin(sinusoid), torch.cos(sinusoid)], dim=-1)
    return table.repeat_interleave(batch // 2, dim=0) if config.bi_data else table


def attention_blocks(
    perm_mask: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int, qlen: int, mlen: int = 0,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(content, query) ``blocked`` masks (B, T, mlen + T), True = may not attend, as HF builds them.

    Padding keys and ``perm_mask[b, i, j] > 0`` are blocked in both streams; memory is always
    visible; the content stream always sees its own token, the query stream only where
    ``perm_mask`` allows it (never, for a predicted token).
    """
    blocked = None
    if attention_mask is not None:
        blocked = (attention_mask == 0)[:, None, :].expand(batch, qlen, qlen)
    if perm_mask is not None:
        blocked = perm_mask > 0 if blocked is None else blocked | (perm_mask > 0)
    if blocked is None:
        return None, None
    if mlen:
        blocked = torch.cat([blocked.new_zeros(batch, qlen, mlen), blocked], dim=-1)
    keys = torch.arange(mlen + qlen, device=blocked.device)
    itself = keys[None, :] == torch.arange(qlen, device=blocked.device)[:, None] + mlen  # (T, K)
    return blocked & ~itself, blocked


def rows_of(x: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """x (B, T, K) → x at query rows (B, P, K)."""
    return None if x is None else x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


# --- models ---------------------------------------------------------------------------------

class XLNetPreTrainedModel(PreTrainedModel):
    model_types = ("xlnet",)
    config_from_hf = staticmethod(config_from_hf)
    config_to_hf = staticmethod(config_to_hf)
    # without token_type_ids the segment parameters get no gradient, nor does mask_emb without
    # target_mapping (classification): DDP must not wait for them
    ddp_find_unused_parameters = True

    def init_weights(self) -> None:
        super().init_weights()
        for module in self.modules():
            if isinstance(module, TwoStreamAttention):
                for p in module.parameters():
                    nn.init.normal_(p, std=0.02)
            elif isinstance(module, XLNetModel):
                nn.init.normal_(module.mask_emb, std=0.02)


class XLNetModel(XLNetPreTrainedModel):
    """The bare two-stream encoder. ``last_hidden_state`` is the query stream at the
    ``target_mapping`` rows (B, P, D) when it is given, else the content stream (B, T, D)."""

    hf_architecture = "XLNetModel"
    prefix_in_heads = "transformer"

    def __init__(self, config: ModelConfig, *, init: bool = True) -> None:
        """``init=False``: a head model builds this body and initialises everything once itself."""
        super().__init__(config)
        self.embed = Embeddings(config)  # token embedding + dropout (positions are relative)
        self.mask_emb = nn.Parameter(torch.empty(1, 1, config.d_model))
        self.layers = nn.ModuleList(XLNetLayer(config) for _ in range(config.n_layers))
        self.activation_checkpointing = False  # see lmzoo.nn.stack.run_layer
        self.dropout = Dropout(config.dropout)
        if init:
            self.init_weights()

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return BODY_KEY_MAP

    def cache_mem(self, h: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """Memory for the next segment: the first reuse_len tokens, the last mem_len states (as HF)."""
        if self.config.reuse_len:
            h = h[:, : self.config.reuse_len]
        cat = h if prev is None else torch.cat([prev, h], dim=1)
        return (cat[:, -self.config.mem_len :] if self.config.mem_len else cat).detach()

    def encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        mems: list[torch.Tensor] | None,
        content: Stream,
        query: Stream | None,
        *,
        need_h: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor]]:
        """Run the layers; returns (content output, query output, each layer's input h)."""
        batch, qlen = input_ids.shape
        mlen = 0 if mems is None else mems[0].shape[1]
        if mems is None and qlen > self.config.max_positions:
            raise UserError(f"sequence of {qlen} tokens exceeds max_positions {self.config.max_positions}; "
                            "feed it in segments with memory (mems)")
        if self.config.bi_data and batch % 2:
            raise UserError(f"bi_data needs an even batch (forward + reversed halves), got {batch}")
        if token_type_ids is not None:  # one-hot segment relation: same (0) or different (1) segment
            cat_ids = F.pad(token_type_ids, (mlen, 0)) if mlen else token_type_ids
            different = token_type_ids[:, :, None] != cat_ids[:, None, :]
            content.different = different
            if query is not None:
                query.different = rows_of(different, query.rows) if query.different is None else query.different
        h = self.embed(input_ids)  # (B, T, D)
        g = None if query is None else self.dropout(self.mask_emb.expand(batch, query.rows.shape[1], -1)).to(h.dtype)
        table = self.dropout(relative_table(self.config, qlen, mlen + qlen, batch, h.device)).to(h.dtype)
        inputs = []
        for i, layer in enumerate(self.layers):
            inputs.append(h)
            last = i == len(self.layers) - 1
            h, g = run_layer(layer, self.activation_checkpointing, h, g, None if mems is None else mems[i], table,
                             content, query, need_h=need_h or not last)
        return h, g, inputs

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        perm_mask: torch.Tensor | None = None,
        target_mapping: torch.Tensor | None = None,
        mems: list[torch.Tensor] | None = None,
        use_mems: bool = False,
    ) -> ModelOutput:
        """``perm_mask`` (B, T, T): 1 where token i may not see token j. ``target_mapping``
        (B, P, T): one-hot rows picking the predicted positions (an all-zero row is padding).
        ``mems``: per-layer (B, M, D) states of the previous segment; ``use_mems`` returns the
        new ones in ``mems`` (the last ``mem_len``, of the first ``reuse_len`` tokens)."""
        batch, qlen = input_ids.shape
        mlen = 0 if mems is None else mems[0].shape[1]
        content_blocked, query_blocked = attention_blocks(perm_mask, attention_mask, batch, qlen, mlen)
        content, query = Stream(blocked=content_blocked), None
        if target_mapping is not None:
            rows = target_mapping.argmax(-1)  # (B, P)
            query = Stream(rows=rows, blocked=rows_of(query_blocked, rows), valid=target_mapping.amax(-1) > 0)
        h, g, inputs = self.encode(input_ids, token_type_ids, mems, content, query, need_h=query is None)
        new_mems = None
        if use_mems:
            new_mems = [self.cache_mem(x, None if mems is None else mems[i]) for i, x in enumerate(inputs)]
        return ModelOutput(last_hidden_state=self.dropout(g if g is not None else h), mems=new_mems)


@dataclass
class XLNetGenerationState:
    """Decoding state: per-layer keys/values of the content stream in preallocated buffers, and
    each layer's heads of the whole distance table (computed once).

    As HF's ``prepare_inputs_for_generation`` (offset 2): the newest token's states are computed
    again at the next step, when the token after it is known; the others stay frozen in memory.
    """

    keys: list[torch.Tensor]  # per layer (B, H, capacity, Dh)
    values: list[torch.Tensor]
    distances: list[torch.Tensor]  # per layer (1, H, 2 * capacity, Dh): distances capacity .. -capacity + 1
    key_pad: torch.Tensor  # (B, capacity) True = padding
    length: int = 0  # positions [0, length) are in memory for good
    window: int = 0  # attend to the last `window` of them only (0 = all)
    pending: torch.Tensor | None = None  # (B, 1) the newest token, not yet in memory for good
    padded: bool = False  # whether key_pad has any padding (else no mask at all)

    @property
    def capacity(self) -> int:
        return self.key_pad.shape[1]

    def reorder(self, beam_indices: torch.Tensor) -> None:
        """Keep the rows ``beam_indices`` (beam search)."""
        self.keys = [k.index_select(0, beam_indices) for k in self.keys]
        self.values = [v.index_select(0, beam_indices) for v in self.values]
        self.key_pad = self.key_pad.index_select(0, beam_indices)
        if self.pending is not None:
            self.pending = self.pending.index_select(0, beam_indices)


class XLNetLMHeadModel(XLNetPreTrainedModel):
    """XLNet with the LM head (tied to the embeddings unless tie_embeddings is off); trained with permutation LM (``lmzoo.objectives.plm``).

    With ``labels`` (B, P) the loss is the mean CE over labels != -100 and ``logits`` are only
    computed for those rows: (n_labelled, vocab); in training mode with grad enabled the head is
    fused with the loss (``lmzoo.nn.loss``) and ``logits`` is None. Without labels, logits are
    (B, P|T, vocab).
    """

    hf_architecture = "XLNetLMHeadModel"
    base_prefix = "transformer"
    head_modules = ("lm_head",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = XLNetModel(config, init=False)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        self.init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.embed.tokens.weight

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        tied_weight = [("lm_loss.weight", None)] if config.tie_embeddings else []  # HF re-ties it
        return prefixed(BODY_KEY_MAP, "transformer", "transformer") + tied_weight + [("lm_loss", "lm_head")]

    def tied_parameters(self) -> dict[str, str]:
        return {"lm_head.weight": "transformer.embed.tokens.weight"} if self.config.tie_embeddings else {}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        perm_mask: torch.Tensor | None = None,
        target_mapping: torch.Tensor | None = None,
        mems: list[torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        use_mems: bool = False,
    ) -> ModelOutput:
        out = self.transformer(input_ids, attention_mask, token_type_ids, perm_mask, target_mapping, mems, use_mems)
        hidden = out.last_hidden_state
        logits, loss = masked_lm_loss(hidden, labels, head=self.lm_head, fused=self.training and torch.is_grad_enabled())
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=hidden, mems=out.mems)

    # --- generation protocol (lmzoo.generate) ---

    @torch.no_grad()
    def prepare_generation(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int
    ) -> XLNetGenerationState:
        """Buffers for prompt + max_new_tokens; padding of a left-padded prompt stays masked."""
        batch, prompt = input_ids.shape
        if prompt > self.config.max_positions:
            raise UserError(f"prompt of {prompt} tokens exceeds max_positions {self.config.max_positions}")
        capacity = prompt + max_new_tokens + 1
        param = self.transformer.embed.tokens.weight  # a float weight (int8 quantization swaps lm_head's)
        pad = torch.zeros(batch, capacity, dtype=torch.bool, device=input_ids.device)
        if attention_mask is not None:
            pad[:, :prompt] = attention_mask == 0
        table = relative_table(self.config.replace(bi_data=False), capacity, capacity, 1, param.device).to(param.dtype)
        layers = [layer.attn for layer in self.transformer.layers]
        shape = (batch, self.config.n_heads, capacity, self.config.head_dim)
        # HF keeps mem_len states including a dummy token and recomputes 2, leaving mem_len - 2.
        window = max(self.config.mem_len - 2, 1) if self.config.mem_len else 0
        return XLNetGenerationState(
            keys=[param.new_zeros(shape) for _ in layers], values=[param.new_zeros(shape) for _ in layers],
            distances=[attn.heads(table, attn.r) for attn in layers], key_pad=pad, window=window,
            padded=bool(pad.any()),
        )

    @torch.no_grad()
    def generation_step(self, tokens: torch.Tensor, state: XLNetGenerationState) -> torch.Tensor:
        """Logits (B, vocab) of the token after ``tokens`` (B, t), which follow what ``state`` saw.

        Autoregressive XLNet as HF does it: a query-stream token one past the end that sees every
        real token and not itself. Only the new tokens (and the one before them) are computed;
        earlier keys/values come from the cache, so a step costs O(new tokens x context).
        """
        x = tokens if state.pending is None else torch.cat([state.pending, tokens], dim=1)  # (B, T)
        batch, qlen = x.shape
        end = state.length + qlen  # x sits at positions [length, end)
        if end > state.capacity:
            raise UserError(f"generation past the {state.capacity - 1} tokens prepare_generation made room for")
        start = max(0, state.length - state.window) if state.window else 0
        klen, cap = end - start, state.capacity
        blocked = state.key_pad[:, None, start:end].expand(batch, qlen, klen) if state.padded else None
        content = Stream(blocked=blocked)
        query = Stream(rows=torch.full((batch, 1), qlen, device=x.device),
                       blocked=None if blocked is None else blocked[:, :1])
        h = self.transformer.embed(x)  # (B, T, D)
        g = self.transformer.mask_emb.expand(batch, 1, -1).to(h.dtype)
        last = len(self.transformer.layers) - 1
        for i, layer in enumerate(self.transformer.layers):
            keys, values = state.keys[i], state.values[i]
            keys[:, :, state.length : end] = layer.attn.heads(h, layer.attn.k)
            values[:, :, state.length : end] = layer.attn.heads(h, layer.attn.v)
            k_r = state.distances[i][:, :, cap - klen : cap + qlen]  # distances klen .. -qlen + 1
            h, g = layer.streams(h, g, keys[:, :, start:end], values[:, :, start:end], k_r, content, query,
                                 need_h=i < last)
        state.length = end - 1  # the newest token is computed again next time
        state.pending = x[:, -1:]
        return decode_logits(g[:, 0], self.lm_head)


class XLNetForSequenceClassification(XLNetPreTrainedModel):
    """Sequence summary (the last token's state, as XLNet puts <cls> last) → tanh projection →
    logits. Loss by ``config.problem_type``: single-label CE, multi-label BCE, regression MSE.

    "last" is the last real token: the last 1 of ``attention_mask`` when given, else the last
    position. HF always reads the last position, which is the same for the left padding its XLNet
    tokenizer uses; lmzoo's collators pad on the right, where the last position is padding. XLNet's
    attention is relative, so a real token's state does not depend on the padding side and a
    right-padded row gives the logits HF gives the same row left-padded."""

    hf_architecture = "XLNetForSequenceClassification"
    head_kind = "sequence_classification"
    base_prefix = "transformer"
    head_modules = ("sequence_summary", "logits_proj")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = XLNetModel(config, init=False)
        self.summary_type = config.summary_type
        self.summary_activation = config.summary_activation
        self.sequence_summary = nn.Linear(config.d_model, config.d_model) if config.summary_use_proj else None
        self.summary_dropout = Dropout(0.1 if config.classifier_dropout is None else config.classifier_dropout)
        self.logits_proj = nn.Linear(config.d_model, config.num_labels)
        self.init_weights()

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return prefixed(BODY_KEY_MAP, "transformer", "transformer") + [
            ("sequence_summary.summary", "sequence_summary"),
            ("logits_proj", "logits_proj"),
        ]

    def summary(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = {"last": lambda: last_token(hidden, attention_mask), "first": lambda: hidden[:, 0],
             "mean": lambda: hidden.mean(1)}[self.summary_type]()
        if self.sequence_summary is not None:
            x = self.sequence_summary(x)
        if self.summary_activation == "tanh":
            x = torch.tanh(x)
        return self.summary_dropout(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        hidden = self.transformer(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.logits_proj(self.summary(hidden, attention_mask))
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=hidden)


class XLNetForTokenClassification(XLNetPreTrainedModel):
    """Per-token labels (NER): the content stream (after XLNetModel's output dropout) → ``classifier``,
    as HF's class; labels -100 are not scored."""

    hf_architecture = "XLNetForTokenClassification"
    head_kind = "token_classification"
    base_prefix = "transformer"
    head_modules = ("classifier",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = XLNetModel(config, init=False)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.init_weights()

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return prefixed(BODY_KEY_MAP, "transformer", "transformer") + [("classifier", "classifier")]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        hidden = self.transformer(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, D)
        logits = self.classifier(hidden)  # (B, T, num_labels)
        loss = None if labels is None else token_classification_loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=hidden)


SPEC = FamilySpec(
    name="xlnet",
    architectures=(XLNetLMHeadModel, XLNetModel, XLNetForSequenceClassification, XLNetForTokenClassification),
    tokenizer_kind="unigram",
    template="eos",  # A </s> B </s> (lmzoo's Unigram layout; XLNet's own A <sep> B <sep> <cls> is not built yet)
    objectives={"plm": XLNetLMHeadModel},
)
