"""Model FLOPs of a training step, from the config (PaLM, Chowdhery et al. 2022, appendix B): every
weight matmul costs 2 FLOPs per weight per token forward and twice that backward (6·N per token), and
attention adds its score and value products, 12·L·d_attn·keys per token, counted in full even where a
causal mask hides half of them (as PaLM and nanoGPT count). Embedding lookups, norms, softmax and
other elementwise work are not counted: model FLOPs are what MFU divides by the machine's peak.

The counts follow the config's fields, so they hold for every family: an encoder (or a decoder-only
model) runs ``n_layers`` layers over ``tokens``; an encoder-decoder adds ``n_decoder_layers`` over
``targets`` with cross-attention over ``tokens``; the LM head multiplies ``head_rows`` rows by the
vocabulary (only the predicted rows where an objective computes no other logits); relative sinusoidal
positions (XLNet) add their key projection over 2·tokens positions and the position scores; a query
stream (XLNet's permutation LM) runs attention and feed-forward once more for ``query_rows`` rows, and
then the last layer's content stream computes only the keys and values the query stream reads.
Left out: BERT's d×d MLM transform before the head (about 2 % of its head's FLOPs).
"""

from __future__ import annotations

from lmzoo.config import ModelConfig

BACKWARD_FACTOR = 3  # forward + backward: the backward pass costs twice the forward's matmuls


def _dense(d_model: int, d_attn: int, d_ff: int, gated: bool) -> int:
    """Forward FLOPs per token of one layer's weight matmuls: q, k, v, o projections and the FFN."""
    return 2 * (4 * d_model * d_attn + (3 if gated else 2) * d_model * d_ff)


def _attention(d_attn: int, keys: int) -> int:
    """Forward FLOPs per query of scores (q·k) and the weighted sum of values over ``keys``."""
    return 2 * 2 * d_attn * keys


def forward_flops(config: ModelConfig, *, tokens: int, targets: int = 0, head_rows: int | None = None,
                  query_rows: int = 0) -> int:
    """Forward FLOPs of one sequence of ``tokens`` (encoder-decoder: plus ``targets`` decoder tokens);
    ``head_rows``: rows through the LM head (default every output position); ``query_rows``: rows
    of a second (query) stream."""
    d, d_attn = config.d_model, config.n_heads * config.head_dim
    per_layer = _dense(d, d_attn, config.d_ff, config.gated_ffn)
    flops = config.n_layers * tokens * (per_layer + _attention(d_attn, tokens))
    if config.positions == "relative_sinusoidal":  # k_r = R W_r over 2T distances, then q·k_r scores
        flops += config.n_layers * (2 * (2 * tokens) * d * d_attn + 2 * tokens * (2 * tokens) * d_attn)
    if query_rows:  # the query stream: q and o projections, FFN, attention and position scores
        kv = 2 * 2 * d * d_attn  # k and v come from the content stream
        flops += config.n_layers * query_rows * (per_layer - kv + _attention(d_attn, tokens) + 2 * 2 * tokens * d_attn)
        # the last layer's content output is never read: only its keys and values are computed
        flops -= tokens * (per_layer - kv + _attention(d_attn, tokens) + 2 * 2 * tokens * d_attn)
    outputs = tokens
    if config.is_encoder_decoder:
        dec = config.decoder_config()
        d_dec_attn = dec.n_heads * dec.head_dim
        self_part = _dense(d, d_dec_attn, dec.d_ff, dec.gated_ffn) + _attention(d_dec_attn, targets)
        cross_part = 2 * 2 * d * d_dec_attn + _attention(d_dec_attn, tokens)  # q and o per target
        cross_kv = 2 * 2 * d * d_dec_attn * tokens  # k and v of the encoder states, once per layer
        flops += config.n_decoder_layers * (targets * (self_part + cross_part) + cross_kv)
        outputs = targets
    rows = outputs if head_rows is None else head_rows
    return flops + 2 * d * config.vocab_size * rows


def training_flops(config: ModelConfig, **shape: int | None) -> int:
    """Forward + backward FLOPs of one sequence (``shape`` as :func:`forward_flops`)."""
    return BACKWARD_FACTOR * forward_flops(config, **shape)


def parameter_count(config: ModelConfig) -> int:
    """Weights in the matmuls :func:`forward_flops` counts per token (the N of 6·N), LM head included."""
    d, d_attn = config.d_model, config.n_heads * config.head_dim
    n = config.n_layers * _dense(d, d_attn, config.d_ff, config.gated_ffn) // 2
    if config.is_encoder_decoder:
        dec = config.decoder_config()
        d_dec_attn = dec.n_heads * dec.head_dim
        n += config.n_decoder_layers * (_dense(d, d_dec_attn, dec.d_ff, dec.gated_ffn) // 2 + 4 * d * d_dec_attn)
    return n + d * config.vocab_size
