"""Text generation for every lmzoo LM: greedy, sampling (temperature / top-k / top-p), repetition
penalty, several return sequences, beam search; end-of-text ids and stop strings; streaming.

The generation protocol (stable; GPT-2, T5, BART and XLNet implement it)
------------------------------------------------------------------------
A model that can generate has a ``config`` (a ``ModelConfig``) and two methods::

    state = model.prepare_generation(input_ids, attention_mask, max_new_tokens)
        # input_ids [B, S] (left-padded for decoder-only models, right-padded is fine for an
        # encoder), attention_mask [B, S] 1 = token / 0 = padding, or None. Allocates the caches
        # for S + max_new_tokens tokens; an encoder-decoder runs its encoder here, once.
    logits = model.generation_step(tokens, state)
        # tokens [B, t]: the new tokens (the prompt on the first call; then one token per call).
        # Returns [B, vocab] logits for the position after the last of them and updates the
        # caches in ``state`` (no other state anywhere).
    state.reorder(index)
        # index [B'] int64: row i of the new state is old row index[i] (beam search; B' may be
        # larger than B, which expands each prompt into its beams or samples).

``model.config.is_encoder_decoder`` decides what the first call gets: a decoder-only model
continues the prompt (``tokens = input_ids``); an encoder-decoder starts a fresh output from
``config.decoder_start_token_id`` ([B, 1]).

``generate`` returns only the NEW tokens, [B * num_return_sequences, n] with n <= max_new_tokens
(rows that stopped early are filled with the pad id), never the prompt or the decoder start.

Semantics follow Hugging Face ``generate`` (so greedy and beam outputs match token for token):
processors run in float32 in the order repetition penalty → temperature → top-k → top-p;
beam search is HF's vectorised beam search (length penalty on the generated length,
``early_stopping`` True / False / "never").
"""

from __future__ import annotations

import io
import math
import sys
import tokenize
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Sequence, TextIO

import torch
import torch.nn.functional as F

