"""`lmzoo serve` end to end: a real server process on a free loopback port serving tiny models,
spoken to by the official `openai` client and httpx; every answer equal to the CLI's / the Python
API's, 32 concurrent requests, a stream the client abandons, and each kind of bad request."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from conftest import WORDS, corpus, tiny_folder  # noqa: E402
from lmzoo.cli import main  # noqa: E402

GPT_CONTEXT = 256


def build_models(root: Path) -> dict[str, Path]:
    """gpt (causal LM), bert (MLM + NSP), t5 (span, sentinels), bart (denoising, <mask>), cls (a classifier)."""
    text = corpus(root / "corpus.txt")
    folders = {
        "gpt": tiny_folder(root / "gpt", text, "gpt-tiny", scale=1.0, kind="unigram", max_positions=GPT_CONTEXT),
        "bert": tiny_folder(root / "bert", text, "bert-tiny"),
        "t5": tiny_folder(root / "t5", text, "t5-tiny", extra_ids=10),
        "bart": tiny_folder(root / "bart", text, "bart-tiny"),
        "cls": tiny_folder(root / "cls", text, "bert-tiny", architecture="BertForSequenceClassification",
                           id2label={0: "neg", 1: "pos"}, problem_type="single_label_classification"),
    }
    (folders["cls"] / "lmzoo_task.json").write_text(json.dumps({"task": "classify"}))
    return folders


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m lmzoo.serve`` in a subprocess on a free loopback port, until ``stop()``."""

    def __init__(self, folders: dict[str, Path], *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        specs = [f"{name}={folder}" for name, folder in folders.items()]
        self.log = open(Path(next(iter(folders.values()))).parent / f"server-{self.port}.log", "w+")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "lmzoo.serve", *specs, "--port", str(self.port),
                                         "--log-level", "warning", *extra], stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"server not ready: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folders = build_models(tmp_path_factory.mktemp("serve"))
    server = Server(folders)
    yield server, folders
    server.stop()


def client(server: Server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def post(server: Server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def cli(capsys, *argv, stdin: str | None = None, monkeypatch=None) -> str:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


# --- the OpenAI client -------------------------------------------------------------------------


def test_openai_completion_equals_lmzoo_generate_token_for_token(served, capsys):
    server, folders = served
    api = client(server)
    assert [m.id for m in api.models.list().data] == list(folders)
    for prompt in ("the king", "war and peace of the land"):
        done = api.completions.create(model="gpt", prompt=prompt, max_tokens=24, temperature=0)
        assert cli(capsys, "generate", folders["gpt"], prompt, "--max-new-tokens", 24) == \
            prompt + done.choices[0].text + "\n"
        assert done.usage.completion_tokens == 24 and done.choices[0].finish_reason == "length"
        streamed = api.completions.create(model="gpt", prompt=prompt, max_tokens=24, temperature=0, stream=True)
        assert "".join(chunk.choices[0].text for chunk in streamed) == done.choices[0].text
    # the tokens themselves: the JSON endpoint returns them, equal to the library's generate
    from lmzoo.generate import generate
    from lmzoo.pipelines import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(folders["gpt"])
    ids = generate(model.eval(), torch.tensor([tokenizer.encode("the king")]), max_new_tokens=24)[0].tolist()
    answer = post(server, "/api/generate", {"model": "gpt", "prompt": "the king", "max_new_tokens": 24}).json()
    assert answer["choices"][0]["token_ids"] == ids
    assert len(set(ids)) > 3  # a random LM that does not just repeat one token: the comparison means something


def test_openai_chat_equals_lmzoo_chat(served, capsys, monkeypatch):
    server, folders = served
    api = client(server)
    reply = api.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "the king speaks"}],
                                        max_tokens=12, temperature=0)
    line = cli(capsys, "chat", folders["gpt"], "--max-new-tokens", 12, stdin="the king speaks\n",
               monkeypatch=monkeypatch)
    assert line == f"JULIET: {reply.choices[0].message.content}\n"
    streamed = api.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "the king speaks"}],
                                           max_tokens=12, temperature=0, stream=True)
    chunks = list(streamed)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert " ".join(text.split()) == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_openai_sampling_is_seeded_and_n_choices(served):
    api = client(served[0])
    a = api.completions.create(model="gpt", prompt="the queen", max_tokens=8, temperature=0.9, seed=3, n=2)
    b = api.completions.create(model="gpt", prompt="the queen", max_tokens=8, temperature=0.9, seed=3, n=2)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and len(a.choices) == 2


