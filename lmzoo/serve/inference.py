"""What each endpoint computes, through the library functions the CLI verbs call (``fill_mask``,
``next_sentence_probability``, ``generate``, ``generate_texts``, ``reconstruct_texts``,
``predict_examples``, ``explain`` and the CLI's own prompt helpers), so a request and the verb
give the same answer. Every function here runs on the model's worker thread (blocking); a
``UserError`` becomes a 400 answer.

``prepare_*`` functions check a request against the model (its tools, its context) and encode it;
they are cheap, so the endpoint runs them before answering, and a streaming request that cannot
run is refused with a 4xx instead of an error in the middle of a 200 stream.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from lmzoo.errors import UserError
from lmzoo.generate import TextStreamer, continuation_text, generate, truncate_at_stop
from lmzoo.serve.registry import ServedModel

# the chat verb's default speakers (lmzoo chat --user / --bot)
DEFAULT_USER, DEFAULT_BOT = "Romeo", "Juliet"


def require(m: ServedModel, tool: str) -> None:
    """A UserError naming what the model offers when it lacks ``tool``."""
    if tool not in m.tools:
        raise UserError(f"model {m.name} ({m.model.hf_architecture}) cannot {tool}; it offers: {', '.join(m.tools)}")


def sampling_options(temperature: float | None, top_k: int | None, top_p: float | None,
                     repetition_penalty: float = 1.0, seed: int | None = None) -> dict[str, Any]:
    """``generate`` options exactly as the CLI's sampling flags make them (greedy unless one is given)."""
    from types import SimpleNamespace

    from lmzoo.inference import sampling_options

    return sampling_options(SimpleNamespace(temperature=temperature, top_k=top_k, top_p=top_p,
                                             repetition_penalty=repetition_penalty, seed=seed))


# --- encoders ----------------------------------------------------------------------------------


def fill_mask(m: ServedModel, text: str, top_k: int) -> dict[str, Any]:
    from lmzoo.pipelines import fill_mask as fill

    require(m, "fill-mask")
    return {"masks": [[asdict(p) for p in blank] for blank in fill(m.model, m.tokenizer, text, top_k=top_k)]}


def nsp(m: ServedModel, first: str, second: str) -> dict[str, Any]:
    from lmzoo.pipelines import next_sentence_probability

    require(m, "nsp")
    return {"probability": next_sentence_probability(m.model, m.tokenizer, first, second)}


def predict(m: ServedModel, texts: Sequence[str], text_pairs: Sequence[str] | None) -> dict[str, Any]:
    """Labels (or tags and entities) as ``lmzoo predict`` writes them, one per text."""
    from lmzoo.tasks.classification import TaskOptions, predict_examples
    from lmzoo.tasks.data import TaggedSentence, TextExample

    require(m, "predict")
    options = TaskOptions.from_json(m.task)
    if options.task == "pair" and (text_pairs is None or len(text_pairs) != len(texts)):
        raise UserError("a sentence-pair model needs text_pairs: one second text per text")
    if options.task == "ner":
        examples: list[Any] = [TaggedSentence(t.split()) for t in texts]
        if any(not e.words for e in examples):
            raise UserError("every text needs at least one word to tag")
    else:
        pairs = text_pairs if options.task == "pair" else [None] * len(texts)
        examples = [TextExample(t, p) for t, p in zip(texts, pairs)]
    return {"task": options.task, "predictions": predict_examples(m.model, m.tokenizer, examples, options)}


def explain(m: ServedModel, objective: str, text: str, seed: int) -> dict[str, Any]:
    """What one of the model's pretraining objectives does to ``text``, on the model's own tokenizer."""
    from lmzoo.explain import explain as explain_objective

    if objective not in m.objectives:
        raise UserError(f"model {m.name} pretrains with {', '.join(m.objectives)}, not {objective!r}")
    return explain_objective(objective, text, tokenizer=m.tokenizer, seed=seed)


# --- seq2seq -----------------------------------------------------------------------------------


def _check_sources(m: ServedModel, texts: Sequence[str], max_new_tokens: int) -> None:
    if any(not t.strip() for t in texts):
        raise UserError("every text must be non-empty")
    longest = max(len(m.tokenizer.build_inputs(m.tokenizer.encode(t))[0]) for t in texts)
    if longest > m.context:
        raise UserError(f"a text of {longest} tokens is longer than the model's context of {m.context}")
    if max_new_tokens > m.context:
        raise UserError(f"max_new_tokens {max_new_tokens} exceeds the model's context of {m.context}")


