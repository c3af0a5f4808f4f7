"""`lmzoo eval` (lmzoo/scoring.py): intrinsic scores against direct computations with transformers on
the same saved folder, documents read as pretrain reads them, the objective scores of T5 / BART,
trained vs random, and bad input.

The direct computations loop over tokens with the transformers model, one forward per predicted
token, and share nothing with lmzoo's batched implementation but the tokenizer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import hf_model, tiny_config

from lmzoo.cli import main
from lmzoo.data import TokenizedCorpus, default_corpus, iter_documents
from lmzoo.scoring import FIELDS, encode_document, evaluate_model
from lmzoo.tokenizer import train_tokenizer

RTOL = 1e-4


def play_documents() -> list[str]:
    """The speeches of one bundled play (blank-line separated documents)."""
    return list(iter_documents(default_corpus()[0]))


def tokenizer_in(folder, kind: str, vocab_size: int, extra_ids: int = 0):
    """A tokenizer of ``kind`` trained on a play's first speeches, saved into ``folder``."""
    text = folder / "train.txt"
    text.write_text("\n\n".join(play_documents()[:300]) + "\n")
    return train_tokenizer([str(text)], kind=kind, vocab_size=vocab_size, out_dir=str(folder), extra_ids=extra_ids)


def write_documents(path, documents: list[str]):
    path.write_text("\n\n".join(documents) + "\n")
    return path


