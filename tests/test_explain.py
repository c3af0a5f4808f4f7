"""`lmzoo explain`: each objective's view agrees with what its collator did, and the recipes' rates hold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmzoo.data import default_corpus
from lmzoo.explain import explain, render
from lmzoo.models import OBJECTIVE_FAMILIES, family_spec
from lmzoo.objectives import get_objective
from lmzoo.tokenizer import train_tokenizer

TEXT = ("To be, or not to be, that is the question. Whether tis nobler in the mind to suffer the slings and arrows "
        "of outrageous fortune, or to take arms against a sea of troubles. And by opposing end them.\n\n"
        "To die, to sleep, no more. And by a sleep to say we end the heartache and the thousand natural shocks "
        "that flesh is heir to.")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """One small tokenizer per objective, of its first family's kind (trained on one play)."""
    play = str(default_corpus()[0])
    made = {}
    for name in ("mlm", "mlm+nsp", "clm", "span", "denoise", "plm"):
        unit = get_objective(name)
        spec = family_spec(OBJECTIVE_FAMILIES[name][0])
        made[name] = train_tokenizer(play, kind=spec.tokenizer_kind, template=spec.template, vocab_size=600,
                                     extra_ids=unit.extra_ids)
    return made


def test_mlm_rates_follow_the_recipe(tokenizers):
    """Over many seeds ~15 % of the candidates are chosen, split 80/10/10; the model reads the mask
    token exactly where a token is 'masked' and the original where it is 'kept' or context."""
    tokenizer = tokenizers["mlm"]
    counts, candidates = {"masked": 0, "replaced": 0, "kept": 0}, 0
    for seed in range(40):
        e = explain("mlm", TEXT, tokenizer=tokenizer, seed=seed)
        for p in e["positions"]:
            if p["status"] == "masked":
                assert p["input"] == tokenizer.id_to_token(tokenizer.mask_id)
            elif p["status"] in ("kept", "context", "special"):
                assert p["input"] == p["token"]
            else:
                assert p["input"] != p["token"]
        for k in counts:
            counts[k] += e["counts"][k]
        candidates += e["candidates"]
    chosen = sum(counts.values())
    assert abs(chosen / candidates - 0.15) < 0.03  # ~ 40 x 60 candidates: 3 sigma is about 0.02
    assert abs(counts["masked"] / chosen - 0.8) < 0.07
    assert abs(counts["replaced"] / chosen - 0.1) < 0.05 and abs(counts["kept"] / chosen - 0.1) < 0.05


def test_nsp_pairs_follow_or_not(tokenizers):
    labels = set()
    for seed in range(12):
        e = explain("mlm+nsp", TEXT, tokenizer=tokenizers["mlm+nsp"], seed=seed)
        labels.add(e["nsp_label"])
        joined = " ".join(TEXT.split())
        if e["nsp_label"] == 0:  # B is the text that follows A
            assert e["segment_a"] + " " + e["segment_b"] in joined
        assert [p["segment"] for p in e["positions"]].count("A") >= 3
    assert labels == {0, 1}


def test_clm_targets_are_the_next_tokens(tokenizers):
    e = explain("clm", TEXT, tokenizer=tokenizers["clm"])
    rows = e["positions"]
    assert e["documents"] == 2
    for now, after in zip(rows, rows[1:]):
        if after["document"] == now["document"]:
            assert now["target"] == after["input"] and after["position"] == now["position"] + 1
        else:  # the first token of a later document is not predicted across the boundary
            assert now["target"] is None and after["position"] == 0


def test_span_corruption_inputs_and_targets_rebuild_the_text(tokenizers):
    rates = []
    for seed in range(10):
        e = explain("span", TEXT, tokenizer=tokenizers["span"], seed=seed)
        spans = {s["sentinel"]: s["tokens"] for s in e["spans"]}
        rebuilt = [t for token in e["inputs"] for t in spans.get(token, [token])]
        assert rebuilt[:len(e["original"])] == e["original"]
        rates.append(e["noise_rate"])
    assert abs(np.mean(rates) - 0.15) < 0.03


def test_denoising_steps_end_in_the_encoder_input(tokenizers):
    e = explain("denoise", TEXT, tokenizer=tokenizers["denoise"], seed=3)
    names = [s["noise"] for s in e["steps"]]
    assert names == ["sentence_permutation", "text_infilling"]  # BART's default recipe
    assert sorted(e["steps"][0]["order"]) == list(range(len(e["steps"][0]["order"])))
    assert e["inputs"][1:-1] == e["steps"][-1]["tokens"]  # bos + noised + eos
    assert e["targets"][1:-1] == e["original"]
    assert abs(sum(e["steps"][1]["span_lengths"]) - 0.3 * len(e["original"])) <= 1


def test_plm_streams(tokenizers):
    e = explain("plm", TEXT, tokenizer=tokenizers["plm"], seed=2)
    content, query = np.array(e["content_stream"]), np.array(e["query_stream"])
    predicted = e["predicted"]
    assert predicted and len(predicted) < len(e["tokens"]) / 3
    for i in range(len(e["tokens"])):
        assert content[i, i] == 1  # the content stream sees its own token
    order = [i for i in e["order"] if i in predicted]
    for k, i in enumerate(order):
        assert query[i, i] == 0  # the query stream never does
        # a predicted token sees exactly the predicted tokens before it in the order
        assert sorted(j for j in predicted if query[i, j]) == sorted(order[:k])
    context = [i for i in range(len(e["tokens"])) if i not in predicted]
    assert all(query[i, j] for i in predicted for j in context)


def test_render_is_plain_without_color(tokenizers):
    for name in ("mlm", "mlm+nsp", "clm", "span", "denoise", "plm"):
        e = explain(name, TEXT, tokenizer=tokenizers[name])
        assert "\033[" not in render(e) and "\033[" in render(e, color=True)
        json.dumps(e)  # JSON-ready


def test_cli_default_tokenizer_json_png_and_errors(tmp_path, monkeypatch, capsys):
    from lmzoo.cli import main

    monkeypatch.setenv("LMZOO_CACHE", str(tmp_path / "cache"))
    assert main(["explain", "--objective", "mlm", "--json", "--png", str(tmp_path / "m.png"), TEXT]) in (0, None)
    e = json.loads(capsys.readouterr().out)
    assert e["objective"] == "mlm" and e["tokenizer"]["kind"] == "wordpiece"
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "cache" / "explain").iterdir())  # trained once, cached
    assert main(["explain", "--objective", "mlm", "--no-color", "--seed", "1", TEXT]) in (0, None)
    assert "chosen:" in capsys.readouterr().out
    for argv, message in ((["--objective", "nope", "x"], "unknown objective"),
                          (["--objective", "clm", "  "], "text is empty"),
                          (["--objective", "clm", "--mask-prob", "0.2", "x"], "--mask-prob is an option of")):
        assert main(["explain", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