from lmzoo.errors import UserError


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """How to generate. ``do_sample=False`` with ``num_beams=1`` is greedy decoding."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0  # eos cannot end a sequence before this many new tokens (as HF)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages tokens already in the prompt/output
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0  # beam score = sum log p / generated_length ** length_penalty
    early_stopping: bool | str = False  # True, False or "never" (as HF)
    eos_token_id: int | tuple[int, ...] | None = None  # None = the model config's
    # the first / last new token forced to this id (HF's ForcedBOS / ForcedEOS); None = the model config's
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    pad_token_id: int | None = None  # None = the model config's, else the eos id, else 0
    stop_strings: tuple[str, ...] = ()  # stop a row once its new text contains one (needs a tokenizer)
    seed: int | None = None  # seeded sampling is reproducible

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise UserError(msg)

        if self.max_new_tokens <= 0:
            bad(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            bad(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        for name in ("temperature", "repetition_penalty", "length_penalty"):  # inf / nan would score nonsense
            if not math.isfinite(getattr(self, name)):
                bad(f"{name} must be a finite number, got {getattr(self, name)}")
        if not self.temperature > 0:
            bad(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            bad(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.num_beams < 1 or self.num_return_sequences < 1:
            bad("num_beams and num_return_sequences must be >= 1")
        if self.num_beams > 1 and self.do_sample:
            bad("beam search with sampling is not supported: use num_beams=1 or do_sample=False")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            bad(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams ({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            bad("num_return_sequences > 1 needs sampling (do_sample) or beam search (num_beams)")
        if self.early_stopping not in (True, False, "never"):
            bad(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if any(not s for s in self.stop_strings):
            bad("stop strings must be non-empty")
        if self.stop_strings and self.num_beams > 1:
            bad("stop strings work with greedy decoding and sampling, not beam search")


# --- logits processors (each: [N, V] float scores → [N, V]) -------------------------------------


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty: for tokens already seen (``seen`` [N, V] bool), divide positive scores by
    ``penalty`` and multiply negative ones by it."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def _force(scores: torch.Tensor, token: int) -> torch.Tensor:
    """Every score -inf but ``token``'s, which becomes 0 (log 1: a beam's sum is unchanged)."""
    forced = torch.full_like(scores, float("-inf"))
    forced[:, token] = 0.0
    return forced


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores (ties with the k-th kept too), the rest -inf."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most probable tokens whose probability reaches ``p``
    (at least one token), the rest -inf."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def process_scores(scores: torch.Tensor, config: GenerationConfig, seen: torch.Tensor | None,
                   step: int = 0, eos: Sequence[int] = ()) -> torch.Tensor:
    """The processors of ``config`` in HF's order; warpers (temperature, top-k/p) only when sampling.
    ``step``: new tokens generated so far; ``eos``: the ids held back while step < min_new_tokens."""
    if config.repetition_penalty != 1.0 and seen is not None:
        scores = repetition_penalty(scores, seen, config.repetition_penalty)
    if step < config.min_new_tokens and eos:
        scores = scores.index_fill(-1, torch.tensor(list(eos), device=scores.device), float("-inf"))
    if step == 0 and config.forced_bos_token_id is not None:
        scores = _force(scores, config.forced_bos_token_id)
    if step == config.max_new_tokens - 1 and config.forced_eos_token_id is not None:
        scores = _force(scores, config.forced_eos_token_id)
    if config.do_sample:
        if config.temperature != 1.0:
            scores = scores / config.temperature
        if config.top_k > 0:
            scores = top_k_filter(scores, config.top_k)
        if config.top_p < 1.0:
            scores = top_p_filter(scores, config.top_p)
    return scores


# --- streaming ----------------------------------------------------------------------------------


PROMPT_CONTEXT = 8  # prompt tokens decoded with the new ones: enough for a space or a split UTF-8 character


def continuation_text(tokenizer: Any, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text ``new_ids`` add after ``prompt_ids``: decode (the prompt's tail + new) and keep what
    follows the tail's own text. Decoding the new tokens alone loses the space before the first of
    them with Unigram / Metaspace ("▁enter" alone decodes to "enter": "Enter king" + "enter" would
    glue into "Enter kingenter"), and byte-level BPE may finish a character the prompt began."""
    tail = [int(i) for i in prompt_ids[-PROMPT_CONTEXT:]] if len(prompt_ids) else []
    new = [int(i) for i in new_ids]
    if not tail:
        return tokenizer.decode(new)
    head, full = tokenizer.decode(tail), tokenizer.decode(tail + new)
    if full.startswith(head):
        return full[len(head):]
    return tokenizer.decode(new)  # the new tokens rewrote the prompt's text (rare): show them alone


class TextStreamer:
    """Prints the text of row 0 as tokens arrive (call it with each step's new tokens [N]).

    Decodes everything so far and prints the new part, holding back a trailing incomplete
    UTF-8 character, so byte-level BPE pieces come out as whole characters. With ``prompt_ids``
    (a decoder-only model's prompt, printed by the caller) the text is what follows the prompt,
    its leading space included (:func:`continuation_text`).
    """

    def __init__(self, tokenizer: Any, file: TextIO | None = None, skip_ids: Sequence[int] = (),
                 prompt_ids: Sequence[int] = ()) -> None:
        self.tokenizer, self.file = tokenizer, file
        self.skip = set(skip_ids)
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, tokens: torch.Tensor) -> None:
        token = int(tokens[0])
        if token in self.skip:
            return
        self.ids.append(token)
        text = self.text
        if text.endswith("\ufffd"):
            return
        file = self.file or sys.stdout  # looked up now: stdout may have been replaced since
        file.write(text[self.printed:])
        file.flush()
        self.printed = len(text)

    @property
    def text(self) -> str:
        return continuation_text(self.tokenizer, self.prompt_ids, self.ids)


# --- helpers ------------------------------------------------------------------------------------


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists of different lengths → (input_ids, attention_mask) [B, S], left-padded."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` cut before the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


def _eos_ids(config: GenerationConfig, model_config: Any) -> list[int]:
    eos = config.eos_token_id if config.eos_token_id is not None else model_config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (tuple, list)) else (eos,))]


