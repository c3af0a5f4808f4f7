"""torch.compile: every family's training forward is one graph up to its loss, a compiled training
step gives the eager loss and gradients, and compiled decoding gives the eager tokens.

The loss functions run eagerly on purpose (``eager_in_compile`` in ``lmzoo.nn.loss``): the
labelled rows' number is data-dependent and the fused LM-head loss has a hand-written backward.
Everything before them must trace without a break: dropout, masks built from a padded batch, packed
documents (GPT) and the permutation LM's two streams (XLNet)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).parent))
from conftest import compile_unavailable, corpus, run_cli, tiny_folder

from lmzoo.generate import compile_decoding, generate
from lmzoo.models import family_spec
from lmzoo.objectives.plm import PLMCollator
from lmzoo.presets import preset_config

VOCAB = 200
PRESETS = {"bert": "bert-tiny", "roberta": "roberta-tiny", "gpt2": "gpt-tiny", "t5": "t5-tiny",
           "bart": "bart-tiny", "xlnet": "xlnet-tiny"}


def pretraining_model(family: str, **overrides):
    """The family's default pretraining model (tiny), in training mode."""
    config = preset_config(PRESETS[family], vocab_size=VOCAB, **overrides)
    spec = family_spec(config.family)
    torch.manual_seed(0)
    return spec.objectives[spec.default_objective](config).train()


def pretraining_batch(family: str, config, *, documents: bool = False) -> dict[str, torch.Tensor]:
    """A batch of the family's objective with one right-padded row (so the padding masks are built)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    if family in ("t5", "bart"):
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(5, VOCAB, (2, 8), generator=g)}
    if family == "xlnet":  # XLNet: the permutation LM's streams
        return PLMCollator(pad_id=0, K=6, max_span=5, num_predict=4, special_ids=())(
            [{"input_ids": row} for row in ids], g)
    if family == "gpt2":
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        if documents:  # packed rows: three documents in the first, two in the second
            batch["document_ids"] = torch.tensor([[0] * 5 + [1] * 9 + [2] * 10, [0] * 12 + [1] * 12])
        return batch
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, -100).masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if family == "bert":  # MLM + NSP
        batch["token_type_ids"] = (torch.arange(24) >= 12).long().expand(2, 24)
        batch["nsp_labels"] = torch.tensor([0, 1])
    return batch


CASES = [(family, False) for family in PRESETS] + [("gpt2", True)]


# bf16 autocast adds casts, not control flow: two families stand for it
TRACED = [(f, d, "fp32") for f, d in CASES] + [("gpt2", True, "bf16"), ("t5", False, "bf16")]


@pytest.mark.parametrize("family, documents, precision", TRACED,
                         ids=[f + ("-packed" if d else "") + "-" + p for f, d, p in TRACED])
def test_training_forward_traces_without_a_break_before_the_loss(family, documents, precision):
    model = pretraining_model(family)
    batch = pretraining_batch(family, model.config, documents=documents)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        explained = torch._dynamo.explain(model)(**batch)
    reasons = [f"{b.reason.splitlines()[0]} at {b.user_stack[-1].filename}:{b.user_stack[-1].lineno}"
               for b in explained.break_reasons]
    # only where the eager loss is called (lmzoo.nn.compiling.eager_in_compile)
    assert all(b.user_stack[-1].filename.endswith("lmzoo/nn/compiling.py") for b in explained.break_reasons), reasons
    # one graph up to the loss; BERT's NSP head and GPT's label shift are a second one after it
    assert explained.graph_count <= 2, reasons


STEPS = [("gpt2", True, 0.0, False), ("roberta", False, 0.0, False), ("roberta", False, 0.1, False),
         ("roberta", False, 0.1, True)]


@pytest.mark.parametrize("family, documents, dropout, checkpointed", STEPS,
                         ids=["gpt2-packed", "roberta", "roberta-dropout", "roberta-dropout-checkpointed"])
def test_compiled_training_step_equals_eager(family, documents, dropout, checkpointed):
    """With dropout too: a compiled graph draws lmzoo's CPU masks from the same generator, and a
    mask recomputed in backward (activation checkpointing) replays the forward's RNG state, so one
    seed gives the eager step's loss and gradients."""
    from lmzoo.nn.stack import set_activation_checkpointing

    reason = compile_unavailable()
    if reason:
        pytest.skip(reason)
    model = pretraining_model(family, n_layers=2 if checkpointed else 1, dropout=dropout, attention_dropout=dropout)
    set_activation_checkpointing(model, checkpointed)
    batch = pretraining_batch(family, model.config, documents=documents)

    def step(forward):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = forward(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_loss, eager_grads = step(model)
    torch._dynamo.reset()
    compiled_loss, compiled_grads = step(torch.compile(model))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def random_gpt_folder(tmp_path: Path) -> Path:
    """A 1-layer GPT with N(0, 1) weights (greedy output that varies) and whole-piece tokens."""
    return tiny_folder(tmp_path / "gpt", corpus(tmp_path / "c.txt"), "gpt-tiny", scale=1.0, kind="unigram",
                       n_layers=1, max_positions=64)


def test_generate_compile_flag_gives_the_same_text(tmp_path, capsys):
    reason = compile_unavailable()
    if reason:
        pytest.skip(reason)
    folder = random_gpt_folder(tmp_path)
    args = ["generate", str(folder), "the king and", "--max-new-tokens", "12"]
    status, eager, _ = run_cli(capsys, *args)
    assert status == 0
    torch._dynamo.reset()
    status, compiled, _ = run_cli(capsys, *args, "--compile")
    assert status == 0 and compiled == eager and eager.strip()


@pytest.mark.slow
def test_compiled_beam_search_equals_eager():
    reason = compile_unavailable()
    if reason:
        pytest.skip(reason)
    model = pretraining_model("t5", n_layers=1).eval()
    ids = torch.randint(5, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    eager = generate(model, ids, max_new_tokens=10, num_beams=3)
    torch._dynamo.reset()
    compiled = generate(compile_decoding(model), ids, max_new_tokens=10, num_beams=3)
    assert torch.equal(compiled, eager)


def test_serve_compile_answers_as_the_eager_server(tmp_path):
    """``lmzoo serve --compile``: the decoding step compiles on the model's worker thread at the first
    request, and every answer (JSON tokens, OpenAI completion) is the eager server's."""
    reason = compile_unavailable()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import argparse

    from fastapi.testclient import TestClient

    from lmzoo.serve import add_arguments
    from lmzoo.serve.app import create_app
    from lmzoo.serve.registry import load_models

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["runs/x", "--compile"]).compile
    folder = random_gpt_folder(tmp_path)
    answers = []
    torch._dynamo.reset()
    for compile in (False, True):
        models = load_models([f"gpt={folder}"], compile=compile)
        assert hasattr(models["gpt"].model.generation_step, "_torchdynamo_orig_callable") == compile
        with TestClient(create_app(models)) as http:
            tokens = [http.post("/api/generate", json={"model": "gpt", "prompt": prompt, "max_new_tokens": 10})
                      .json()["choices"][0]["token_ids"] for prompt in ("the king", "war and peace of")]
            completion = http.post("/v1/completions", json={"model": "gpt", "prompt": "the king", "max_tokens": 10,
                                                             "temperature": 0}).json()["choices"][0]["text"]
        answers.append((tokens, completion))
    assert answers[1] == answers[0] and len(set(answers[0][0][0])) > 1
