"""Shared test helpers: tiny Hugging Face configs, random HF models saved to a folder, padded
batches and a tolerance check.

Convention: plain functions and constants, imported explicitly (``from conftest import ...``; the
tests folder is on ``sys.path`` because it has no ``__init__.py``). No fixtures: each helper takes
what varies (class, config, folder, seed) as arguments, so a test reads top to bottom."""

from __future__ import annotations

import functools
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

ATOL = 1e-5  # float32 parity with transformers
LABELS = {0: "neg", 1: "neu", 2: "pos"}  # the label map of the tiny classification heads
LABEL2ID = {v: k for k, v in LABELS.items()}

# family → (transformers config class, keyword arguments): 2 layers (the decoders 3), d_model 32,
# 4 heads, an FFN width of 37 that matches no other size, so a transposed weight cannot load.
_TINY = {
    "bert": ("BertConfig", dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=37, max_position_embeddings=64)),
    "roberta": ("RobertaConfig", dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=37, max_position_embeddings=66)),  # 64 + padding offset 2
    "gpt2": ("GPT2Config", dict(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=40,
                                bos_token_id=100, eos_token_id=100)),
    "t5": ("T5Config", dict(vocab_size=97, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=3,
                            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                            decoder_start_token_id=0)),
    "bart": ("BartConfig", dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=3,
                                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                                decoder_ffn_dim=37, max_position_embeddings=40, forced_eos_token_id=None)),
    "xlnet": ("XLNetConfig", dict(vocab_size=101, d_model=32, n_layer=2, n_head=4, d_inner=37, mem_len=None,
                                  pad_token_id=0, bos_token_id=None, eos_token_id=None)),
}
_TINY["t5-v1.1"] = ("T5Config", {**_TINY["t5"][1], "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False})


def tiny_config(family: str, **overrides):
    """A tiny transformers config of ``family`` (bert, roberta, gpt2, t5, t5-v1.1, bart, xlnet);
    ``overrides`` are config fields (they win over the tiny defaults)."""
    import transformers  # here, not at the top: every test collects this file, few need transformers

    cls, defaults = _TINY[family]
    return getattr(transformers, cls)(**{**defaults, **overrides})


def hf_model(cls, config, folder: str | Path, *, seed: int = 0, untie: bool = False):
    """A random transformers ``cls(config)`` in eval mode, saved with ``save_pretrained(folder)``.

    Biases and norm weights (and BART's ``final_logits_bias``) get random offsets (std 0.1; 0.3 for
    T5, which has no biases but its relative-position one), so a wrongly mapped one cannot hide
    behind zeros / ones. ``untie``: the LM head gets weights of its own (a T5 v1.1 checkpoint has
    its own lm_head; transformers 5 ties it otherwise)."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    scale = 0.3 if config.model_type == "t5" else 0.1
    with torch.no_grad():
        for name, p in model.named_parameters():
            lowered = name.lower()
            if "bias" in lowered or "norm" in lowered or "ln_" in name or "seg_embed" in name:
                p.add_(torch.randn_like(p) * scale)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_()
        if untie:
            head = model.get_output_embeddings()
            head.weight = torch.nn.Parameter(torch.randn_like(head.weight) * 0.05)
    model.save_pretrained(folder)
    return model


def padded_batch(lengths: Sequence[int], *, high: int, low: int, pad_id: int, seed: int = 0, left: bool = False,
                 target_length: int | None = None):
    """Random ids in [low, high) [B, max(lengths)], row i with lengths[i] real tokens (right-padded,
    or left-padded with ``left``) and ``pad_id`` elsewhere → (input_ids, attention_mask); with
    ``target_length``, also labels [B, target_length] drawn after the ids from the same generator."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (len(lengths), max(lengths)), generator=g)
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
    if left:
        mask = mask.flip(1)
    ids = ids.masked_fill(mask == 0, pad_id)
    if target_length is None:
        return ids, mask
    return ids, mask, torch.randint(low, high, (len(lengths), target_length), generator=g)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor | None = None, *,
                 atol: float = ATOL) -> None:
    """Same shape and every element within ``atol`` (at the positions where ``mask`` [B, S] is 1, if
    given); the message is the largest difference."""
    if mask is not None:
        actual, expected = actual[mask.bool()], expected[mask.bool()]
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol), (actual - expected).abs().max().item()


def until_eos(row: torch.Tensor, eos: int) -> list[int]:
    """Tokens up to and including the first eos (what follows is padding, filled differently)."""
    out = []
    for token in row.tolist():
        out.append(token)
        if token == eos:
            break
    return out


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``lmzoo ARGV`` in-process: (exit status, stdout, stderr); argparse's usage errors give their status."""
    from lmzoo.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@functools.cache
def compile_unavailable() -> str | None:
    """Why torch.compile cannot be tested here (None when a tiny compile finishes within 60 s); probed
    once per session."""
    probe = "import torch; f = torch.compile(lambda x: torch.tanh(x) * 2); f(torch.ones(4)).sum().item()"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                              check=False)
    except subprocess.TimeoutExpired:
        return "a tiny torch.compile takes over 60 s on this machine"
    if done.returncode != 0:
        return "torch.compile does not work here: " + (done.stderr.strip().splitlines() or ["?"])[-1][:200]
    return None


# ---- tiny run folders (a model and its tokenizer) --------------------------------------------------

WORDS = "the king and queen of a castle speak with knight about war peace land sword crown night day".split()


def corpus(path: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(30)) + "." for _ in range(40)) + "\n")
    return path


def tiny_folder(folder: Path, text: Path, preset: str, *, architecture: str | None = None, extra_ids: int = 0,
                scale: float = 0.0, kind: str | None = None, **config) -> Path:
    """A random preset model sized to a tokenizer trained here on ``text``, saved with it (a run folder).
    ``scale`` > 0 draws every weight from N(0, scale): a random LM whose greedy output varies. ``kind``:
    another tokenizer kind than the family's (a random LM on byte-level BPE mostly writes partial UTF-8
    bytes, which a terminal streamer holds back; whole pieces make the text comparisons exact)."""
    import lmzoo
    from lmzoo.models import family_spec
    from lmzoo.presets import preset_config
    from lmzoo.tokenizer import train_tokenizer

    base = preset_config(preset)
    spec = family_spec(base.family)
    tokenizer = train_tokenizer([str(text)], kind=kind or spec.tokenizer_kind, template=spec.template,
                                vocab_size=200 if kind else 300, extra_ids=extra_ids)
    ids = {k: v for k, v in (("pad_token_id", tokenizer.pad_id), ("eos_token_id", tokenizer.eos_id),
                             ("bos_token_id", tokenizer.bos_id)) if v is not None and getattr(base, k) is not None}
    torch.manual_seed(0)
    model = lmzoo.from_preset(preset, architecture=architecture, vocab_size=tokenizer.vocab_size, **ids, **config)
    if scale:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, scale)
    model.save_pretrained(folder)
    tokenizer.save(folder)
    return folder