def _pad_id(config: GenerationConfig, model_config: Any, eos: list[int]) -> int:
    if config.pad_token_id is not None:
        return config.pad_token_id
    if model_config.pad_token_id is not None:
        return model_config.pad_token_id
    return eos[0] if eos else 0


class _TextStop:
    """Marks rows whose new text contains a stop string (decoding only a short tail per step) or
    satisfies ``stop_when(new_text)`` (decoding all of the row's new tokens)."""

    def __init__(self, stop_strings: Sequence[str], stop_when: Callable[[str], bool] | None, tokenizer: Any) -> None:
        if tokenizer is None:
            raise UserError("stop strings need a tokenizer to decode the generated tokens")
        self.stops, self.stop_when, self.tokenizer = list(stop_strings), stop_when, tokenizer
        self.tail = max((len(s) for s in self.stops), default=0) + 2  # every token decodes to >= 1 character

    def __call__(self, out: torch.Tensor, step: int, done: torch.Tensor) -> torch.Tensor:
        hit = torch.zeros_like(done)
        for row in (~done).nonzero().flatten().tolist():
            if self.stops:
                text = self.tokenizer.decode(out[row, max(0, step + 1 - self.tail): step + 1].tolist())
                hit[row] = any(s in text for s in self.stops)
            if self.stop_when is not None and not hit[row]:
                hit[row] = bool(self.stop_when(self.tokenizer.decode(out[row, :step + 1].tolist())))
        return hit


def heal_trailing_whitespace(prefix: str, tokenizer: Any
                             ) -> tuple[str, str, Callable[[int, list[int]], list[int] | None] | None]:
    """Token healing for a prefix ending in whitespace (a file's final newline, an indentation).

    Byte-level BPE learns a newline together with the next line's indentation as one token, so a
    prompt ending in a bare newline token is one the model never saw. Returns (prompt, tail,
    allowed_tokens): the prompt without the trailing whitespace ``tail``, and an ``allowed_tokens``
    constraint for ``generate`` under which the new text must first reproduce ``tail`` (a token may
    run past it, e.g. newline + indentation + code). Nothing to heal, or a vocabulary whose tokens
    cannot write ``tail`` (WordPiece and Unigram normalize whitespace away): (prefix, "", None).
    """
    tail = prefix[len(prefix.rstrip()):]
    if not tail or not prefix.strip():
        return prefix, "", None
    pieces = _pieces(tokenizer)
    if not _can_write(tail, {piece for piece in pieces if piece}):
        return prefix, "", None

    def allowed(row: int, new_tokens: list[int]) -> list[int] | None:
        text = tokenizer.decode(new_tokens)
        if len(text) >= len(tail):
            return None
        return [i for i, piece in enumerate(pieces)
                if piece and ((text + piece).startswith(tail) or tail.startswith(text + piece))]

    return prefix[:len(prefix) - len(tail)], tail, allowed


def _pieces(tokenizer: Any) -> list[str]:
    """The text of every token id, alone."""
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]


def can_write(tokenizer: Any, text: str) -> bool:
    """Whether generated tokens can spell ``text`` (WordPiece and Unigram cannot write a newline)."""
    return _can_write(text, {piece for piece in _pieces(tokenizer) if piece})


def _can_write(tail: str, pieces: set[str]) -> bool:
    """Whether some sequence of ``pieces`` starts with exactly ``tail`` (the last one may run past it)."""
    reachable, frontier = {0}, [0]
    while frontier:
        start = frontier.pop()
        rest = tail[start:]
        for piece in pieces:
            if piece.startswith(rest):
                return True
            if rest.startswith(piece) and start + len(piece) not in reachable:
                reachable.add(start + len(piece))
                frontier.append(start + len(piece))
    return False


def _opens_block(line: str) -> bool:
    """Whether a code line ends with ":" before any trailing comment (``def f(x):  # note`` does;
    a "#" inside a string is text). A line Python's tokenizer cannot read is judged by its text."""
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT)
    try:
        tokens = [t.string for t in tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline)
                  if t.type not in skip]
    except (tokenize.TokenError, SyntaxError):
        return line.split("#", 1)[0].rstrip().endswith(":")
    return bool(tokens) and tokens[-1] == ":"


