"""The FastAPI application: lmzoo's JSON endpoints (one per inference verb), the OpenAI-compatible
``/v1`` routes (``openai_api``), ``/health``, ``/openapi.json`` and the playground page at ``/``.

Every error a client can cause is a 4xx JSON body ``{"error": {"message": ..., "type": ..., "param": ...}}``
(OpenAI's shape, so its client shows the message), with one line naming the problem; the server
keeps serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

# full module names: `from lmzoo.serve import ...` would import the package, an import cycle
import lmzoo.serve.inference as inference
import lmzoo.serve.schemas as schemas
from lmzoo.errors import UserError
from lmzoo.serve.http import NotFound, error_response, event_stream, lookup, stream_events, validation_message
from lmzoo.serve.openai_api import add_openai_routes
from lmzoo.serve.registry import CLIENT, ClientGone, ServedModel

STATIC = Path(__file__).parent / "static"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers a body it cannot decode (e.g. not UTF-8) with 400 "error parsing the body"
        message = "the request body is not valid UTF-8 JSON" if "parsing the body" in str(exc.detail) else exc.detail
        return error_response(exc.status_code, str(message), "not_found_error" if exc.status_code == 404 else
                              "invalid_request_error")

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, exc: ClientGone) -> JSONResponse:
        # nobody reads it: the status says so in the access log (nginx's "client closed request")
        return error_response(499, "the client went away before the request ran", "cancelled")

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, str(exc), "not_found_error", "model")

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        # a bug, not the client's fault; the server keeps serving
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


async def watch_client(request: Request) -> None:
    """Every route's dependency: the request in :data:`CLIENT`, so a queued job sees its client leave."""
    CLIENT.set(request)


def create_app(models: dict[str, ServedModel]) -> FastAPI:
    """The application serving ``models`` (see :func:`lmzoo.serve.registry.load_models`)."""
    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema itself is served
    app = FastAPI(title="lmzoo serve", version="1", docs_url=None, redoc_url=None, dependencies=[Depends(watch_client)],
                  description="lmzoo's inference verbs over HTTP, an OpenAI-compatible API and a playground page.")
    app.state.models = models
    install_error_handlers(app)
    add_info_routes(app)
    add_encoder_routes(app)
    add_generation_routes(app)
    add_openai_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def add_info_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health", summary="readiness: ok once every model is loaded; per-model request counts")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": {name: dict(m.stats) for name, m in app.state.models.items()}}

    @app.get("/api/models", summary="the loaded models, their tools and objectives")
    async def list_models() -> dict[str, Any]:
        return {"models": [m.describe() for m in app.state.models.values()]}


def add_encoder_routes(app: FastAPI) -> None:
    @app.post("/api/fill-mask", summary="lmzoo fill-mask: top-k tokens for each [MASK] / <mask>")
    async def fill_mask(r: schemas.FillMaskRequest) -> dict[str, Any]:
        m = lookup(app, r.model)
        return await m.run(lambda: inference.fill_mask(m, r.text, r.top_k))

    @app.post("/api/nsp", summary="lmzoo nsp: P(second follows first)")
    async def nsp(r: schemas.NspRequest) -> dict[str, Any]:
        m = lookup(app, r.model)
        return await m.run(lambda: inference.nsp(m, r.first, r.second))

    @app.post("/api/predict", summary="lmzoo predict: labels of a classifier, tags and entities of a tagger")
    async def predict(r: schemas.PredictRequest) -> dict[str, Any]:
        m = lookup(app, r.model)
        return await m.run(lambda: inference.predict(m, r.texts, r.text_pairs))

    @app.post("/api/explain", summary="lmzoo explain: what one of the model's objectives does to a text")
    async def explain(r: schemas.ExplainRequest) -> dict[str, Any]:
        m = lookup(app, r.model)
        return await m.run(lambda: inference.explain(m, r.objective, r.text, r.seed))

    @app.post("/api/text2text", summary="lmzoo text2text: an output text per input (T5 / BART)")
    async def text2text(r: schemas.Text2TextRequest) -> dict[str, Any]:
        m = lookup(app, r.model)
        return await m.run(lambda: inference.text2text(m, r.texts, r.max_new_tokens, r.num_beams))

    @app.post("/api/reconstruct", summary="lmzoo reconstruct: fill the <mask> / <extra_id_N> gaps")
    async def reconstruct(r: schemas.Text2TextRequest) -> dict[str, Any]:
        m = lookup(app, r.model)
        return await m.run(lambda: inference.reconstruct(m, r.texts, r.max_new_tokens, r.num_beams))


def _sampling(r: schemas.Sampling) -> dict[str, Any]:
    return inference.sampling_options(r.temperature, r.top_k, r.top_p, r.repetition_penalty, r.seed)


def add_generation_routes(app: FastAPI) -> None:
    @app.post("/api/generate", summary="lmzoo generate: continue a prompt (stream: server-sent events)")
    async def generate(r: schemas.GenerateRequest) -> Any:
        m = lookup(app, r.model)
        options = {**_sampling(r), "num_beams": r.num_beams, "num_return_sequences": r.num_return_sequences,
                   "length_penalty": r.length_penalty}
        prefix = "" if m.model.config.is_encoder_decoder else r.prompt

        def prepare() -> inference.Generation:
            return inference.prepare_generate(m, r.prompt, r.max_new_tokens, options, r.stop)

        if not r.stream:
            result = await m.run(lambda: inference.run_generation(m, prepare()))
            return {"texts": [prefix + c["text"] for c in result["choices"]], "choices": result["choices"]}
        if r.num_beams > 1 or r.num_return_sequences > 1:
            raise UserError("stream needs num_beams 1 and num_return_sequences 1")
        g = await m.run(prepare, request=False)  # a bad request is a 4xx here, before the stream begins
        return event_stream(stream_events(
            m, lambda emit, cancel: inference.run_generation(m, g, cancel, emit), lambda d: {"text": d},
            lambda res: [{"done": True, "finish_reason": res["choices"][0]["finish_reason"],
                          "tokens": res["choices"][0]["tokens"]}]))

    @app.post("/api/chat", summary="lmzoo chat: the bot's next turn in a speaker-turn conversation")
    async def chat(r: schemas.ChatRequest) -> dict[str, Any]:
        m = lookup(app, r.model)
        turns = [(t.speaker, t.text) for t in r.turns]
        result = await m.run(lambda: inference.run_generation(
            m, inference.prepare_chat(m, turns, r.bot, r.max_new_tokens, _sampling(r))))
        return {"speaker": r.bot.strip().upper(), "reply": result["choices"][0]["text"]}

    @app.post("/api/complete", summary="lmzoo complete: finish the line / block of a code prefix")
    async def complete(r: schemas.CompleteRequest) -> dict[str, Any]:
        m = lookup(app, r.model)
        result = await m.run(lambda: inference.run_generation(
            m, inference.prepare_complete(m, r.prefix, r.until, r.context, r.max_new_tokens, _sampling(r))))
        return {"completion": result["choices"][0]["text"]}
