"""Seq2seq fine-tuning: pairs files, bad input → one-line error, metrics, and `lmzoo finetune --task
seq2seq` teaching a tiny BART a learnable task end to end (then `text2text` / `reconstruct`)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmzoo.cli import main
from lmzoo.errors import UserError
from lmzoo.models.bart import BartForConditionalGeneration
from lmzoo.presets import preset_config
from lmzoo.tasks.seq2seq import Seq2SeqCollator, Seq2SeqDataset, Seq2SeqOptions, read_pairs, text_metrics
from lmzoo.tokenizer import train_tokenizer

WORDS = "apple river stone cloud tiger lemon window garden silver rocket".split()


def sentences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(4)] for _ in range(n)]


@pytest.fixture(scope="module")
def bart_folder(tmp_path_factory):
    """A tiny random BART with a byte-level BPE tokenizer trained on the task's words."""
    folder = tmp_path_factory.mktemp("bart")
    text = folder / "corpus.txt"
    text.write_text("\n\n".join(" ".join(s) for s in sentences(300, 0)))
    tokenizer = train_tokenizer([str(text)], kind="bpe", vocab_size=300, out_dir=str(folder))
    torch.manual_seed(0)
    model = BartForConditionalGeneration(preset_config("bart-tiny", vocab_size=tokenizer.vocab_size, dropout=0.0,
                                                       max_positions=64))
    model.save_pretrained(folder)
    return folder


def write_pairs(path, n, seed):
    with open(path, "w") as f:
        for s in sentences(n, seed):
            f.write(json.dumps({"source": " ".join(s), "target": " ".join(reversed(s))}) + "\n")


def test_read_pairs_formats_and_errors(tmp_path):
    (tmp_path / "a.tsv").write_text("en\tde\nyes\tja\nno\tnein\n")
    assert read_pairs(tmp_path / "a.tsv", source_column="en", target_column="de") == [("yes", "ja"), ("no", "nein")]
    (tmp_path / "a.csv").write_text('source,target\n"a, b",c\n')
    assert read_pairs(tmp_path / "a.csv") == [("a, b", "c")]
    with pytest.raises(UserError, match="no column 'target'"):
        read_pairs(tmp_path / "a.tsv", source_column="en")
    (tmp_path / "b.jsonl").write_text('{"source": "x", "target": ""}\n')
    with pytest.raises(UserError, match="empty target"):
        read_pairs(tmp_path / "b.jsonl")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(UserError, match=".csv, .tsv or .jsonl"):
        read_pairs(tmp_path / "c.txt")


def test_metrics_known_values():
    same = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0), "rougeL": pytest.approx(100.0)}
    half = text_metrics(["the cat"], ["the cat sat on"])
    assert half["rougeL"] == pytest.approx(100 * 2 * (1.0 * 0.5) / 1.5) and half["bleu"] < 50
    # ROUGE-L words are Unicode: "Schließen" is one word (rouge-score's default would split it at ß)
    german = text_metrics(["Schließen das Fenster"], ["Schließen die Fenster"])
    assert german["rougeL"] == pytest.approx(100 * 2 / 3)


def test_dataset_and_collator(bart_folder, tmp_path):
    from lmzoo.tokenizer import Tokenizer

    tok = Tokenizer.load(bart_folder)
    data = Seq2SeqDataset([("apple river", "river apple"), ("stone", "stone stone stone")], tok, max_target_length=4)
    item = data[0]
    assert item["input_ids"][0] == tok.bos_id and item["input_ids"][-1] == tok.eos_id
    assert len(data[1]["labels"]) == 4  # cut to max_target_length
    long = Seq2SeqDataset([("apple", "apple river stone cloud tiger lemon window garden")], tok, max_target_length=6)
    labels = long[0]["labels"].tolist()  # the text is cut, not its </s>: the model learns to stop
    assert len(labels) == 6 and labels[0] == tok.bos_id and labels[-1] == tok.eos_id, labels
    batch = Seq2SeqCollator(tok.pad_id)([data[0], data[1]])
    assert batch["labels"].shape[1] == 4 and batch["attention_mask"].sum(1).tolist() == [
        len(data[0]["input_ids"]), len(data[1]["input_ids"])]
    with pytest.raises(UserError, match="more than --max-source-length"):
        Seq2SeqDataset([("apple river stone cloud tiger", "x")], tok, max_source_length=3)