def code_block_end(prefix: str, until: str = "block") -> Callable[[str], int | None]:
    """Where a code completion of ``prefix`` should stop: a function of the new text returning the
    index to cut it at, or None while it should go on.

    ``until="line"``: the end of the line being written. ``"block"``: the first line (after the
    current one) indented less than the block being written, i.e. less than the prefix's last
    non-blank line, or at most as much when that line opens a block (ends with ":"); at the top
    level that is the end of the line.
    """
    if until not in ("line", "block"):
        raise UserError(f"until must be 'line' or 'block', got {until!r}")
    current = prefix.rsplit("\n", 1)[-1]  # the (partial) line the completion continues
    lines = [line for line in prefix.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    indent = len(last) - len(last.lstrip())
    limit = indent + 1 if _opens_block(last) else indent
    line_mode = until == "line" or limit == 0

    def cut(new: str) -> int | None:
        started = len(current.strip()) > 0  # the current line has code (else its first line counts)
        for i, ch in enumerate(new):
            if ch != "\n":
                started = started or not ch.isspace()
                continue
            if line_mode:
                if started:
                    return i
                continue
            line = new[i + 1:].split("\n", 1)[0]
            # a line is judged once it has code in it: indented less than the block → the block ended
            if started and line.strip() and len(line) - len(line.lstrip()) < limit:
                return i
        return None

    return cut


# --- generate -----------------------------------------------------------------------------------


def compile_decoding(model: Any) -> Any:
    """``torch.compile`` the model's decoding step, in place; returns the model. ``generate`` then runs
    the compiled step and gives the same tokens. Shapes are dynamic (the caches grow by one key a
    step), so the prompt and the steps compile once each, not once per length; the first call pays
    the compile time."""
    model.generation_step = torch.compile(model.generation_step, dynamic=True)
    return model


@torch.no_grad()
def generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    streamer: Callable[[torch.Tensor], None] | None = None,
    tokenizer: Any = None,
    stop_when: Callable[[str], bool] | None = None,
    generator: torch.Generator | None = None,
    allowed_tokens: Callable[[int, list[int]], Sequence[int] | None] | None = None,
    **options: Any,
) -> torch.Tensor:
    """New tokens [B * num_return_sequences, <= max_new_tokens] after each prompt.

    ``options`` are ``GenerationConfig`` fields (``max_new_tokens=64, do_sample=True, top_p=0.9``
    ...) or ``config=GenerationConfig(...)``. ``streamer(tokens [N])`` is called with each step's
    new tokens (greedy / sampling). ``tokenizer`` decodes for ``stop_strings`` and ``stop_when``
    (a row stops once ``stop_when(its new text)`` is true; greedy / sampling only). ``generator``
    overrides ``seed`` as the source of sampling randomness. ``allowed_tokens(row, its new tokens)``
    constrains the next token of a row to the ids it returns (None: no constraint; greedy / sampling
    only), like HF's ``prefix_allowed_tokens_fn``.
    """
    config = options.pop("config", None) or GenerationConfig()
    known = {f.name for f in fields(GenerationConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown generation option(s): {', '.join(unknown)}")
    if options:
        if "stop_strings" in options:
            options["stop_strings"] = tuple(options["stop_strings"] or ())
        if isinstance(options.get("eos_token_id"), list):
            options["eos_token_id"] = tuple(options["eos_token_id"])
        config = GenerationConfig(**{**{f: getattr(config, f) for f in known}, **options})
    if not hasattr(model, "prepare_generation") or not hasattr(model, "generation_step"):
        raise UserError(f"{type(model).__name__} cannot generate (it has no LM head / generation protocol)")
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise UserError("empty prompt: generation needs at least one token")
    if (stop_when is not None or allowed_tokens is not None) and config.num_beams > 1:
        raise UserError("stop_when / allowed_tokens work with greedy decoding and sampling, not beam search")
    stop = _TextStop(config.stop_strings, stop_when, tokenizer) if config.stop_strings or stop_when else None
    model_config = model.config
    forced = ("forced_bos_token_id", "forced_eos_token_id")
    config = replace(config, **{name: getattr(model_config, name, None) for name in forced
                                if getattr(config, name) is None})
    eos = _eos_ids(config, model_config)
    pad = _pad_id(config, model_config, eos)
    device = input_ids.device
    batch = input_ids.shape[0]

    state = model.prepare_generation(input_ids, attention_mask, config.max_new_tokens)
    if model_config.is_encoder_decoder:
        start = model_config.decoder_start_token_id
        if start is None:
            raise UserError("the model config has no decoder_start_token_id")
        first = torch.full((batch, 1), start, dtype=torch.long, device=device)
        prompt_tokens = first
    else:
        first = input_ids
        prompt_tokens = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -1)
    logits = model.generation_step(first, state)  # [B, V]: the prompt is processed once per prompt

    copies = config.num_beams if config.num_beams > 1 else config.num_return_sequences
    if copies > 1:  # each prompt → its beams / samples
        index = torch.arange(batch, device=device).repeat_interleave(copies)
        state.reorder(index)
        logits = logits.index_select(0, index)
        prompt_tokens = prompt_tokens.index_select(0, index)
    seen = None
    if config.repetition_penalty != 1.0:
        # tokens seen so far: the prompt (decoder-only) or the decoder start (encoder-decoder), as HF;
        # left padding (-1 here) is not a seen token
        counts = torch.zeros(logits.shape, dtype=torch.long, device=device)
        seen = counts.scatter_add_(1, prompt_tokens.clamp(min=0), (prompt_tokens >= 0).long()) > 0
    if config.num_beams > 1:
        return _beam_search(model, state, logits, config, batch, eos, pad, seen)
    if generator is None and config.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed if config.seed is not None else int(torch.randint(2**62, ()).item()))
    return _sample(model, state, logits, config, eos, pad, seen, generator, streamer, stop, allowed_tokens)


