"""What the generating verbs share, for the CLI and the server alike: load a model that can generate,
encode and fit a prompt or a code prefix to its context, and turn sampling flags into ``generate``'s
keywords. Bad values are ``UserError`` lines naming the flag."""

from __future__ import annotations

import math
import sys
from typing import Any

from lmzoo.errors import UserError


def load_lm(folder: str, bf16: bool = False, quantize: str | None = None, compile: bool = False):
    """(model, tokenizer) of a folder whose model can generate (an LM head + the generation protocol);
    ``compile``: its decoding step compiled (``lmzoo.generate.compile_decoding``)."""
    import torch

    from lmzoo.generate import compile_decoding
    from lmzoo.pipelines import load_model_and_tokenizer
    from lmzoo.quantize import quantize_int8

    model, tokenizer = load_model_and_tokenizer(folder)
    if not hasattr(model, "prepare_generation"):
        raise UserError(f"{folder} holds a {model.hf_architecture}, which cannot generate text: "
                        "it needs an LM head (e.g. GPT2LMHeadModel)")
    if quantize == "int8":
        model = quantize_int8(model)
    elif bf16:
        model = model.to(torch.bfloat16)
    return (compile_decoding(model) if compile else model), tokenizer


def decoder_room(config: Any, max_new_tokens: int) -> int:
    """max_new_tokens cut (with a note) to what an encoder-decoder's decoder positions hold: with
    learned positions (BART) the start token and the first n - 1 new tokens fill n positions;
    relative positions (T5) have no end."""
    if config.positions == "learned" and max_new_tokens > config.max_positions:
        print(f"note: generating at most {config.max_positions} tokens, all the model's positions allow",
              file=sys.stderr)
        return config.max_positions
    return max_new_tokens


def encode_prompt(model, tokenizer, text: str, max_new_tokens: int) -> tuple[list[int], int]:
    """Prompt ids, and max_new_tokens cut to what the context has room for. An encoder-decoder's
    source is wrapped in its special tokens, as ``text2text`` and transformers do."""
    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be > 0, got {max_new_tokens}")
    ids = tokenizer.encode(text) if text else []
    if not ids:
        raise UserError("empty prompt: give some text to continue")
    context = model.config.max_positions
    if model.config.is_encoder_decoder:
        ids = tokenizer.build_inputs(ids)[0]
        if len(ids) > context and model.config.positions == "learned":
            raise UserError(f"prompt of {len(ids)} tokens is longer than the model's context of {context}")
        return ids, decoder_room(model.config, max_new_tokens)
    if len(ids) >= context:
        raise UserError(f"prompt of {len(ids)} tokens is longer than the model's context of {context} "
                        "(it needs room for at least one new token)")
    if len(ids) + max_new_tokens > context:
        print(f"note: generating {context - len(ids)} tokens, all the context has room for", file=sys.stderr)
    return ids, min(max_new_tokens, context - len(ids))


def empty_reply_note(bot: str) -> str:
    """What to tell someone whose chat model answered nothing: most often it was never trained on the
    speaker-turn format the conversation is written in (``lmzoo.objectives.clm.chat_turn``)."""
    return (f"note: the model wrote an empty reply. chat writes the conversation as speaker turns (a name in "
            f"capitals on its own line, the speech, a blank line) and lets the model continue after {bot!r}; a "
            "model learns that from a dialogue corpus: lmzoo.objectives.clm.dialogue_corpus(plays, "
            "'dialogue.jsonl'), then `lmzoo pretrain --preset gpt-tiny --objective clm --data dialogue.jsonl "
            "--out RUN` (docs/clm.md). For plain continuation use `lmzoo generate`.")


def sampling_options(args: Any) -> dict[str, Any]:
    """generate()'s sampling keywords from the CLI's sampling flags (any object with their attributes):
    sampling when a temperature, top-k or top-p is given, else greedy."""
    sample = any(v is not None for v in (args.temperature, args.top_k, args.top_p))
    # `not x > 0` (not `x <= 0`): nan compares false either way and must be refused too
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if not (math.isfinite(args.repetition_penalty) and args.repetition_penalty > 0):
        raise UserError(f"--repetition-penalty must be a finite number > 0, got {args.repetition_penalty}")
    return dict(do_sample=sample, temperature=args.temperature or 1.0, top_k=args.top_k or 0,
                top_p=1.0 if args.top_p is None else args.top_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed if args.seed is not None else (0 if sample else None))



def prefix_ids(model, tokenizer, prefix: str, max_new_tokens: int, context: int | None) -> list[int]:
    """A code prefix's ids (special-token strings are code, not tokens), cut from the left so that it
    and ``max_new_tokens`` fit in ``context`` positions: completing needs the end of a long file."""
    if model.config.is_encoder_decoder:
        raise UserError("complete needs a decoder-only causal LM (e.g. GPT2LMHeadModel)")
    limit = model.config.max_positions
    context = limit if context is None else context
    if not 0 < context <= limit:
        raise UserError(f"--context must be in 1..{limit} (the model's positions), got {context}")
    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be > 0, got {max_new_tokens}")
    if max_new_tokens >= context:
        raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room for the prefix in a context of {context}")
    ids = tokenizer.encode(prefix, split_special_tokens=True) if prefix.strip() else []
    if not ids:
        raise UserError("empty prefix: give some code to complete")
    room = context - max_new_tokens
    if len(ids) > room:
        print(f"note: completing from the last {room} of the prefix's {len(ids)} tokens (context {context})",
              file=sys.stderr)
        ids = ids[-room:]
    return ids
