"""OpenAI-compatible routes for the decoder-only LMs: ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions`` (``stream: true`` as server-sent events ending in ``data: [DONE]``), so the
official ``openai`` client works unchanged with ``base_url="http://127.0.0.1:8000/v1"``.

OpenAI's semantics: temperature 0 is greedy decoding (and then equals ``lmzoo generate`` token for
token), otherwise sampling with that temperature and ``top_p``; ``max_tokens`` plus the prompt must
fit in the model's context (else 400, as OpenAI); ``stop`` strings end a choice and are not part of it.
A chat is the chat verb's speaker-turn format: user turns spoken by the message's ``name`` (default
Romeo), the assistant's by its ``name`` (default Juliet), a system message as a first paragraph.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI

# full module names: `from lmzoo.serve import ...` would import the package, an import cycle
import lmzoo.serve.inference as inference
import lmzoo.serve.schemas as schemas
from lmzoo.errors import UserError
from lmzoo.serve.http import event_stream, lookup, stream_events
from lmzoo.serve.registry import ServedModel


def openai_options(r: schemas.OpenAIRequest) -> dict[str, Any]:
    """``generate`` options of an OpenAI request: temperature 0 is greedy, anything else samples."""
    if r.temperature == 0:
        if r.n > 1:
            raise UserError("n > 1 needs sampling: give a temperature > 0")
        return inference.sampling_options(None, None, None)
    return {"do_sample": True, "temperature": r.temperature, "top_k": 0, "top_p": r.top_p,
            "repetition_penalty": 1.0, "seed": r.seed, "num_return_sequences": r.n}


def causal(app: FastAPI, name: str) -> ServedModel:
    m = lookup(app, name)
    if not m.causal:
        raise UserError(f"model {name} is a {m.model.hf_architecture}: the OpenAI API serves decoder-only "
                        "causal LMs (use /api/* for its tools)")
    return m


def stops(r: schemas.OpenAIRequest) -> list[str]:
    found = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
    if len(found) > 4 or any(not s for s in found):
        raise UserError("stop: up to 4 non-empty strings")
    return found


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def add_openai_routes(app: FastAPI) -> None:
    @app.get("/v1/models", summary="OpenAI: the loaded models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "lmzoo"}
                                           for name in app.state.models]}

    @app.post("/v1/completions", summary="OpenAI: complete a prompt")
    async def completions(r: schemas.CompletionRequest) -> Any:
        m = causal(app, r.model)
        prompts = [r.prompt] if isinstance(r.prompt, str) else r.prompt
        if not prompts or any(not p for p in prompts):
            raise UserError("prompt must be a non-empty string or a list of them")
        if r.stream and (len(prompts) > 1 or r.n > 1):
            raise UserError("stream: one prompt and n 1")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": r.model}
        options, stop = openai_options(r), stops(r)
        gens = await m.run(lambda: [inference.prepare_generate(m, p, _max_tokens(m, p, r.max_tokens), options, stop)
                                    for p in prompts], request=False)
        echo = prompts[0] if r.echo else ""
        if r.stream:
            return event_stream(_completion_stream(m, gens[0], head, echo))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for prompt, g in zip(prompts, gens):
            result = await m.run(lambda g=g: inference.run_generation(m, g))
            prompt_tokens += result["prompt_tokens"]
            for c in result["choices"]:
                completion_tokens += c["tokens"]
                choices.append({"text": (prompt if r.echo else "") + c["text"], "index": len(choices),
                                "logprobs": None, "finish_reason": c["finish_reason"]})
        return {**head, "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}

    @app.post("/v1/chat/completions", summary="OpenAI: the assistant's next message")
    async def chat_completions(r: schemas.ChatCompletionRequest) -> Any:
        m = causal(app, r.model)
        g, bot = await m.run(lambda: _prepare_chat(m, r), request=False)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": r.model}
        if r.stream:
            if r.n > 1:
                raise UserError("stream: n 1")
            return event_stream(_chat_stream(m, g, {**head, "object": "chat.completion.chunk"}))
        result = await m.run(lambda: inference.run_generation(m, g))
        choices = [{"index": i, "message": {"role": "assistant", "content": c["text"], "name": bot},
                    "logprobs": None, "finish_reason": c["finish_reason"]} for i, c in enumerate(result["choices"])]
        return {**head, "choices": choices,
                "usage": usage(result["prompt_tokens"], sum(c["tokens"] for c in result["choices"]))}


def _max_tokens(m: ServedModel, prompt: str, asked: int | None) -> int:
    """``max_tokens``, or all the context has room for after the prompt."""
    if asked is not None:
        return asked
    return max(1, m.context - len(inference.encode_prompt(m, prompt, 1)))


def _prepare_chat(m: ServedModel, r: schemas.ChatCompletionRequest) -> tuple[inference.Generation, str]:
    """The messages as speaker turns (system messages: a first paragraph) → the prepared chat and the bot."""
    named = [msg.name for msg in r.messages if msg.role == "assistant" and msg.name]
    bot = named[-1] if named else inference.DEFAULT_BOT
    system = " ".join(msg.content for msg in r.messages if msg.role == "system")
    turns = [(msg.name or (bot if msg.role == "assistant" else inference.DEFAULT_USER), msg.content)
             for msg in r.messages if msg.role != "system"]
    if not turns:
        raise UserError("messages: at least one user or assistant message")
    max_new = r.max_completion_tokens or r.max_tokens or min(256, m.context // 2)
    return inference.prepare_chat(m, turns, bot, max_new, openai_options(r), system, stops(r)), bot


def _completion_stream(m: ServedModel, g: inference.Generation, head: dict, echo: str):
    def chunk(text: str, finish: str | None = None) -> dict:
        return {**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

    def last(result: dict) -> list:
        c = result["choices"][0]
        return [{**chunk("", c["finish_reason"]), "usage": usage(result["prompt_tokens"], c["tokens"])}, "[DONE]"]

    def job(emit, cancel):
        if echo:
            emit(echo)
        return inference.run_generation(m, g, cancel, emit)

    return stream_events(m, job, chunk, last)


def _chat_stream(m: ServedModel, g: inference.Generation, head: dict):
    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def job(emit, cancel):
        emit("")  # the first chunk names the role, as OpenAI's
        return inference.run_generation(m, g, cancel, emit)

    first = [True]

    def event(text: str) -> dict:
        if first[0]:
            first[0] = False
            return chunk({"role": "assistant", "content": text})
        return chunk({"content": text})

    def last(result: dict) -> list:
        c = result["choices"][0]
        return [{**chunk({}, c["finish_reason"]), "usage": usage(result["prompt_tokens"], c["tokens"])}, "[DONE]"]

    return stream_events(m, job, event, last)
