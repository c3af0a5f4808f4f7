"""`lmzoo compare` (lmzoo/compare.py): equal compute, sizes within ±15 %, the table's files, a
resumed compare keeping finished approaches, the claim verdicts, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from lmzoo import compare
from lmzoo.data import default_corpus
from lmzoo.presets import preset_config


def small_corpus(folder, n_files: int = 3):
    """The first speeches of a few plays (the last file is held out)."""
    from lmzoo.data import iter_documents

    folder.mkdir()
    paths = []
    for i, play in enumerate(default_corpus()[:n_files]):
        path = folder / f"play{i}.txt"
        path.write_text("\n\n".join(list(iter_documents(play))[:250]) + "\n")
        paths.append(path)
    return paths


def test_every_approach_has_a_size_within_fifteen_percent():
    from lmzoo.models import model_class_for

    counts = compare.check_sizes(list(compare.APPROACHES.values()))
    assert set(counts) == set(compare.APPROACHES)
    middle = sorted(counts.values())[len(counts) // 2]
    assert all(abs(n / middle - 1) <= 0.15 for n in counts.values())
    for key, approach in compare.APPROACHES.items():  # the count is of the real model, embeddings included
        config = preset_config(approach.preset, vocab_size=compare.VOCAB_SIZE, **compare.model_overrides(approach))
        model = model_class_for(config.family, approach.objective)(config)
        assert counts[key] == sum(p.numel() for p in model.parameters()) and config.d_model == 128
    with pytest.raises(compare.UserError, match="more than ±15 %"):  # a size outside the band is refused
        big = compare.Approach("big", "big", "gpt-tiny", "clm")
        original = compare.model_overrides
        try:
            compare.model_overrides = lambda a: {**original(a), "n_layers": 12} if a.key == "big" else original(a)
            compare.check_sizes([*compare.APPROACHES.values(), big])
        finally:
            compare.model_overrides = original


def test_a_flops_budget_sets_the_steps_from_the_measured_batches():
    budget = compare.Budget(flops=1e12)
    assert budget.steps(1e9, None, [], None) == 1000
    assert budget.steps(1e12, None, [], None) == 10  # never fewer than 10 steps
    assert "1.00e+12 training FLOPs" == budget.describe()


def test_compare_writes_the_table_and_a_resume_keeps_finished_approaches(tmp_path, capsys, monkeypatch):
    import lmzoo.scoring

    contexts = []
    evaluate = lmzoo.scoring.evaluate_model
    monkeypatch.setattr(lmzoo.scoring, "evaluate_model",
                        lambda folder, data, **kw: contexts.append(kw.get("context")) or evaluate(folder, data, **kw))
    data = small_corpus(tmp_path / "data")
    out = tmp_path / "cmp"
    argv = ["compare", "--data", *data, "--out", out, "--flops", 3e10, "--approaches", "clm", "mlm+nsp",
            "--probes", "pairs", "--probe-steps", 3, "--no-progress"]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    report = json.loads((out / "compare.json").read_text())
    rows = report["rows"]
    assert list(rows) == ["clm", "mlm+nsp"]
    for key, row in rows.items():
        # equal compute: the steps spend the budget (up to one step's FLOPs; at least 10 steps)
        assert row["train_flops"] >= 3e10 * 0.5 and row["steps"] >= 10
        assert row["train_flops"] / row["steps"] * (row["steps"] - 1) < max(3e10, row["train_flops"])
        assert 0.0 <= row["probes"]["pairs"]["scores"]["accuracy"] <= 1.0
        assert row["intrinsic"]["bits_per_byte"] > 0
        run_config = json.loads((out / compare.APPROACHES[key].folder / "run_config.json").read_text())
        assert run_config["train"]["max_steps"] == row["steps"]
    assert rows["clm"]["sample"].startswith(compare.PROMPT) and rows["mlm+nsp"]["sample"] is None
    md = (out / "compare.md").read_text()
    assert "| **CLM (GPT-2)** |" in md and "pairs accuracy" in md and "The seed's claims" in md
    # each approach beside its architecture at random initialization, scored alike
    assert md.count("same, random init") == 2 and list(report["random_init"]) == ["clm", "mlm+nsp"]
    random_clm = report["random_init"]["clm"]
    assert random_clm["parameters"] == rows["clm"]["parameters"]
    assert random_clm["intrinsic"]["bits_per_byte"] > rows["clm"]["intrinsic"]["bits_per_byte"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    weights = out / "clm" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "--resume" in err  # a second compare into the folder must say so
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 0 and "kept from" in err and weights.stat().st_mtime_ns == before
    assert json.loads((out / "compare.json").read_text())["rows"] == rows
    # every row, random init too, scored at the length the models trained at (the copy has no run record)
    assert contexts == [compare.SEQ_LEN] * 4

    # a resume with other probe settings scores again (the pretrained models are kept: same budget)
    code, _, err = run_cli(capsys, *argv[:-2], 4, "--no-progress", "--resume")
    assert code == 0 and "kept from" not in err and weights.stat().st_mtime_ns == before
    report = json.loads((out / "compare.json").read_text())
    assert all(r["probe_steps"] == 4 for r in [*report["rows"].values(), *report["random_init"].values()])
    assert report["rows"]["clm"]["steps"] == rows["clm"]["steps"]


def test_an_interrupted_pretraining_resumes_only_with_its_own_budget(tmp_path):
    """A pretraining cut before its record was written resumes with the same budget; with another
    it starts over (the weights equal a fresh run's), not continue the old run to the new steps."""
    from safetensors.torch import load_file

    corpus = [str(p) for p in small_corpus(tmp_path / "data")]
    approach, out = compare.APPROACHES["clm"], tmp_path / "cmp"
    weights = out / approach.folder / "model.safetensors"
    interrupted = out / approach.folder / compare.PRETRAIN_FILE
    first = compare.pretrain_approach(approach, corpus, out, compare.Budget(flops=1e10), 0, False)
    interrupted.unlink()  # as if stopped after its last checkpoint
    again = compare.pretrain_approach(approach, corpus, out, compare.Budget(flops=1e10), 0, False)
    assert again["steps"] == first["steps"] == 10
    interrupted.unlink()
    bigger = compare.Budget(flops=3e11)
    other = compare.pretrain_approach(approach, corpus, out, bigger, 0, False)
    fresh = compare.pretrain_approach(approach, corpus, tmp_path / "fresh", bigger, 0, False)
    assert other["steps"] == fresh["steps"] > 10
    trained, expected = load_file(weights), load_file(tmp_path / "fresh" / approach.folder / "model.safetensors")
    assert all(torch.equal(trained[k], expected[k]) for k in expected)


def test_claim_verdicts_name_the_leader_and_compare_with_the_seed():
    def row(sentiment, pairs, intrinsic, n=0):
        probes = {"sentiment": {"scores": {"accuracy": sentiment}, "test": n},
                  "pairs": {"scores": {"accuracy": pairs}, "test": n}}
        return {"probes": probes, "intrinsic": intrinsic}

    rows = {"mlm": row(0.7, 0.6, {"bits_per_byte": 2.0, "pseudo_perplexity": 9.0}),
            "clm": row(0.6, 0.7, {"bits_per_byte": 1.5, "perplexity": 3.0}), "span": row(0.5, 0.5, {"loss": 4.0})}
    verdicts = compare.claim_verdicts(rows)
    assert verdicts[0].startswith("understanding") and "MLM (RoBERTa recipe) led 1 of 2" in verdicts[0]
    assert verdicts[0].endswith("agrees.") and "noise" not in verdicts[0]
    assert verdicts[1].startswith("sentence relations") and "CLM (GPT-2) led 1 of 1" in verdicts[1]
    assert verdicts[1].endswith("disagrees.")
    assert verdicts[2].startswith("generation") and "1.500 bits per byte" in verdicts[2] and "agrees, untested" in \
        verdicts[2] and "2.000–2.000" in verdicts[2]
    # a permutation LM's left-to-right likelihood is a second true likelihood: the claim is tested
    rows["plm"] = row(0.5, 0.5, {"bits_per_byte": 1.2, "pseudo_perplexity": 5.0, "left_to_right_bits_per_byte": 1.4})
    generation = compare.claim_verdicts(rows)[2]
    assert ("permutation LM (XLNet) left to right assigns the held-out text the best true likelihood, "
            "1.400 bits per byte (CLM (GPT-2) 1.500)") in generation
    assert generation.endswith(": disagrees. The samples below show what each continuing model writes.")
    assert "1.200–2.000" in generation and "untested" not in generation
    # approaches that led equally many columns of a claim are all named
    split = {"mlm": row(0.7, 0.6, {}), "clm": row(0.6, 0.7, {}), "plm": row(0.5, 0.5, {})}
    split["plm"]["probes"]["ner"] = {"scores": {"f1": 0.1}, "test": 0}
    split["mlm"]["probes"]["ner"] = {"scores": {"f1": 0.0}, "test": 0}
    understanding = compare.claim_verdicts(split)[0]
    assert "MLM (RoBERTa recipe) and permutation LM (XLNet) led 1 of 2 columns each" in understanding
    assert understanding.endswith(": partly agrees.")
    # a tie leads nobody; a lead of 0.02 on 500 test pairs at 0.6 is within two standard errors (0.044)
    tied = {"mlm": row(0.6, 0.6, {}), "clm": row(0.6, 0.62, {}, n=500)}
    assert compare.column_leader(tied, "sentiment", "accuracy") == (None, "")
    assert compare.column_leader(tied, "pairs", "accuracy") == ("clm", "pairs within noise")
    assert compare.column_leader({**tied, "clm": row(0.6, 0.75, {}, n=500)}, "pairs", "accuracy") == ("clm", "")


@pytest.mark.parametrize("extra,message", [
    (["--flops", "-1"], "--flops must be a positive number"),
    (["--minutes", "nan"], "--minutes must be a positive number"),
    (["--approaches", "mlm", "poetry"], "unknown approach poetry"),
    (["--probes", "poetry"], "unknown probe poetry"),
    (["--flops", "1e9", "--minutes", "1"], "not allowed with argument"),
])
def test_bad_compare_arguments_are_one_line(tmp_path, capsys, extra, message):
    code, _, err = run_cli(capsys, "compare", "--out", tmp_path / "cmp", *extra)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "cmp").exists()


def test_one_data_file_is_refused_before_anything_is_written(tmp_path, capsys):
    data = small_corpus(tmp_path / "data", n_files=1)
    code, _, err = run_cli(capsys, "compare", "--data", *data, "--out", tmp_path / "cmp")
    assert code == 2 and "at least two files" in err and not (tmp_path / "cmp").exists()


def test_baselines_print_each_score_on_its_own_scale():
    rows = {"clm": {"probes": {"translation": {"baseline": {"name": "copy the source",
                                                             "scores": {"bleu": 0.8, "chrf": 29.14}}},
                               "pairs": {"baseline": {"name": "majority class", "scores": {"accuracy": 0.5034}}}}}}
    assert compare._baselines(rows) == ["translation (copy the source): bleu 0.8, chrf 29.1",
                                        "pairs (majority class): accuracy 0.503"]