def text2text(m: ServedModel, texts: Sequence[str], max_new_tokens: int, num_beams: int) -> dict[str, Any]:
    from lmzoo.tasks.seq2seq import generate_texts

    require(m, "text2text")
    _check_sources(m, texts, max_new_tokens)
    return {"outputs": generate_texts(m.model, m.tokenizer, list(texts), max_new_tokens=max_new_tokens,
                                      num_beams=num_beams)}


def reconstruct(m: ServedModel, texts: Sequence[str], max_new_tokens: int, num_beams: int) -> dict[str, Any]:
    from lmzoo.tasks.seq2seq import reconstruct_texts

    require(m, "reconstruct")
    _check_sources(m, texts, max_new_tokens)
    return {"outputs": reconstruct_texts(m.model, m.tokenizer, list(texts), max_new_tokens=max_new_tokens,
                                         num_beams=num_beams)}


# --- generation --------------------------------------------------------------------------------


@dataclass
class Generation:
    """A prepared generation: prompt ids, generate options, and how to read its text. ``prompt_ids``
    is what the new text continues (empty for an encoder-decoder, whose output is a fresh text)."""

    ids: list[int]
    prompt_ids: list[int]
    options: dict[str, Any]
    stop: list[str] = field(default_factory=list)
    stop_when: Callable[[str], bool] | None = None
    allowed_tokens: Callable | None = None
    finish: Callable[[str], str] = lambda text: text  # the new text → the answer's text


def encode_prompt(m: ServedModel, text: str, max_new_tokens: int) -> list[int]:
    """The generate verb's prompt ids; a prompt that leaves no room for ``max_new_tokens`` in the
    context is refused (a server does not silently shorten an answer)."""
    from lmzoo.inference import encode_prompt

    ids, _ = encode_prompt(m.model, m.tokenizer, text, 1)
    room = m.context if m.model.config.is_encoder_decoder else m.context - len(ids)
    if max_new_tokens > room:
        raise UserError(f"prompt of {len(ids)} tokens + max_tokens {max_new_tokens} exceed the model's context of "
                        f"{m.context} tokens (at most {room} new tokens)")
    return ids


def prepare_generate(m: ServedModel, prompt: str, max_new_tokens: int, options: dict[str, Any],
                     stop: Sequence[str] = ()) -> Generation:
    require(m, "generate")
    ids = encode_prompt(m, prompt, max_new_tokens)
    prompt_ids = [] if m.model.config.is_encoder_decoder else ids
    return Generation(ids, prompt_ids, {**options, "max_new_tokens": max_new_tokens}, list(stop),
                      finish=lambda text: truncate_at_stop(text, stop))


def prepare_chat(m: ServedModel, turns: Sequence[tuple[str, str]], bot: str, max_new_tokens: int,
                 options: dict[str, Any], system: str = "", stop: Sequence[str] = ()) -> Generation:
    """The chat verb's prompt: the turns in speaker-turn format, then the bot's name; the most recent
    tokens that fit the context with ``max_new_tokens``; what people typed is text, never a special
    token. The reply ends at the turn's end or at one of ``stop`` (not part of it)."""
    from lmzoo.objectives.clm import TURN_END, chat_turn

    require(m, "chat")
    budget = m.context - max_new_tokens
    if budget < 8:
        raise UserError(f"max_new_tokens {max_new_tokens} leaves no room for the conversation in the model's "
                        f"context of {m.context}")
    history = (" ".join(system.split()) + TURN_END if system.strip() else "")
    history += "".join(chat_turn(speaker, text) for speaker, text in turns)
    ids = m.tokenizer.encode(history + bot.strip().upper() + "\n", split_special_tokens=True)[-budget:]
    stops = [TURN_END, *stop]
    return Generation(ids, [], {**options, "max_new_tokens": max_new_tokens},
                      stops, finish=lambda text: " ".join(truncate_at_stop(text, stops).split()))


def prepare_complete(m: ServedModel, prefix: str, until: str, context: int | None, max_new_tokens: int,
                     options: dict[str, Any]) -> Generation:
    """The complete verb: token healing of the prefix's trailing whitespace, its end kept within the
    context, stopping at the end of the line / block being written."""
    from lmzoo.inference import prefix_ids
    from lmzoo.generate import code_block_end, heal_trailing_whitespace

    require(m, "complete")
    prompt, tail, allowed = heal_trailing_whitespace(prefix, m.tokenizer)
    ids = prefix_ids(m.model, m.tokenizer, prompt, max_new_tokens, context)
    cut = code_block_end(prefix, until)

    def completion(text: str) -> str | None:
        return text[len(tail):] if text.startswith(tail) else None  # None until the healed tail is written

    def done(text: str) -> bool:
        new = completion(text)
        return new is not None and cut(new) is not None

    def finish(text: str) -> str:
        text = completion(text) or ""
        end = cut(text)
        return (text[:end] if end is not None else text).rstrip("\n")

    return Generation(ids, [], {**options, "max_new_tokens": max_new_tokens}, stop_when=done,
                      allowed_tokens=allowed, finish=finish)