# --- every JSON endpoint equals the Python API / the CLI ------------------------------------------


def test_json_endpoints_equal_the_python_api(served, capsys, monkeypatch):
    from lmzoo.explain import explain
    from lmzoo.pipelines import fill_mask, load_model_and_tokenizer, next_sentence_probability
    from lmzoo.tasks.classification import TaskOptions, load_task_model, predict_examples
    from lmzoo.tasks.data import TextExample
    from lmzoo.tasks.seq2seq import generate_texts, reconstruct_texts

    server, folders = served
    bert, bert_tok = load_model_and_tokenizer(folders["bert"])
    got = post(server, "/api/fill-mask", {"model": "bert", "text": "the king [MASK] queen", "top_k": 3}).json()
    want = [[asdict(p) for p in blank] for blank in fill_mask(bert.eval(), bert_tok, "the king [MASK] queen", top_k=3)]
    assert [[p["token"] for p in b] for b in got["masks"]] == [[p["token"] for p in b] for b in want]
    assert got["masks"][0][0]["probability"] == pytest.approx(want[0][0]["probability"], rel=1e-5)
    got = post(server, "/api/nsp", {"model": "bert", "first": "the king", "second": "the queen"}).json()
    assert got["probability"] == pytest.approx(next_sentence_probability(bert, bert_tok, "the king", "the queen"))

    for name, fn, route in (("t5", generate_texts, "text2text"), ("t5", reconstruct_texts, "reconstruct"),
                            ("bart", reconstruct_texts, "reconstruct")):
        model, tok = load_model_and_tokenizer(folders[name])
        texts = ["the king <mask> the queen", "war <mask> peace"]
        got = post(server, f"/api/{route}", {"model": name, "texts": texts, "max_new_tokens": 6}).json()
        assert got["outputs"] == fn(model.eval(), tok, texts, max_new_tokens=6), (name, route)

    model, tok, saved = load_task_model(folders["cls"])
    got = post(server, "/api/predict", {"model": "cls", "texts": ["the king", "a knight"]}).json()
    assert got["predictions"] == predict_examples(model, tok, [TextExample("the king"), TextExample("a knight")],
                                                  TaskOptions.from_json(saved))
    got = post(server, "/api/explain", {"model": "t5", "objective": "span", "text": "the king and the queen of war"})
    assert got.json() == json.loads(json.dumps(explain("span", "the king and the queen of war",
                                                       tokenizer=load_model_and_tokenizer(folders["t5"])[1])))

    gpt = folders["gpt"]
    got = post(server, "/api/generate", {"model": "gpt", "prompt": "the king", "max_new_tokens": 10,
                                         "num_beams": 3, "num_return_sequences": 2}).json()
    assert cli(capsys, "generate", gpt, "the king", "--max-new-tokens", 10, "--num-beams", 3,
               "--num-return-sequences", 2) == "\n---\n".join(got["texts"]) + "\n"
    got = post(server, "/api/complete", {"model": "gpt", "prefix": "the king\n", "max_new_tokens": 12}).json()
    assert cli(capsys, "complete", gpt, "--max-new-tokens", 12, stdin="the king\n", monkeypatch=monkeypatch) == \
        got["completion"] + "\n"
    got = post(server, "/api/chat", {"model": "gpt", "turns": [{"speaker": "Romeo", "text": "night"}],
                                     "max_new_tokens": 10}).json()
    assert cli(capsys, "chat", gpt, "--max-new-tokens", 10, stdin="night\n", monkeypatch=monkeypatch) == \
        f"JULIET: {got['reply']}\n"


