"""Request bodies: pydantic models, so a missing field, a wrong type or a negative number is refused
before any model runs, and the OpenAPI schema at ``/openapi.json`` documents every field.

lmzoo's own endpoints refuse unknown fields (a typo is an error, not a silent default); the
OpenAI-compatible ones ignore them, as clients send options this server does not implement.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT = 100_000  # characters of one text
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer
Text = Field(min_length=1, max_length=MAX_TEXT)
ListedText = Annotated[str, Field(max_length=MAX_TEXT)]  # an item of a list of texts
Seed = Field(None, ge=0, le=MAX_SEED)


class Request(BaseModel):
    """A request to one loaded model (``GET /api/models`` lists them)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="a loaded model's name")


class Sampling(Request):
    """Decoding options of the generate / chat / complete verbs: greedy unless temperature, top_k or
    top_p is given (then sampling, seeded by ``seed``, 0 by default, as the CLI)."""

    max_new_tokens: int = Field(50, ge=1)
    temperature: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int | None = Seed


class FillMaskRequest(Request):
    text: str = Text
    top_k: int = Field(5, ge=1, le=100)


class NspRequest(Request):
    first: str = Text
    second: str = Text


class GenerateRequest(Sampling):
    prompt: str = Text
    num_beams: int = Field(1, ge=1, le=16)
    num_return_sequences: int = Field(1, ge=1, le=16)
    length_penalty: float = 1.0
    stop: list[ListedText] = Field(default_factory=list, max_length=8)
    stream: bool = Field(False, description="server-sent events: {'text': delta} ..., then {'done': true}")


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speaker: str = Field(min_length=1, max_length=64)
    text: str = Field(max_length=100_000)


class ChatRequest(Sampling):
    """The conversation so far (the bot's earlier replies included); the reply is the bot's next turn."""

    max_new_tokens: int = Field(80, ge=1)
    turns: list[ChatTurn] = Field(min_length=1, max_length=1000)
    bot: str = Field("Juliet", min_length=1, max_length=64)


class CompleteRequest(Sampling):
    max_new_tokens: int = Field(128, ge=1)
    prefix: str = Text
    until: Literal["block", "line"] = "block"
    context: int | None = Field(None, ge=1)


class Text2TextRequest(Request):
    texts: list[ListedText] = Field(min_length=1, max_length=64)
    max_new_tokens: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1, le=16)


class PredictRequest(Request):
    """Texts to label (a pair model: ``text_pairs`` too, one per text; a tagger: words split by spaces)."""

    texts: list[ListedText] = Field(min_length=1, max_length=256)
    text_pairs: list[ListedText] | None = Field(None, max_length=256)


class ExplainRequest(Request):
    objective: str = Field(min_length=1, description="one of the model family's objectives")
    text: str = Text
    seed: int = Field(0, ge=0, le=MAX_SEED)


# --- OpenAI-compatible ------------------------------------------------------------------------


class OpenAIRequest(BaseModel):
    """Fields every OpenAI text endpoint shares; OpenAI's defaults (temperature 1 samples; 0 is greedy)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: Annotated[str, Field(max_length=MAX_TEXT)] | list[ListedText] | None = None
    seed: int | None = Seed
    stream: bool = False
    user: str | None = None


class CompletionRequest(OpenAIRequest):
    prompt: Annotated[str, Field(max_length=MAX_TEXT)] | Annotated[list[ListedText], Field(max_length=256)] = Field(
        description="one prompt, or a list of them (one choice each per n)")
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)
    name: str | None = Field(None, min_length=1, max_length=64, description="the speaker's name in the turn")


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1)