def _length_norm(length: int, length_penalty: float) -> float:
    """``length ** length_penalty``, inf rather than OverflowError when a large penalty overflows."""
    return float(torch.tensor(float(length), dtype=torch.float64) ** length_penalty)


def _constrain(scores: torch.Tensor, allowed_tokens: Callable, new_tokens: torch.Tensor) -> torch.Tensor:
    """Scores of tokens a row's ``allowed_tokens`` does not list set to -inf."""
    for row in range(scores.shape[0]):
        allowed = allowed_tokens(row, new_tokens[row].tolist())
        if allowed is not None:
            keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
            keep[torch.as_tensor(list(allowed), dtype=torch.long, device=scores.device)] = True
            scores[row] = scores[row].masked_fill(~keep, float("-inf"))
    return scores


def _sample(model, state, logits, config, eos, pad, seen, generator, streamer, stop, allowed_tokens=None
            ) -> torch.Tensor:
    """Greedy (argmax) or sampling, one token per step, all rows in lockstep."""
    rows, device = logits.shape[0], logits.device
    out = torch.full((rows, config.max_new_tokens), pad, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    step = 0
    for step in range(config.max_new_tokens):
        if step > 0:
            logits = model.generation_step(out[:, step - 1:step], state)
        scores = process_scores(logits.float(), config, seen, step, eos)
        if allowed_tokens is not None:
            scores = _constrain(scores, allowed_tokens, out[:, :step])
        if config.do_sample:
            tokens = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            tokens = scores.argmax(-1)
        tokens = tokens.masked_fill(done, pad)  # finished rows are fed padding, as HF
        out[:, step] = tokens
        if seen is not None:
            seen[torch.arange(rows, device=device), tokens] = True
        if streamer is not None:
            streamer(tokens)
        if eos:
            done |= torch.isin(tokens, eos_t)
        if stop is not None:
            done |= stop(out, step, done)
        if bool(done.all()):
            break
    return out[:, :step + 1]


def _beam_search(model, state, logits, config, batch, eos, pad, seen) -> torch.Tensor:
    """HF's vectorised beam search: per prompt, keep ``num_beams`` running hypotheses and the
    ``num_beams`` best finished ones; a hypothesis finishes on eos or at max_new_tokens."""
    beams, max_new = config.num_beams, config.max_new_tokens
    device, vocab = logits.device, logits.shape[-1]
    keep = max(2, 1 + len(eos)) * beams  # candidates per step, so `beams` unfinished ones remain
    top_beams = torch.arange(keep, device=device) < beams
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    offsets = torch.arange(batch, device=device)[:, None] * beams
    neg = -1.0e9

    running = torch.full((batch, beams, max_new), pad, dtype=torch.long, device=device)
    finished = running.clone()
    finished_len = torch.zeros(batch, beams, dtype=torch.long, device=device)
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = neg  # only the first beam's continuations count at the first step
    finished_scores = torch.full((batch, beams), neg, device=device)
    is_finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    can_improve = torch.ones(batch, 1, dtype=torch.bool, device=device)

    for cur in range(max_new):
        if cur > 0:
            logits = model.generation_step(running[:, :, cur - 1].reshape(-1, 1), state)
        log_probs = process_scores(F.log_softmax(logits.float(), -1), config, seen, cur, eos)
        totals = (log_probs.view(batch, beams, vocab) + running_scores[..., None]).view(batch, beams * vocab)
        cand_scores, cand_index = torch.topk(totals, keep)  # (B, keep), best first
        cand_beam, cand_token = cand_index // vocab, cand_index % vocab
        cand_seqs = running.gather(1, cand_beam[..., None].expand(-1, -1, max_new)).clone()
        cand_seqs[:, :, cur] = cand_token
        hits = torch.isin(cand_token, eos_t) if eos else torch.zeros_like(cand_token, dtype=torch.bool)
        if cur + 1 >= max_new:
            hits = torch.ones_like(hits)

        # the best `beams` candidates that did not finish keep running
        live_scores = cand_scores + hits.float() * neg
        pick = torch.topk(live_scores, beams).indices
        running = cand_seqs.gather(1, pick[..., None].expand(-1, -1, max_new))
        running_scores = live_scores.gather(1, pick)
        source_beam = cand_beam.gather(1, pick)

        # candidates among the top `beams` that finished compete with the finished hypotheses
        just_finished = hits & top_beams[None]
        scored = cand_scores / _length_norm(cur + 1, config.length_penalty)
        full = is_finished.all(-1, keepdim=True) & (config.early_stopping is True)
        scored = scored + full.float() * neg + (~can_improve).float() * neg + (~just_finished).float() * neg
        merged_scores = torch.cat([finished_scores, scored], 1)
        best = torch.topk(merged_scores, beams).indices
        finished = torch.cat([finished, cand_seqs], 1).gather(1, best[..., None].expand(-1, -1, max_new))
        finished_scores = merged_scores.gather(1, best)
        finished_len = torch.cat([finished_len, torch.full_like(cand_token, cur + 1)], 1).gather(1, best)
        is_finished = torch.cat([is_finished, just_finished], 1).gather(1, best)

        if seen is not None:
            seen = seen.index_select(0, (source_beam + offsets).flatten())
            seen[torch.arange(batch * beams, device=device), running[:, :, cur].flatten()] = True
        # stop when no running beam can beat the worst finished one (HF's heuristic)
        if config.early_stopping == "never" and config.length_penalty > 0.0:
            best_length = max_new
        else:
            best_length = cur + 1
        best_running = running_scores[:, :1] / _length_norm(best_length, config.length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(1, keepdim=True).values,
                                     torch.full_like(finished_scores, neg))
        can_improve = can_improve & (best_running > worst_finished).any(-1, keepdim=True)
        all_done = bool(is_finished.all()) and config.early_stopping is True
        if not bool(can_improve.any()) or all_done or bool(hits.all()):
            break
        state.reorder((source_beam + offsets).flatten())

    n = config.num_return_sequences
    out = finished[:, :n].reshape(batch * n, max_new)
    return out[:, :int(finished_len[:, :n].max())]