def test_models_offer_the_tools_of_their_capabilities(served):
    server, _ = served
    tools = {m["name"]: {t["name"] for t in m["tools"]}
             for m in httpx.get(server.url + "/api/models").json()["models"]}
    assert {"generate", "chat", "complete"} <= tools["gpt"] and "fill-mask" not in tools["gpt"]
    assert {"fill-mask", "nsp"} <= tools["bert"] and "generate" not in tools["bert"]
    assert {"text2text", "reconstruct"} <= tools["t5"] and "chat" not in tools["t5"]
    assert tools["cls"] == {"predict", "explain"}
    assert all("explain" in t for t in tools.values())


def test_generate_streams_server_sent_events(served):
    server, _ = served
    with httpx.stream("POST", server.url + "/api/generate", timeout=60,
                      json={"model": "gpt", "prompt": "the king", "max_new_tokens": 12, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    whole = post(server, "/api/generate", {"model": "gpt", "prompt": "the king", "max_new_tokens": 12}).json()
    assert "".join(e.get("text", "") for e in events) == whole["choices"][0]["text"]
    assert events[-1] == {"done": True, "finish_reason": "length", "tokens": 12}


# --- concurrency and disconnects ---------------------------------------------------------------


def test_32_concurrent_requests_each_answered_correctly(served):
    server, _ = served
    prompts = [" ".join(random.Random(i).sample(WORDS, 3)) for i in range(8)]
    bodies = [{"model": "gpt", "prompt": p, "max_tokens": 12, "temperature": 0} for p in prompts]
    masks = [{"model": "bert", "text": f"the {w} [MASK] queen", "top_k": 2} for w in WORDS[:8]]
    expected = {json.dumps(b): post(server, "/v1/completions", b).json()["choices"][0]["text"] for b in bodies}
    expected.update({json.dumps(b): post(server, "/api/fill-mask", b).json()["masks"] for b in masks})

    async def one(http, body: dict) -> tuple[dict, object]:
        path = "/api/fill-mask" if "text" in body else "/v1/completions"
        r = await http.post(path, json=body)
        r.raise_for_status()
        answer = r.json()
        return body, answer["masks"] if "masks" in answer else answer["choices"][0]["text"]

    async def all_at_once() -> list:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            return await asyncio.gather(*[one(http, body) for body in (bodies + masks) * 2])

    started = time.perf_counter()
    answers = asyncio.run(all_at_once())
    print(f"32 concurrent requests: {time.perf_counter() - started:.2f} s")
    assert len(answers) == 32
    for body, answer in answers:
        assert answer == expected[json.dumps(body)], body


def test_a_client_that_disconnects_mid_stream_stops_its_generation(served):
    server, _ = served
    before = httpx.get(server.url + "/health").json()["models"]["gpt"]
    asked = GPT_CONTEXT - 8
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"model": "gpt", "prompt": "the king", "max_tokens": asked, "temperature": 0,
                            "stream": True}) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the first token arrived
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = httpx.get(server.url + "/health").json()["models"]["gpt"]
        if after["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.05)
    assert after["cancelled"] == before["cancelled"] + 1, after
    print(f"abandoned stream: {after['tokens'] - before['tokens']} of {asked} tokens generated")
    assert after["tokens"] - before["tokens"] < asked  # the loop stopped before max_tokens
    # and the model serves the next request
    assert post(server, "/v1/completions", {"model": "gpt", "prompt": "a", "max_tokens": 3}).status_code == 200


def test_a_queued_request_whose_client_left_is_dropped_before_it_runs(served):
    """A non-streaming request waiting behind another job: its client gives up, and the server drops
    it from the queue (counted as cancelled) instead of generating for nobody. In-process uvicorn, so
    the test holds the model's worker itself."""
    import threading

    import uvicorn

    from lmzoo.serve.app import create_app
    from lmzoo.serve.registry import load_model

    _, folders = served
    gpt = load_model("gpt", str(folders["gpt"]))
    server = uvicorn.Server(uvicorn.Config(create_app({"gpt": gpt}), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{server.config.port}/v1/completions"
        gate = threading.Event()
        gpt.worker.submit(gate.wait)  # the job ahead in the queue
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url, timeout=0.5, json={"model": "gpt", "prompt": "a", "max_tokens": 20, "temperature": 0})
        deadline = time.monotonic() + 10
        while gpt.stats["cancelled"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the queued request notices its client left
        gate.set()
        gpt.worker.submit(lambda: None).result()  # the queue has drained
        assert gpt.stats == {"requests": 1, "cancelled": 1, "tokens": 0}
        assert httpx.post(url, timeout=30, json={"model": "gpt", "prompt": "a", "max_tokens": 3}).status_code == 200
    finally:
        gate.set()
        server.should_exit = True
        thread.join(10)


def test_each_choice_counts_the_tokens_it_generated_and_why_it_ended(served):
    """n sampled rows with stop strings, and chat replies (whose text has its whitespace collapsed):
    ``tokens`` ends at the eos or at the token completing a stop string (not the batch's padding), and
    finish_reason is "stop" exactly when one of those ended the row, "length" when max_tokens did."""
    from lmzoo.generate import continuation_text
    from lmzoo.serve import inference
    from lmzoo.serve.registry import load_model

    _, folders = served
    m = load_model("gpt", str(folders["gpt"]))
    eos = m.model.config.eos_token_id
    seen = set()
    for seed in range(12):
        options = inference.sampling_options(1.0, None, None, 1.0, seed)
        jobs = [(inference.prepare_generate(m, "the king", 12, {**options, "num_return_sequences": 4}, ["a", "the"]),
                 ["a", "the"]),
                (inference.prepare_chat(m, [("ROMEO", "good morrow")], "Juliet", 6, options, stop=["king"]),
                 ["\n\n", "king"])]
        for g, stops in jobs:
            for c in inference.run_generation(m, g)["choices"]:
                ids = c["token_ids"]
                text = (lambda t: continuation_text(m.tokenizer, g.prompt_ids, t) if g.prompt_ids
                        else m.tokenizer.decode(t))
                assert c["tokens"] == len(ids) >= 1
                assert not any(s in text(ids[:-1]) for s in stops), (c, text(ids))  # nothing after a stop
                if c["finish_reason"] == "stop":
                    assert ids[-1] == eos or any(s in text(ids) for s in stops), (c, text(ids))
                    assert eos not in ids[:-1], c
                else:
                    assert c["tokens"] == g.options["max_new_tokens"] and eos not in ids, c
                    assert not any(s in text(ids) for s in stops), (c, text(ids))
                seen.add((len(g.prompt_ids) > 0, c["finish_reason"]))
    assert {(True, "stop"), (True, "length"), (False, "length")} <= seen, seen
    # a reply of words ("knight knight ...", spaces collapsed by the chat) cut by max_tokens
    word = next(i for i in range(m.tokenizer.vocab_size) if m.tokenizer.decode([5, i]).count(" ") == 1
                and m.tokenizer.decode([i]).strip().isalpha())
    g = inference.prepare_chat(m, [("ROMEO", "good morrow")], "Juliet", 4, {})
    g.allowed_tokens = lambda row, new: [word]
    (c,) = inference.run_generation(m, g)["choices"]
    assert c["tokens"] == 4 and c["finish_reason"] == "length", c


# --- bad requests ------------------------------------------------------------------------------

LONG = "the king " * 200  # 400 tokens: more than the gpt context of 256
BAD = [
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model 'nope' is not loaded"),
    ("/api/fill-mask", {"model": "nope", "text": "a [MASK]"}, 404, "not loaded"),
    ("/v1/completions", {"model": "gpt"}, 400, "missing field prompt"),
    ("/api/generate", {"model": "gpt", "prompt": 7}, 400, "prompt: Input should be a valid string"),
    ("/v1/completions", {"model": "gpt", "prompt": {"a": 1}}, 400, "prompt: Input should be a valid string"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "max_tokens": -3}, 400, "greater than or equal to 1"),
    ("/api/fill-mask", {"model": "bert", "text": "a [MASK]", "top_k": -1}, 400, "top_k"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": "gpt", "prompt": LONG, "max_tokens": 4}, 400, "longer than the model's context"),
    ("/v1/completions", {"model": "gpt", "prompt": "the king", "max_tokens": GPT_CONTEXT}, 400,
     "exceed the model's context of 256"),
    ("/api/generate", {"model": "gpt", "prompt": "x", "typo_field": 1}, 400, "typo_field"),
    ("/api/fill-mask", {"model": "gpt", "text": "a [MASK]"}, 400, "cannot fill-mask"),
    ("/api/fill-mask", {"model": "bert", "text": "no blank here"}, 400, "no mask in the text"),
    ("/v1/chat/completions", {"model": "bert", "messages": [{"role": "user", "content": "hi"}]}, 400,
     "decoder-only"),
    ("/api/explain", {"model": "gpt", "objective": "span", "text": "x y"}, 400, "pretrains with clm"),
    ("/api/reconstruct", {"model": "bart", "texts": ["no gap"]}, 400, "no gap to fill"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "seed": 2**64}, 400, "seed: Input should be less than"),
    ("/api/generate", {"model": "gpt", "prompt": "x", "temperature": 1, "seed": 2**64}, 400, "seed"),
    ("/v1/completions", {"model": "gpt", "prompt": ["a"] * 300}, 400, "prompt: List should have at most 256"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "stop": "s" * 100_001}, 400, "stop: String should have at most"),
    ("/api/predict", {"model": "cls", "texts": ["a" * 100_001]}, 400, "texts.0: String should have at most"),
]


@pytest.mark.parametrize("path,body,status,message", BAD, ids=[f"{b[0]}:{b[3][:24]}" for b in BAD])
def test_bad_requests_are_4xx_json_with_one_clear_message(served, path, body, status, message):
    server, _ = served
    r = post(server, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and "\n" not in error["message"], error


def test_undecodable_bodies_and_the_openai_client_errors(served):
    server, _ = served
    for raw, message in ((b'{"model": "gpt", "prompt": "\xff\xfe"}', "not valid UTF-8"),
                         (b'{"model": ', "not valid JSON"), (b"", "the request body is missing")):
        r = httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    api = client(server)
    with pytest.raises(openai.NotFoundError, match="not loaded"):
        api.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="exceed the model's context"):
        api.completions.create(model="gpt", prompt="x", max_tokens=10_000)
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"  # still serving
    assert httpx.get(server.url + "/docs").status_code == 404  # its page would load scripts from a CDN
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/api/fill-mask", "/api/generate", "/health"} <= set(
        schema["paths"])


def test_serve_binds_loopback_by_default_and_quantizes(tmp_path):
    import argparse

    from fastapi.testclient import TestClient

    from lmzoo.serve import add_arguments
    from lmzoo.serve.app import create_app
    from lmzoo.serve.registry import load_models

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["runs/x"]).host == "127.0.0.1"
    folder = tiny_folder(tmp_path / "gpt", corpus(tmp_path / "c.txt"), "gpt-tiny", max_positions=64)
    models = load_models([f"q={folder}"], quantize="int8")
    assert models["q"].model.quantized
    with TestClient(create_app(models)) as http:
        r = http.post("/v1/completions", json={"model": "q", "prompt": "the king", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        assert http.get("/api/models").json()["models"][0]["quantized"] is True
