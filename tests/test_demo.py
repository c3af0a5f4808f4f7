"""The demo's six sections end to end at a few steps each, on three plays: every family trains, is used,
is evaluated more than once and gets its row in the closing table."""

from __future__ import annotations

import pytest

from lmzoo.data import default_corpus
from lmzoo.demo import SECTIONS, run_demo
from lmzoo.train.loop import read_metrics


@pytest.mark.slow
def test_demo_runs_every_section(tmp_path, capsys):
    rows = run_demo(tmp_path, steps_scale=0.002, corpus=[str(p) for p in default_corpus()[:4]],
                    held_out_bytes=300)
    out = capsys.readouterr().out
    assert [r.family for r in rows] == ["BERT", "RoBERTa", "GPT", "T5", "BART", "XLNet"] and len(SECTIONS) == 6
    assert "=== summary" in out and "baseline" in out and "NSP accuracy: " in out
    for row, name in zip(rows, SECTIONS):
        assert 0.0 <= row.score <= 1.0 and 0.0 < row.baseline < 1.0, row
        evaluations = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if "eval_loss" in r]
        assert len(evaluations) >= 2, name
        assert (tmp_path / name / "loss_curve.png").is_file()
        field, trained, random_init = row.intrinsic  # lmzoo eval on the held-out play
        assert field == ("loss" if name in ("t5", "bart") else "bits_per_byte") and trained > 0 and random_init > 0