def test_cli_bad_input_exits_2(bart_folder, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"src": "a", "target": "b"}\n')
    code = main(["finetune", "--task", "seq2seq", "--model", str(bart_folder), "--train", str(tmp_path / "bad.jsonl"),
                 "--out", str(tmp_path / "run"), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "no column 'source'" in err and len(err.splitlines()) == 1
    assert main(["reconstruct", str(bart_folder), "no gap here"]) == 2
    write_pairs(tmp_path / "pairs.jsonl", 2, 0)
    capsys.readouterr()
    code = main(["evaluate", "--model", str(bart_folder), "--data", str(tmp_path / "pairs.jsonl"),
                 "--out", str(tmp_path / "bad.jsonl")])  # --out names a folder; checked before generating
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --out") and "is a file" in err and len(err.splitlines()) == 1


def test_finetune_learns_and_keeps_best(bart_folder, tmp_path, capsys):
    write_pairs(tmp_path / "train.jsonl", 2000, 1)
    write_pairs(tmp_path / "eval.jsonl", 40, 2)
    out = tmp_path / "run"
    code = main(["finetune", "--task", "seq2seq", "--model", str(bart_folder), "--train", str(tmp_path / "train.jsonl"),
                 "--eval", str(tmp_path / "eval.jsonl"), "--out", str(out), "--max-steps", "400", "--batch-size", "32",
                 "--lr", "2e-3", "--warmup-steps", "10", "--save-every", "200", "--eval-batches", "2",
                 "--max-target-length", "16", "--no-progress", "--log-every", "50"])
    assert code == 0, capsys.readouterr().err
    best = json.loads((out / "best" / "seq2seq_metrics.json").read_text())
    assert best["bleu"] > 60 and best["rougeL"] > 80 and best["chrf"] > 80, best
    assert "eval_chrf" in (out / "metrics.jsonl").read_text()  # chrF picks the best model by default
    for folder in (out, out / "best"):  # the source prefix travels with the model
        assert json.loads((folder / "lmzoo_seq2seq.json").read_text()) == {"prefix": ""}
    capsys.readouterr()
    assert main(["text2text", str(out / "best"), "apple river stone cloud"]) == 0
    assert capsys.readouterr().out.strip() == "cloud stone river apple"


def test_text2text_applies_the_saved_prefix(bart_folder, tmp_path, capsys, monkeypatch):
    """A folder's saved prefix is prepended to what the encoder reads at text2text (as --prefix would);
    a broken file is one line."""
    import lmzoo.tasks.seq2seq as seq2seq
    from lmzoo.pipelines import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(bart_folder)
    folder = tmp_path / "tuned"
    model.save_pretrained(folder)
    seq2seq.save_task_files(folder, tokenizer, seq2seq.Seq2SeqOptions(prefix="stone stone "))
    read, real = [], seq2seq.generate
    monkeypatch.setattr(seq2seq, "generate", lambda model, ids, **kw: read.extend(ids.tolist()) or real(model, ids, **kw))
    for argv in ([], ["--prefix", "stone stone "], ["--prefix", ""]):
        read.clear()
        assert main(["text2text", str(folder), "apple river", "cloud", "--max-new-tokens", "4", *argv]) == 0
        sources = [tokenizer.decode(row) for row in read]
        prefix = "" if argv[-1:] == [""] else "stone stone "
        assert sources == [prefix + "apple river", prefix + "cloud"], sources
    (folder / "lmzoo_seq2seq.json").write_text("{not json")
    assert main(["text2text", str(folder), "apple river"]) == 2
    assert "not a valid lmzoo_seq2seq.json" in capsys.readouterr().err
    assert main(["text2text", str(folder), "  "]) == 2


def test_lengths_fit_learned_positions(capsys):
    from lmzoo.presets import preset_config
    from lmzoo.tasks.seq2seq import Seq2SeqOptions, fit_to_positions

    bart = preset_config("bart-tiny", max_positions=64)
    fitted = fit_to_positions(Seq2SeqOptions(), bart)
    # n target tokens fill n decoder positions (the start token and n - 1 generated ones feed the decoder)
    assert (fitted.max_source_length, fitted.max_target_length) == (64, 64)
    assert capsys.readouterr().err == ""  # defaults are cut silently
    fit_to_positions(Seq2SeqOptions(max_target_length=100), bart)
    assert "64 positions" in capsys.readouterr().err
    t5 = Seq2SeqOptions(max_source_length=2048)
    assert fit_to_positions(t5, preset_config("t5-tiny")) == t5  # relative positions: no limit


def test_text2text_generates_as_many_tokens_as_the_decoder_positions(bart_folder, monkeypatch, capsys):
    """A decoder of 64 learned positions holds 64 new tokens (the start token and the first 63 are
    fed): asked for more, text2text generates 64 (one more would be refused by the model)."""
    import lmzoo.tasks.seq2seq as seq2seq

    asked, real = [], seq2seq.generate
    never_stop = lambda row, new: [5, 6, 7]  # noqa: E731 -- no </s>: every asked-for token is generated

    def spy(model, ids, **kw):
        out = real(model, ids, **kw, allowed_tokens=never_stop)
        asked.append((kw["max_new_tokens"], out.shape[1]))
        return out

    monkeypatch.setattr(seq2seq, "generate", spy)
    assert seq2seq.predict_texts(bart_folder, ["apple river"], max_new_tokens=100)
    assert asked == [(64, 64)] and "at most 64 tokens" in capsys.readouterr().err


def test_reconstruct_fills_sentinels_the_tokenizer_knows_and_writes_other_texts_whole(tmp_path, monkeypatch):
    """Decided by the text and the tokenizer, not the family: a text with known <extra_id_N> sentinels
    gets its spans put back in place; so does a text with <mask>, which a tokenizer with sentinels and
    no mask token (T5) reads as <extra_id_0> (BART, whose <mask> text is written whole: test_interop.py)."""
    import lmzoo.tasks.seq2seq as seq2seq
    from lmzoo.models.t5 import T5ForConditionalGeneration

    (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join(s) for s in sentences(200, 0)))
    tok = train_tokenizer([str(tmp_path / "corpus.txt")], kind="unigram", vocab_size=120, extra_ids=2)
    model = T5ForConditionalGeneration(preset_config("t5-tiny", vocab_size=tok.vocab_size, d_model=32, n_heads=2,
                                                     d_head=16, d_ff=64))
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    answers = {"sentinels": tok.encode("<extra_id_0> apple river<extra_id_1> stone") + [eos, pad],
               "whole": tok.encode("tiger lemon") + [eos, pad]}
    prompts = []

    def fake_generate(model, input_ids, attention_mask=None, **options):
        prompts.append(tok.decode(input_ids[0].tolist(), skip_special_tokens=False))
        kind = "sentinels" if "<extra_id_0>" in prompts[-1] else "whole"
        return torch.tensor([answers[kind]] * input_ids.shape[0])

    monkeypatch.setattr(seq2seq, "generate", fake_generate)
    out = seq2seq.reconstruct_texts(model, tok, ["cloud <extra_id_0> garden <extra_id_1>", "cloud <mask> garden"])
    assert out == ["cloud apple river garden stone", "cloud apple river garden"]
    assert len(prompts) == 2 and "<mask>" not in prompts[1]


def test_finetune_flags_build_the_seq2seq_options():
    """The seq2seq flags come from Seq2SeqOptions' fields; --metric and --patience are the verb's own."""
    from lmzoo.cli import build_parser
    from lmzoo.options import options_from_args

    args = build_parser("finetune").parse_args(
        ["finetune", "--task", "seq2seq", "--model", "m", "--train", "t.jsonl", "--out", "o", "--prefix", "tr: ",
         "--label-smoothing", "0.1", "--num-beams", "3", "--max-target-length", "40", "--patience", "2",
         "--metric", "chrf"])
    options = options_from_args(Seq2SeqOptions, args, metric=args.metric, patience=args.patience)
    assert options == Seq2SeqOptions(prefix="tr: ", label_smoothing=0.1, num_beams=3, max_target_length=40,
                                     patience=2, metric="chrf")
    defaults = build_parser("finetune").parse_args(["finetune", "--task", "seq2seq", "--model", "m", "--train",
                                                     "t.jsonl", "--out", "o"])
    assert options_from_args(Seq2SeqOptions, defaults, metric="chrf", patience=0) == Seq2SeqOptions()


def test_docs_say_the_default_metric_and_that_text2text_adds_the_saved_prefix():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "seq2seq.md").read_text(encoding="utf-8")
    assert f"`--metric {Seq2SeqOptions().metric}` by default" in page
    prefix = "translate English to German: "
    tuned = [line for line in page.splitlines() if line.startswith("lmzoo text2text") and "runs/mt" in line]
    assert tuned and not any(prefix in line for line in tuned)  # the folder's saved prefix is added again