def eval_documents(tokenizer, long_tokens: int) -> list[str]:
    """Two held-out speeches: a short one and one of 2-3 times ``long_tokens`` tokens."""
    docs = play_documents()[300:]
    short = next(d for d in docs if 5 <= len(tokenizer.encode(d)) < long_tokens // 2)
    long_ = next(d for d in docs if 2 * long_tokens < len(tokenizer.encode(d)) <= 3 * long_tokens)
    return [short, long_]


def log_prob(logits: torch.Tensor, token: int) -> float:
    return float(torch.log_softmax(logits.double(), -1)[token])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- causal LM


def test_causal_perplexity_equals_transformers_rolling_windows(tmp_path):
    import transformers

    folder = tmp_path / "gpt"
    folder.mkdir()
    tok = tokenizer_in(folder, "bpe", 300)
    config = tiny_config("gpt2", vocab_size=tok.vocab_size, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    hf_model(transformers.GPT2LMHeadModel, config, folder)
    context = 16
    documents = eval_documents(tok, context)
    scores = evaluate_model(folder, write_documents(tmp_path / "held-out.txt", documents), context=context,
                            batch_size=3, device="cpu")
    assert list(scores) == list(FIELDS["causal"])

    # lm-eval-harness loglikelihood_rolling, token by token: the document behind the end-of-text token;
    # tokens 0..L-1 are predicted from eos + what precedes them; after that, spans of L tokens [p, e)
    # (the last one shorter), each token of a span read with the document from e - L - 1 on.
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    nll, n_tokens = 0.0, 0
    for text in documents:
        ids = tok.encode(text, split_special_tokens=True)
        extended = [tok.eos_id] + ids  # extended[i + 1] is token i
        for i in range(len(ids)):
            if i < context:
                first = 0
            else:
                span_start = context + (i - context) // context * context
                span_end = min(span_start + context, len(ids))
                first = span_end - context  # in extended: token span_end - context - 1 of the document
            window = extended[first:i + 1]
            assert len(window) <= context
            with torch.no_grad():
                logits = hf(torch.tensor([window])).logits[0, -1]
            nll -= log_prob(logits, ids[i])
        n_tokens += len(ids)
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    n_words = sum(len(d.split()) for d in documents)
    assert (scores["tokens"], scores["bytes"], scores["words"]) == (n_tokens, n_bytes, n_words)
    assert scores["loss"] == pytest.approx(nll / n_tokens, rel=RTOL)
    assert scores["perplexity"] == pytest.approx(math.exp(nll / n_tokens), rel=RTOL)
    assert scores["word_perplexity"] == pytest.approx(math.exp(nll / n_words), rel=RTOL)
    assert scores["byte_perplexity"] == pytest.approx(math.exp(nll / n_bytes), rel=RTOL)
    assert scores["bits_per_byte"] == pytest.approx(nll / (n_bytes * math.log(2)), rel=RTOL)


# ---------------------------------------------------------------- masked LM


@pytest.mark.parametrize("family,hf_class,kind,vocab_size", [
    ("bert", "BertForMaskedLM", "wordpiece", 120),
    ("roberta", "RobertaForMaskedLM", "bpe", 300),
])
def test_masked_pseudo_perplexity_equals_transformers(tmp_path, family, hf_class, kind, vocab_size):
    import transformers

    folder = tmp_path / family
    folder.mkdir()
    tok = tokenizer_in(folder, kind, vocab_size)
    config = tiny_config(family, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id)
    hf_model(getattr(transformers, hf_class), config, folder)
    context = 16
    width = context - 2  # [CLS] ... [SEP] / <s> ... </s>
    documents = eval_documents(tok, width)
    scores = evaluate_model(folder, write_documents(tmp_path / "held-out.txt", documents), context=context,
                            batch_size=7, device="cpu")
    assert list(scores) == list(FIELDS["masked"])

    # Salazar et al.: each token masked alone; in a document longer than the window, token i sits in the
    # middle of the `width` tokens around it (clipped at the document's ends).
    hf = getattr(transformers, hf_class).from_pretrained(folder).eval()
    pll, n_tokens = 0.0, 0
    for text in documents:
        ids = tok.encode(text, split_special_tokens=True)
        w = min(len(ids), width)
        for i in range(len(ids)):
            start = min(max(i - w // 2, 0), len(ids) - w)
            row = [tok.cls_id] + ids[start:start + w] + [tok.sep_id]
            position = 1 + i - start
            row[position] = tok.mask_id
            with torch.no_grad():
                logits = hf(torch.tensor([row])).logits[0, position]
            pll += log_prob(logits, ids[i])
        n_tokens += len(ids)
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    assert scores["tokens"] == n_tokens
    assert scores["pseudo_log_likelihood"] == pytest.approx(pll, rel=RTOL)
    assert scores["pseudo_perplexity"] == pytest.approx(math.exp(-pll / n_tokens), rel=RTOL)
    assert scores["bits_per_byte"] == pytest.approx(-pll / (n_bytes * math.log(2)), rel=RTOL)
    assert 0.0 <= scores["masked_accuracy"] <= 1.0


# ---------------------------------------------------------------- permutation LM


XLNET_CONTEXT = 16
XLNET_WIDTH = XLNET_CONTEXT - 1  # A </s>


def scored_xlnet(tmp_path):
    """A random transformers XLNet folder with a Unigram tokenizer, two held-out documents (one longer
    than the context) and lmzoo's scores of them: (tokenizer, documents, scores, transformers model)."""
    import transformers

    folder = tmp_path / "xlnet"
    folder.mkdir()
    tok = tokenizer_in(folder, "unigram", 120)
    config = tiny_config("xlnet", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id)
    hf_model(transformers.XLNetLMHeadModel, config, folder)
    documents = eval_documents(tok, XLNET_WIDTH)
    scores = evaluate_model(folder, write_documents(tmp_path / "held-out.txt", documents), context=XLNET_CONTEXT,
                            batch_size=5, device="cpu")
    return tok, documents, scores, transformers.XLNetLMHeadModel.from_pretrained(folder).eval()


def test_xlnet_pseudo_perplexity_equals_transformers_query_stream(tmp_path):
    tok, documents, scores, hf = scored_xlnet(tmp_path)
    width = XLNET_WIDTH
    assert list(scores) == list(FIELDS["permutation"])

    # one forward per token: no position sees its content (perm_mask column), the query stream predicts it
    pll, n_tokens = 0.0, 0
    for text in documents:
        ids = tok.encode(text, split_special_tokens=True)
        w = min(len(ids), width)
        for i in range(len(ids)):
            start = min(max(i - w // 2, 0), len(ids) - w)
            row = ids[start:start + w] + [tok.eos_id]
            position = i - start
            perm_mask = torch.zeros(1, len(row), len(row))
            perm_mask[0, :, position] = 1.0
            target_mapping = torch.zeros(1, 1, len(row))
            target_mapping[0, 0, position] = 1.0
            with torch.no_grad():
                logits = hf(torch.tensor([row]), perm_mask=perm_mask, target_mapping=target_mapping).logits[0, 0]
            pll += log_prob(logits, ids[i])
        n_tokens += len(ids)
    assert scores["tokens"] == n_tokens
    assert scores["pseudo_log_likelihood"] == pytest.approx(pll, rel=RTOL)
    assert scores["pseudo_perplexity"] == pytest.approx(math.exp(-pll / n_tokens), rel=RTOL)
    assert math.isfinite(scores["plm_loss"]) and scores["plm_loss"] > 0
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    assert scores["bits_per_byte"] == pytest.approx(-pll / (n_bytes * math.log(2)), rel=RTOL)


def test_xlnet_left_to_right_likelihood_equals_transformers_one_token_at_a_time(tmp_path):
    """Each token predicted once by the query stream, in its window (the causal LM's windows), from
    the tokens before it; the special token sees no content token. One transformers forward per token."""
    tok, documents, scores, hf = scored_xlnet(tmp_path)
    width = XLNET_WIDTH
    nll, n_tokens = 0.0, 0
    for text in documents:
        ids = tok.encode(text, split_special_tokens=True)
        for lo in range(0, len(ids), width):  # windows: disjoint predicted spans, the last one full
            hi = min(lo + width, len(ids))
            start = max(0, hi - width)
            row = ids[start:hi] + [tok.eos_id]
            n = len(row)
            perm_mask = torch.zeros(1, n, n)
            for k in range(n):
                for j in range(hi - start):  # content j is hidden from the special token and from k <= j
                    perm_mask[0, k, j] = float(k == n - 1 or j >= k)
            for i in range(lo, hi):
                target_mapping = torch.zeros(1, 1, n)
                target_mapping[0, 0, i - start] = 1.0
                with torch.no_grad():
                    logits = hf(torch.tensor([row]), perm_mask=perm_mask, target_mapping=target_mapping).logits
                nll -= log_prob(logits[0, 0], ids[i])
        n_tokens += len(ids)
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    # tighter than RTOL: the two agree within 1e-8, and a random model's loss moves by only ~1e-5 when
    # a query is let see its own token
    assert scores["left_to_right_loss"] == pytest.approx(nll / n_tokens, rel=1e-6)
    assert scores["left_to_right_perplexity"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-6)
    assert scores["left_to_right_bits_per_byte"] == pytest.approx(nll / (n_bytes * math.log(2)), rel=1e-6)


@pytest.mark.parametrize("vocab, length, width, prefix, suffix", [
    (10, 3, 3, [], [1]),  # one window, an end-of-text suffix (XLNet's template)
    (6, 4, 3, [2], [3]),  # two windows (the second predicts one token after two read), [CLS] ... [SEP]
], ids=["one-window-eos", "two-windows-cls-sep"])
def test_xlnet_left_to_right_probabilities_of_every_document_sum_to_one(vocab, length, width, prefix, suffix):
    """A true likelihood: over all V^L documents of L tokens the probabilities sum to one (a
    prediction that saw its own token or a later one, or a token predicted twice or never, would
    break it)."""
    from lmzoo.models.xlnet import XLNetLMHeadModel
    from lmzoo.presets import preset_config
    from lmzoo.scoring import left_to_right_inputs, left_to_right_rows

    torch.manual_seed(0)
    model = XLNetLMHeadModel(preset_config("xlnet-tiny", vocab_size=vocab, n_layers=2)).eval()
    documents = torch.cartesian_prod(*[torch.arange(vocab)] * length).numpy()
    windows = [list(left_to_right_rows(d, width, np.array(prefix, np.int64), np.array(suffix, np.int64)))
               for d in documents]
    per_document = len(windows[0])
    assert per_document == math.ceil(length / width)
    rows = [w for document in windows for w in document]
    inputs = left_to_right_inputs({k: torch.from_numpy(np.stack([w[k] for w in rows])) for k in rows[0]})
    assert inputs["target_mapping"].shape == (len(rows), width, width + len(prefix) + len(suffix))
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits  # [rows, width, V]
    labels = inputs["labels"]
    log_p = torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    log_p = log_p.masked_fill(labels < 0, 0.0).sum(1).view(len(documents), per_document).sum(1)
    assert int((labels >= 0).sum()) == len(documents) * length  # every token predicted exactly once
    assert float(torch.logsumexp(log_p, 0).exp()) == pytest.approx(1.0, abs=1e-9)


def test_xlnet_left_to_right_without_template_tokens_reads_behind_the_end_of_text(tmp_path):
    """A template that adds no special token would leave each window's first query no key to attend
    to; the end-of-text token takes the template's place, so the score is the "A </s>" template's."""
    from lmzoo.hf import load_pretrained
    from lmzoo.scoring import score_permutation

    tok, documents, scores, _ = scored_xlnet(tmp_path)
    assert tok.template == "eos"
    tok.template = "plain"
    plain = score_permutation(load_pretrained(tmp_path / "xlnet").eval(), tok, documents, context=XLNET_CONTEXT,
                              batch_size=5)
    for name in ("left_to_right_loss", "left_to_right_bits_per_byte"):
        assert plain[name] == pytest.approx(scores[name], rel=1e-9)


# ---------------------------------------------------------------- documents


def test_documents_are_tokenized_as_the_pretraining_cache_does(tmp_path):
    corpus = write_documents(tmp_path / "play.txt", play_documents()[300:330])
    for kind, vocab_size, extra in (("bpe", 300, 0), ("wordpiece", 120, 0), ("unigram", 120, 10)):
        folder = tmp_path / kind
        folder.mkdir()
        tok = tokenizer_in(folder, kind, vocab_size, extra)
        cached = TokenizedCorpus.build(corpus, tok, folder / "cache")
        for d, text in zip(cached.doc_ids, iter_documents(corpus)):
            assert np.array_equal(encode_document(tok, text).ids, cached.document_tokens(int(d))), (kind, text)


@pytest.mark.parametrize("family,hf_class,kind,vocab_size", [
    ("gpt2", "GPT2LMHeadModel", "bpe", 300), ("bert", "BertForMaskedLM", "wordpiece", 120)])
def test_two_documents_score_the_same_as_one_file_or_two(tmp_path, family, hf_class, kind, vocab_size):
    import transformers

    folder = tmp_path / "model"
    folder.mkdir()
    tok = tokenizer_in(folder, kind, vocab_size)
    ids = {"eos_token_id": tok.eos_id, "bos_token_id": tok.eos_id} if tok.eos_id is not None else {}
    config = tiny_config(family, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, **ids)
    hf_model(getattr(transformers, hf_class), config, folder)
    documents = eval_documents(tok, 12)
    one = write_documents(tmp_path / "one.txt", documents)
    (tmp_path / "two").mkdir()
    for name, text in zip(("a.txt", "b.txt"), documents):
        write_documents(tmp_path / "two" / name, [text])
    together = evaluate_model(folder, one, context=12, device="cpu")
    apart = evaluate_model(folder, tmp_path / "two", context=12, device="cpu")
    assert together == apart
    assert together == evaluate_model(folder, [tmp_path / "two" / "a.txt", tmp_path / "two" / "b.txt"],
                                      context=12, device="cpu")


# ---------------------------------------------------------------- encoder-decoders


@pytest.mark.parametrize("family,hf_class,kind,vocab_size,extra_ids", [
    ("t5", "T5ForConditionalGeneration", "unigram", 140, 20),
    ("bart", "BartForConditionalGeneration", "bpe", 300, 0),
])
def test_seq2seq_scores_are_the_objective_at_a_fixed_seed(tmp_path, family, hf_class, kind, vocab_size, extra_ids):
    import transformers

    folder = tmp_path / family
    folder.mkdir()
    tok = tokenizer_in(folder, kind, vocab_size, extra_ids)
    special = dict(pad_token_id=tok.pad_id, eos_token_id=tok.eos_id,
                   decoder_start_token_id=tok.pad_id if family == "t5" else tok.eos_id)
    if family == "bart":
        special["bos_token_id"] = tok.bos_id
    hf_model(getattr(transformers, hf_class), tiny_config(family, vocab_size=tok.vocab_size, **special), folder)
    data = write_documents(tmp_path / "held-out.txt", play_documents()[300:320])
    scores = evaluate_model(folder, data, context=32, device="cpu")
    assert list(scores) == list(FIELDS["seq2seq"])
    assert math.isfinite(scores["loss"]) and scores["loss"] > 0
    assert 0.0 <= scores["token_accuracy"] <= 1.0
    # each example's noise comes from (seed, its index): another batch size only pads differently
    assert scores == pytest.approx(evaluate_model(folder, data, context=32, batch_size=3, device="cpu"), rel=1e-6)
    assert scores != evaluate_model(folder, data, context=32, seed=1, device="cpu")


LEARNABLE = "zero one two three four five six seven eight nine ten eleven twelve".split()


def counting_corpus(path, n_docs: int, seed: int):
    """Documents of counting sentences ("three four five six."): learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start = int(rng.integers(0, 4))
        docs.append("\n".join(" ".join(LEARNABLE[start + s + k] for k in range(4)) + "." for s in range(6)))
    return write_documents(path, docs)


def random_copy(trained, folder):
    """The architecture of ``trained`` from random init, with the same tokenizer, saved in ``folder``."""
    import lmzoo
    from lmzoo.tokenizer import Tokenizer

    model = lmzoo.from_pretrained(trained)
    torch.manual_seed(1)
    type(model)(model.config).save_pretrained(folder)
    Tokenizer.load(trained).save(folder)
    return folder


@pytest.mark.parametrize("preset,vocab_size,max_steps", [("gpt-tiny", 300, 40), ("t5-tiny", 122, 40),
                                                         ("bart-tiny", 300, 40)])
def test_trained_model_scores_better_than_random_init_through_the_cli(tmp_path, capsys, preset, vocab_size,
                                                                      max_steps):
    corpus = counting_corpus(tmp_path / "numbers.txt", 80, seed=0)
    held_out = counting_corpus(tmp_path / "held-out.txt", 10, seed=1)
    out = tmp_path / "run"
    code, _, stderr = run(capsys, "pretrain", "--preset", preset, "--data", corpus, "--out", out, "--max-steps",
                          max_steps, "--batch-size", 8, "--seq-len", 32, "--vocab-size", vocab_size, "--lr", 3e-3,
                          "--no-progress", "--eval-fraction", 0.1)
    assert code == 0, stderr
    scores = {}
    for name, folder in (("trained", out), ("random", random_copy(out, tmp_path / "random"))):
        code, stdout, stderr = run(capsys, "eval", folder, "--data", held_out, "--context", 32, "--json",
                                   tmp_path / f"{name}.json", "--no-progress")
        assert code == 0, stderr
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())
        table = dict(line.split() for line in stdout.strip().splitlines()[1:])
        assert list(table) == list(scores[name])  # one table, the JSON's fields in its order
        for field, value in scores[name].items():
            assert float(table[field]) == pytest.approx(value, abs=5e-5)
    assert scores["trained"]["loss"] < 0.6 * scores["random"]["loss"], scores
    if "token_accuracy" in scores["trained"]:
        assert scores["trained"]["token_accuracy"] > scores["random"]["token_accuracy"] + 0.2, scores
    else:
        assert scores["trained"]["bits_per_byte"] < 0.6 * scores["random"]["bits_per_byte"], scores


# ---------------------------------------------------------------- bad input


def test_bad_eval_input_is_one_line_exit_2(tmp_path, capsys):
    import lmzoo

    corpus = counting_corpus(tmp_path / "numbers.txt", 10, seed=0)
    no_tokenizer = tmp_path / "no-tokenizer"
    lmzoo.from_preset("bert-tiny", architecture="BertForMaskedLM", vocab_size=60).save_pretrained(no_tokenizer)
    classifier = tmp_path / "classifier"
    lmzoo.from_preset("bert-tiny", architecture="BertForSequenceClassification", vocab_size=200
                      ).save_pretrained(classifier)
    train_tokenizer([str(corpus)], kind="wordpiece", vocab_size=60, out_dir=str(classifier))
    masked = tmp_path / "masked"
    lmzoo.from_preset("bert-tiny", architecture="BertForMaskedLM", vocab_size=200).save_pretrained(masked)
    train_tokenizer([str(corpus)], kind="wordpiece", vocab_size=60, out_dir=str(masked))
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    cases = [
        ([no_tokenizer, "--data", corpus], "no tokenizer"),
        ([tmp_path / "missing", "--data", corpus], "not found"),
        ([masked, "--data", tmp_path / "empty"], "no text files found"),
        ([masked, "--data", tmp_path / "blank.txt"], "no text"),
        ([classifier, "--data", corpus], "no language-model head"),
        ([masked, "--data", corpus, "--context", 100000], "--context must be"),
        ([masked, "--data", corpus, "--batch-size", 0], "--batch-size must be"),
        ([masked, "--data", corpus, "--json", tmp_path], "is a folder"),
        # said before the scoring (stdout stays empty), not after it
        ([masked, "--data", corpus, "--json", tmp_path / "blank.txt" / "scores.json"], "a part of its path is a file"),
        ([masked, "--data", corpus, "--json", ""], "--json is empty"),
    ]
    for argv, message in cases:
        code, stdout, stderr = run(capsys, "eval", *argv, "--no-progress")
        assert code == 2, (argv, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert message in stderr, (message, stderr)
        assert stdout == ""