def run_generation(m: ServedModel, g: Generation, cancel: threading.Event | None = None,
                   on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a prepared generation (on the model's worker). ``on_text(delta)`` streams row 0's answer
    text as it grows; ``cancel`` set (the client went away) ends the generation at the next token:
    the loop asks ``stop_when`` after every token."""
    stops = [] if g.stop_when else g.stop  # a stop_when answer (complete) is only cut at the end
    writer = _DeltaWriter(on_text, stops) if on_text else None
    streamer = TextStreamer(m.tokenizer, file=writer, prompt_ids=g.prompt_ids) if writer else None

    def stop_when(text: str) -> bool:
        return (cancel is not None and cancel.is_set()) or (g.stop_when is not None and g.stop_when(text))

    watch = cancel is not None or g.stop_when is not None
    out = generate(m.model, torch.tensor([g.ids]), tokenizer=m.tokenizer, streamer=streamer,
                   stop_when=stop_when if watch else None, allowed_tokens=g.allowed_tokens,
                   stop_strings=tuple(g.stop) if not g.stop_when else (), **g.options)
    rows = out.tolist()
    m.count("tokens", sum(len(r) for r in rows))
    if cancel is not None and cancel.is_set():
        m.count("cancelled")
    eos = set(_eos_ids(m))
    choices = []
    for row in rows:
        n, stopped = _generated(m, g, row, eos)
        raw = _new_text(m, g, row)
        choices.append({"text": g.finish(raw), "token_ids": row[:n], "tokens": n,
                        "finish_reason": "stop" if stopped else "length"})
    if writer is not None:
        writer.close(choices[0]["text"])
    return {"choices": choices, "prompt_tokens": len(g.ids), "cancelled": bool(cancel is not None and cancel.is_set())}


def _eos_ids(m: ServedModel) -> list[int]:
    eos = m.model.config.eos_token_id
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


def _new_text(m: ServedModel, g: Generation, tokens: list[int]) -> str:
    return continuation_text(m.tokenizer, g.prompt_ids, tokens) if g.prompt_ids else m.tokenizer.decode(tokens)


def _generated(m: ServedModel, g: Generation, row: list[int], eos: set[int]) -> tuple[int, bool]:
    """(tokens the row generated, whether it stopped rather than ran out of ``max_new_tokens``). A row
    ends at its first eos, or at the token that completed a stop string (``stop_when``): what follows
    is the padding of a batch whose other rows ran longer (the pad id may be the eos id)."""
    n = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))

    def ended(k: int) -> bool:
        text = _new_text(m, g, row[:k])
        return g.stop_when(text) if g.stop_when is not None else any(s in text for s in g.stop)

    if (g.stop or g.stop_when is not None) and ended(n):
        lo = 1  # the first prefix that ends it: a stop string, once written, stays in the text
        while lo < n:
            mid = (lo + n) // 2
            lo, n = (lo, mid) if ended(mid) else (mid + 1, n)
        return n, True
    return n, n > 0 and row[n - 1] in eos


class _DeltaWriter:
    """The file a ``TextStreamer`` writes row 0's text to: passes on each new piece, holding back an end
    that may be the start of a stop string and nothing after a stop string."""

    def __init__(self, emit: Callable[[str], None], stops: Sequence[str]) -> None:
        self.emit, self.stops = emit, list(stops)
        self.text, self.sent, self.stopped = "", 0, False

    def write(self, piece: str) -> None:
        if self.stopped:
            return
        self.text += piece
        cut = truncate_at_stop(self.text, self.stops)
        self.stopped = len(cut) < len(self.text)
        end = len(cut) if self.stopped else len(cut) - self._held(cut)
        self._send(end)

    def flush(self) -> None:  # the streamer flushes after each write; nothing is buffered here
        pass

    def close(self, answer: str) -> None:
        """At the end: the rest of the answer not sent yet (a held-back end that was no stop string)."""
        if answer.startswith(self.text[:self.sent]) and len(answer) > self.sent:
            self.emit(answer[self.sent:])

    def _held(self, text: str) -> int:
        return max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def _send(self, end: int) -> None:
        if end > self.sent:
            self.emit(self.text[self.sent:end])
            self.sent = end
