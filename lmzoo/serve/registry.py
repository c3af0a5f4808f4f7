"""The models a server holds: each loaded once from the folder it was named by, with the tools its
capabilities offer and one worker thread that runs every request to it, one at a time.

A model's caches live in the state ``generate`` makes per call, so two calls on one model could only
clash through the model itself (its mode, a quantized kernel's buffers); one worker per model rules
that out and keeps the CPU / GPU busy with one request per model instead of thrashing between many.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from lmzoo.errors import UserError

T = TypeVar("T")

# The HTTP request being answered (set for every route by app.watch_client), so a queued job can see
# its client leave; None outside a request.
CLIENT: contextvars.ContextVar[Any] = contextvars.ContextVar("lmzoo_serve_client", default=None)
QUEUE_POLL_S = 0.1  # how often a queued request asks whether its client is still there


class ClientGone(Exception):
    """The client of a queued request disconnected: the request was dropped before it ran."""

# tool name → what the playground shows for it (the page asks /api/models which tools a model has)
TOOL_TITLES = {
    "fill-mask": "fill the masks",
    "nsp": "next sentence?",
    "generate": "generate",
    "chat": "chat",
    "complete": "complete code",
    "text2text": "text to text (translate, summarize)",
    "reconstruct": "reconstruct gaps",
    "predict": "classify / tag",
    "explain": "explain an objective",
}


@dataclass
class ServedModel:
    """One loaded model: its name, folder, model and tokenizer, the tools it offers, the saved task
    options of a fine-tuned classifier / tagger, and the worker that runs its requests."""

    name: str
    folder: str
    model: Any
    tokenizer: Any
    tools: list[str]
    objectives: list[str]
    task: dict[str, Any] = field(default_factory=dict)
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "cancelled": 0, "tokens": 0})
    _stats_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def context(self) -> int:
        """Positions the model can attend over (prompt + new tokens for a decoder-only model)."""
        return int(self.model.config.max_positions)

    @property
    def causal(self) -> bool:
        """A decoder-only LM: the OpenAI-compatible completions and chat serve these."""
        return "chat" in self.tools

    async def run(self, job: Callable[[], T], *, request: bool = True) -> T:
        """Run ``job`` on this model's worker (after the requests before it) and await its result.
        A request whose client leaves while it waits is dropped from the queue without running
        (:class:`ClientGone`). Everything that touches the model or its tokenizer runs here: a
        ``Tokenizer`` is not for concurrent threads (``encode`` sets an option of its backend around
        each call). ``request``: count it."""
        if request:
            self.count("requests")
        future = self.worker.submit(job)
        result = asyncio.wrap_future(future)
        client = CLIENT.get()
        # only before the response starts (here, in the handler) may the receive channel be read
        while client is not None and not future.running() and not future.done():
            await asyncio.wait({result}, timeout=QUEUE_POLL_S)
            if not future.done() and await client.is_disconnected() and future.cancel():
                if not request:  # dropped while preparing: the job that would have counted it never comes
                    self.count("requests")
                self.count("cancelled")
                raise ClientGone
        return await result

    def count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def describe(self) -> dict[str, Any]:
        """The JSON the page and ``/api/models`` show for this model."""
        config = self.model.config
        return {"name": self.name, "family": config.family, "architecture": self.model.hf_architecture,
                "context": self.context, "encoder_decoder": bool(config.is_encoder_decoder),
                "tools": [{"name": t, "title": TOOL_TITLES[t]} for t in self.tools],
                "objectives": self.objectives, "task": self.task.get("task"),
                "mask_token": mask_token(self.tokenizer), "quantized": bool(getattr(self.model, "quantized", False))}


def mask_token(tokenizer: Any) -> str | None:
    """The tokenizer's mask token, or T5's first sentinel, or None: what a gap is written as."""
    if tokenizer.mask_id is not None:
        return tokenizer.id_to_token(tokenizer.mask_id)
    return "<extra_id_0>" if tokenizer.token_to_id("<extra_id_0>") is not None else None


def tools_of(model: Any, tokenizer: Any) -> list[str]:
    """The inference tools ``model`` supports, decided by what it has (heads, the generation protocol,
    an encoder-decoder config, a tokenizer with gaps), never by its family's name."""
    from lmzoo.pipelines import _predicts_hidden_positions

    tools = []
    if getattr(model, "mlm_head", None) is not None or _predicts_hidden_positions(model):
        tools.append("fill-mask")
    if getattr(model, "nsp_head", None) is not None:
        tools.append("nsp")
    if hasattr(model, "prepare_generation"):
        tools.append("generate")
        if model.config.is_encoder_decoder:
            tools.append("text2text")
            if mask_token(tokenizer) is not None:
                tools.append("reconstruct")
        else:
            tools += ["chat", "complete"]
    if model.head_kind:
        tools.append("predict")
    tools.append("explain")  # every family pretrains with an objective: show it on the model's tokenizer
    return tools


def parse_spec(spec: str) -> tuple[str, str]:
    """``name=folder`` or ``folder`` (named after the folder) → (name, folder)."""
    name, sep, folder = spec.partition("=")
    if not sep:
        folder = spec
        name = Path(spec.rstrip("/")).name or spec
    if not name or not folder:
        raise UserError(f"model {spec!r}: write FOLDER or NAME=FOLDER")
    if not Path(folder).is_dir():
        raise UserError(f"model folder {folder} not found")
    return name, folder


def load_model(name: str, folder: str, quantize: str | None = None, compile: bool = False) -> ServedModel:
    """Load one folder with the CLI's own loaders: a fine-tuned head through ``load_task_model``, a
    generating model through the generate verb's loader (which quantizes, and with ``compile``
    compiles its decoding step), any other with the pipelines'."""
    from lmzoo.inference import load_lm
    from lmzoo.hf import read_config
    from lmzoo.models import ARCHITECTURES, family_spec
    from lmzoo.pipelines import load_model_and_tokenizer
    from lmzoo.quantize import quantize_int8
    from lmzoo.tasks.classification import load_task_model

    _, architecture = read_config(folder)
    cls = ARCHITECTURES.get(architecture or "")
    task: dict[str, Any] = {}
    if cls is not None and cls.head_kind:
        model, tokenizer, task = load_task_model(folder)
    elif cls is not None and hasattr(cls, "prepare_generation"):
        model, tokenizer = load_lm(folder, quantize=quantize, compile=compile)
    else:
        model, tokenizer = load_model_and_tokenizer(folder)
    if quantize == "int8":
        model = quantize_int8(model)  # a no-op for a model load_lm quantized already
    model.eval()
    objectives = list(family_spec(model.config.family).objectives)
    return ServedModel(name, folder, model, tokenizer, tools_of(model, tokenizer), objectives, task)


def load_models(specs: list[str], quantize: str | None = None, compile: bool = False) -> dict[str, ServedModel]:
    """Every model named (``folder`` or ``name=folder``), under distinct names."""
    if not specs:
        raise UserError("name at least one model folder to serve")
    models: dict[str, ServedModel] = {}
    for spec in specs:
        name, folder = parse_spec(spec)
        if name in models:
            raise UserError(f"two models named {name!r}: name them, e.g. {name}2={folder}")
        models[name] = load_model(name, folder, quantize, compile)
    return models
