"""Task metrics on hand-computed examples, including seqeval's edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from lmzoo.tasks.metrics import (
    classification_metrics,
    confusion_matrix,
    format_report,
    multilabel_metrics,
    ner_metrics,
    regression_metrics,
    write_confusion_matrix,
)
from lmzoo.tasks.ner import entities


def test_classification_by_hand():
    labels = {0: "neg", 1: "neu", 2: "pos"}
    gold = [0, 0, 0, 1, 2, 2]
    pred = [0, 0, 2, 2, 2, 1]
    m = classification_metrics(gold, pred, labels)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["confusion_matrix"] == [[2, 0, 1], [0, 0, 1], [0, 1, 1]]
    # neg: P 2/2 R 2/3 F 0.8; neu: P 0 R 0 F 0; pos: P 1/3 R 1/2 F 0.4
    assert m["per_label"]["neg"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                                     "support": 3}
    assert m["per_label"]["pos"]["f1"] == pytest.approx(0.4)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.0 + 0.4) / 3)


def test_macro_f1_ignores_labels_absent_from_gold_and_predictions():
    m = classification_metrics([0, 1, 1], [0, 1, 0], {0: "a", 1: "b", 2: "never"})
    # a: P 1/2 R 1 F 2/3; b: P 1 R 1/2 F 2/3; "never" does not drag the mean down
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["per_label"]["never"]["support"] == 0


def test_multilabel_and_regression_by_hand():
    gold = np.array([[1, 0], [1, 1], [0, 0]])
    pred = np.array([[1, 0], [1, 0], [0, 1]])
    m = multilabel_metrics(gold, pred, {0: "x", 1: "y"})
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp 2, fp 1, fn 1
    assert m["per_label"]["x"]["f1"] == 1.0 and m["per_label"]["y"]["f1"] == 0.0
    r = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert r["mse"] == pytest.approx(4 / 3) and r["mae"] == pytest.approx(2 / 3)
    assert r["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [1, 2, 5])[0, 1])


def test_ner_entity_level_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    m = ner_metrics(gold, pred)
    # gold entities 3, predicted 3, correct 2 (PER, ORG)
    assert (m["precision"], m["recall"], m["f1"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m["token_accuracy"] == pytest.approx(4 / 6)
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_ner_edge_cases():
    # a partial span is wrong as a whole: boundaries must match exactly
    assert ner_metrics([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-PER", "O"]])["f1"] == 0.0
    # an I- tag after O opens an entity (CoNLL rules, seqeval's default mode)
    assert ner_metrics([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]])["f1"] == 1.0
    # a type change inside a span splits it in two: PER(0) + LOC(1), neither is the gold PER(0-1) ...
    m = ner_metrics([["B-PER", "I-PER"]], [["B-PER", "I-LOC"]])
    assert (m["precision"], m["recall"], m["token_accuracy"]) == (0.0, 0.0, 0.5)
    # ... and both are right when gold has them as two entities
    assert ner_metrics([["B-PER", "B-LOC"]], [["B-PER", "I-LOC"]])["f1"] == 1.0
    # no entities anywhere: zeros, no crash, no per-type rows
    none = ner_metrics([["O", "O"]], [["O", "O"]])
    assert none["f1"] == 0.0 and none["token_accuracy"] == 1.0 and none["per_type"] == {}


def test_entities_agree_with_seqeval():
    from seqeval.metrics.sequence_labeling import get_entities

    tags = ["I-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-LOC", "I-ORG", "O", "B-PER"]
    words = [f"w{i}" for i in range(len(tags))]
    ours = [(e["type"], e["start"], e["end"] - 1) for e in entities(words, tags)]
    assert ours == get_entities(tags)
    assert entities(words, tags)[1]["text"] == "w3 w4"


def test_confusion_png_and_report(tmp_path):
    matrix = confusion_matrix([0, 1, 1], [0, 1, 0], 2)
    assert matrix.tolist() == [[1, 0], [1, 1]]
    write_confusion_matrix(matrix, ["neg", "pos"], tmp_path / "cm.png")
    data = (tmp_path / "cm.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    text = format_report({"neg": {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}}, {"accuracy": 0.5})
    assert "neg" in text and "0.6667" in text and "accuracy: 0.5000" in text
