"""Metrics of the understanding tasks: accuracy and macro-F1 with a per-label report and a confusion
matrix (classification), entity-level precision / recall / F1 with ``seqeval`` (NER)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lmzoo.errors import UserError
from lmzoo.io import atomic_write_bytes


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], n_labels: int) -> np.ndarray:
    """[n_labels, n_labels] counts: row = gold label, column = predicted label."""
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return matrix


def classification_metrics(gold: Sequence[int], pred: Sequence[int], id2label: dict[int, str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (unweighted mean over the labels that occur in gold or predictions, as
    scikit-learn), and per-label precision / recall / F1 / support, plus the confusion matrix."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        raise UserError("no examples to score")
    matrix = confusion_matrix(gold, pred, len(id2label))
    per_label = {}
    for i, name in id2label.items():
        tp = float(matrix[i, i])
        precision, recall, f1 = _prf(tp, float(matrix[:, i].sum()) - tp, float(matrix[i].sum()) - tp)
        per_label[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(matrix[i].sum())}
    present = [name for i, name in id2label.items() if matrix[i].sum() or matrix[:, i].sum()]
    return {
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "macro_f1": float(np.mean([per_label[n]["f1"] for n in present])),
        "per_label": per_label,
        "confusion_matrix": matrix.tolist(),
        "n": len(gold),
    }


def multilabel_metrics(gold: np.ndarray, pred: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
    """Multi-hot [n, labels] gold and predictions: exact-match accuracy, micro- and macro-F1, per label."""
    gold, pred = np.asarray(gold, bool), np.asarray(pred, bool)
    tp, fp, fn = (gold & pred).sum(0), (~gold & pred).sum(0), (gold & ~pred).sum(0)
    per_label = {}
    for i, name in id2label.items():
        precision, recall, f1 = _prf(tp[i], fp[i], fn[i])
        per_label[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(gold[:, i].sum())}
    return {
        "accuracy": float((gold == pred).all(1).mean()),
        "micro_f1": _prf(tp.sum(), fp.sum(), fn.sum())[2],
        "macro_f1": float(np.mean([v["f1"] for v in per_label.values()])),
        "per_label": per_label,
        "n": int(gold.shape[0]),
    }


def regression_metrics(gold: Sequence[float], pred: Sequence[float]) -> dict[str, Any]:
    """Mean squared error, mean absolute error and Pearson correlation."""
    g, p = np.asarray(gold, np.float64), np.asarray(pred, np.float64)
    pearson = float(np.corrcoef(g, p)[0, 1]) if len(g) > 1 and g.std() > 0 and p.std() > 0 else 0.0
    return {"mse": float(((g - p) ** 2).mean()), "mae": float(np.abs(g - p).mean()), "pearson": pearson, "n": len(g)}


def ner_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level micro precision / recall / F1 (``seqeval``, CoNLL rules: an I- tag after O or
    after another type starts a new entity), token accuracy, and per-type scores."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    gold, pred = [list(s) for s in gold], [list(s) for s in pred]
    for n, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {n}: {len(g)} gold tags but {len(p)} predicted")
    n_tokens = sum(len(g) for g in gold)
    has_entities = any(t != "O" for s in gold + pred for t in s)  # seqeval's report fails on none
    report = classification_report(gold, pred, output_dict=True, zero_division=0) if has_entities else {}
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])} for k, v in report.items() if not k.endswith(" avg")}
    return {
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "token_accuracy": sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / max(1, n_tokens),
        "per_type": per_type,
        "n": len(gold),
    }


def format_report(per_label: dict[str, dict[str, float]], summary: dict[str, float]) -> str:
    """A plain-text per-label table (precision, recall, F1, support) followed by the summary metrics."""
    width = max([len(n) for n in per_label] + [5])
    lines = [f"{'label':<{width}}  precision  recall     f1  support"]
    for name, s in per_label.items():
        lines.append(f"{name:<{width}}  {s['precision']:9.4f}  {s['recall']:6.4f}  {s['f1']:.4f}  {s['support']:7d}")
    lines.append("")
    lines += [f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()]
    return "\n".join(lines) + "\n"


def write_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path) -> None:
    """The confusion matrix as a PNG (rows: gold, columns: predicted; counts in the cells), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix)
    size = 2.5 + 0.45 * len(labels)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    threshold = m.max() / 2 if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > threshold else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
