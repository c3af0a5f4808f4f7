"""``lmzoo explain``: what a pretraining objective does to a text, shown through the very datasets and
collators training uses (``Objective.build`` → dataset item → ``collate``), never a second implementation.

The text is one corpus: its blank-line-separated paragraphs are documents, split into sentences and
tokenized by ``TokenizedCorpus.build`` as ``pretrain`` does. The rows are long enough to hold the text
(up to ``MAX_TOKENS`` tokens), and the first training example, collated with a generator seeded by
``seed``, is what is shown. Next-sentence prediction draws a random B from another document: when the
text has a single paragraph, a few paragraphs of the bundled plays are added after it for that.

Without ``tokenizer`` the objective's first family's kind of tokenizer is trained on the bundled plays
once and cached (``$LMZOO_CACHE``, else ``$XDG_CACHE_HOME/lmzoo`` or ``~/.cache/lmzoo``).

The result is JSON-ready; :func:`render` prints it for a terminal, :func:`write_png` draws the
attention / permutation masks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lmzoo.data import TokenizedCorpus, default_corpus, iter_documents
from lmzoo.errors import UserError
from lmzoo.io import atomic_directory, atomic_write_bytes, cache_dir
from lmzoo.objectives import Objective, get_objective
from lmzoo.tokenizer import Tokenizer, train_tokenizer

MAX_TOKENS = 512  # longest row explained: a grid of T x T stays readable
EXPLAIN_VOCAB = 2000  # the cached default tokenizers: small, so training them takes seconds
FILLER_DOCUMENTS = 8  # paragraphs of the plays added for NSP's random B when the text has one
IGNORE_INDEX = -100


# --- tokenizer and corpus -----------------------------------------------------------------------


def default_tokenizer(unit: Objective) -> Tokenizer:
    """The tokenizer of the first family that trains ``unit`` (its kind, template and sentinels),
    trained on the bundled plays the first time and loaded from the cache afterwards."""
    from lmzoo.models import OBJECTIVE_FAMILIES, family_spec

    spec = family_spec(OBJECTIVE_FAMILIES[unit.name][0])
    folder = cache_dir() / "explain" / f"{spec.tokenizer_kind}-{spec.template}-{unit.extra_ids}-{EXPLAIN_VOCAB}"
    if not (folder / "tokenizer.json").is_file():
        tokenizer = train_tokenizer(default_corpus(), kind=spec.tokenizer_kind, template=spec.template,
                                    vocab_size=EXPLAIN_VOCAB, extra_ids=unit.extra_ids)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(folder) as tmp:
            tokenizer.save(tmp)
    return Tokenizer.load(folder)


def _filler_documents() -> list[str]:
    documents = []
    for document in iter_documents(default_corpus()[0]):
        if len(document.split()) >= 8:
            documents.append(document)
        if len(documents) == FILLER_DOCUMENTS:
            return documents
    return documents


def text_corpus(text: str, tokenizer: Tokenizer, folder: Path, *, min_documents: int = 1) -> TokenizedCorpus:
    """``text`` as a tokenized corpus in ``folder`` (paragraphs = documents), with paragraphs of the
    plays appended when it has fewer than ``min_documents``."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise UserError("nothing to explain: the text is empty")
    if len(paragraphs) < min_documents:
        paragraphs += _filler_documents()
    source = folder / "text.txt"
    source.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return TokenizedCorpus.build(source, tokenizer, folder / "cache")


def _row_length(unit: Objective, options: Any, n_tokens: int) -> int:
    """The objective's ``seq_len`` whose first row holds ``n_tokens`` content tokens (capped)."""
    wanted = min(n_tokens, MAX_TOKENS) + 3  # room for bos / cls, sep / eos, and a pair's second sep
    if unit.name == "span":  # seq_len counts the corrupted inputs: grow it until the raw row holds the text
        from lmzoo.objectives.span_corruption import raw_length_for

        seq_len = 8
        while raw_length_for(seq_len, options)[0] < wanted:
            seq_len += 1
        return seq_len
    return wanted


# --- the explanation ----------------------------------------------------------------------------


def explain(objective: str, text: str, *, tokenizer: Tokenizer | None = None, seed: int = 0,
            options: Any = None) -> dict[str, Any]:
    """What ``objective`` does to ``text``: the example training would make of it, collated with a
    generator seeded by ``seed``. ``options``: the objective's options dataclass (its defaults when
    None). Returns a JSON-ready dict: ``objective``, ``seed``, ``tokenizer``, ``truncated`` and the
    objective's own fields (see the ``_view_*`` functions)."""
    unit = get_objective(objective)
    options = options if options is not None else unit.options()
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer(unit)
    with tempfile.TemporaryDirectory(prefix="lmzoo-explain-") as tmp:
        corpus = text_corpus(text, tokenizer, Path(tmp), min_documents=2 if unit.name == "mlm+nsp" else 1)
        # NSP explains the pairs of the text's first paragraph; the others one row holding the whole text
        # (each document followed by its separator)
        n_tokens = len(corpus.document_tokens(0)) if unit.name == "mlm+nsp" else corpus.n_tokens + len(corpus)
        seq_len = _row_length(unit, options, n_tokens)
        setup = unit.build(tokenizer, corpus, corpus, options, seq_len=seq_len, seed=seed)
        example = {k: np.asarray(v).copy() if isinstance(v, np.ndarray) else v
                   for k, v in setup.train_data[0].items()}  # copied out of the memmapped corpus
        generator = torch.Generator().manual_seed(seed)
        trace: list[dict[str, Any]] = []
        if unit.name == "denoise":
            batch = setup.collate([example], generator, trace=trace)
        else:
            batch = setup.collate([example], generator)
    view = VIEWS[unit.name](_Pieces(tokenizer), example, {k: v[0] if v.dim() else v for k, v in batch.items()},
                            trace=trace)
    return {"objective": unit.name, "title": unit.title, "seed": seed,
            "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
            "truncated": n_tokens > MAX_TOKENS, **view}


class _Pieces:
    """Token ids → readable pieces (byte-level symbols decoded; a space shows as ▁, a newline as ↵)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.specials = set(tokenizer.special_ids)

    def __call__(self, ids: Any) -> list[str]:
        return [self.one(int(i)) for i in np.asarray(ids).reshape(-1)]

    def one(self, i: int) -> str:
        raw = self.tokenizer.id_to_token(i) or f"<{i}>"
        if i in self.specials or self.tokenizer.kind != "bpe":
            return raw
        return self.tokenizer.decode([i], skip_special_tokens=False).replace(" ", "▁").replace("\n", "↵")


def _ids(x: Any) -> list[int]:
    return [int(i) for i in np.asarray(x).reshape(-1)]


def _mlm_positions(pieces: _Pieces, original: list[int], batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Each position's token, what the model reads there and its status: special, context, or one
    of the chosen: masked ([MASK]), replaced (a random token) or kept (the original, still predicted)."""
    inputs, labels = _ids(batch["input_ids"]), _ids(batch["labels"])
    mask_id = pieces.tokenizer.mask_id
    positions, counts = [], {"masked": 0, "replaced": 0, "kept": 0}
    for token, seen, label in zip(original, inputs, labels):
        if label == IGNORE_INDEX:
            status = "special" if token in pieces.specials else "context"
        else:
            status = "masked" if seen == mask_id else "kept" if seen == token else "replaced"
            counts[status] += 1
        positions.append({"token": pieces.one(token), "input": pieces.one(seen), "status": status})
    candidates = sum(p["status"] != "special" for p in positions)
    chosen = sum(counts.values())
    return {"positions": positions, "counts": counts, "candidates": candidates,
            "chosen_rate": chosen / candidates if candidates else 0.0}


def _view_mlm(pieces: _Pieces, example: dict, batch: dict, **_: Any) -> dict[str, Any]:
    """MLM: the chosen tokens (whole words with whole-word masking) and the 80/10/10 split."""
    view = _mlm_positions(pieces, _ids(example["input_ids"]), batch)
    if "word_starts" in example:
        for p, start in zip(view["positions"], _ids(example["word_starts"])):
            p["word_start"] = bool(start)
    return view


def _view_nsp(pieces: _Pieces, example: dict, batch: dict, **_: Any) -> dict[str, Any]:
    """MLM + NSP: the pair [CLS] A [SEP] B [SEP], its label (0 = B follows A, 1 = B is random) and MLM on both."""
    ids, types = _ids(example["input_ids"]), _ids(example["token_type_ids"])
    specials = pieces.specials
    a = [i for i, t in zip(ids, types) if t == 0 and i not in specials]
    b = [i for i, t in zip(ids, types) if t == 1 and i not in specials]
    label = int(batch["nsp_labels"])
    view = _view_mlm(pieces, example, batch)
    for p, t in zip(view["positions"], types):
        p["segment"] = "A" if t == 0 else "B"
    return {"segment_a": pieces.tokenizer.decode(a), "segment_b": pieces.tokenizer.decode(b), "nsp_label": label,
            "nsp_meaning": "IsNext: B follows A in the text" if label == 0 else
            "NotNext: B is drawn from another document", **view}


def _view_clm(pieces: _Pieces, example: dict, batch: dict, **_: Any) -> dict[str, Any]:
    """CLM: each input token and the next token it is trained to predict (none where a new document starts)."""
    inputs, labels = _ids(batch["input_ids"]), _ids(batch["labels"])
    documents = _ids(batch["document_ids"]) if "document_ids" in batch else [0] * len(inputs)
    positions = _ids(batch["position_ids"]) if "position_ids" in batch else list(range(len(inputs)))
    rows = []
    for t, token in enumerate(inputs):
        target = labels[t + 1] if t + 1 < len(labels) else IGNORE_INDEX
        rows.append({"input": pieces.one(token), "target": None if target == IGNORE_INDEX else pieces.one(target),
                     "document": documents[t], "position": positions[t]})
    return {"positions": rows, "documents": len(set(documents)),
            "cross_document_attention": "document_ids" not in batch,
            "mask": {"kind": "causal", "documents": documents}}


def _view_span(pieces: _Pieces, example: dict, batch: dict, **_: Any) -> dict[str, Any]:
    """Span corruption: noise spans replaced by sentinels in the inputs; targets = each sentinel and its span."""
    original, inputs = _ids(example["input_ids"]), _ids(batch["input_ids"])
    targets = [i for i in _ids(batch["labels"]) if i != IGNORE_INDEX]
    from lmzoo.objectives.span_corruption import sentinel_ids_of

    sentinel_of = {i: n for n, i in enumerate(sentinel_ids_of(pieces.tokenizer))}
    spans: list[dict[str, Any]] = []
    closing = targets[:-1] if targets and targets[-1] == pieces.tokenizer.eos_id else targets
    for token in closing:  # targets: <extra_id_0> span 0 <extra_id_1> span 1 ... eos
        if token in sentinel_of:
            spans.append({"sentinel": pieces.one(token), "tokens": []})
        elif spans:  # a span may hold a document's end-of-text
            spans[-1]["tokens"].append(pieces.one(token))
    status, cursor = [], 0
    for token in inputs:  # walk the inputs: a sentinel stands for its span's tokens of the original
        if token in sentinel_of:
            n = len(spans[sentinel_of[token]]["tokens"]) if sentinel_of[token] < len(spans) else 0
            status += [spans[sentinel_of[token]]["sentinel"]] * n
            cursor += n
        elif cursor < len(original):
            status.append(None)
            cursor += 1
    noise = sum(s is not None for s in status)
    return {"original": pieces(original), "noise": status, "inputs": pieces(inputs), "targets": pieces(targets),
            "spans": spans, "noise_rate": noise / len(original) if original else 0.0}


def _view_denoise(pieces: _Pieces, example: dict, batch: dict, *, trace: list[dict[str, Any]]) -> dict[str, Any]:
    """BART: each noise in the order applied (sentence permutation, masking, deletion, infilling with its
    span lengths, rotation), then the encoder input and the decoder's target (the original)."""
    steps = []
    for step in trace:
        entry = {**step, "tokens": pieces(step["tokens"])}
        if "spans" in step:
            entry["span_lengths"] = [length for _, length in step["spans"]]
        steps.append(entry)
    labels = [i for i in _ids(batch["labels"]) if i != IGNORE_INDEX]
    return {"original": pieces(example["input_ids"]), "steps": steps,
            "inputs": pieces(_ids(batch["input_ids"])), "targets": pieces(labels)}


def _view_plm(pieces: _Pieces, example: dict, batch: dict, **_: Any) -> dict[str, Any]:
    """XLNet: the factorization order, the predicted tokens, and what each position may see in the
    content stream (its own token included) and the query stream (never its own token)."""
    from lmzoo.models.xlnet import attention_blocks

    tokens = pieces(batch["input_ids"])
    perm = batch["perm_mask"][None]
    content, query = attention_blocks(perm, batch["attention_mask"][None], 1, perm.shape[-1])
    predicted = batch["target_mapping"].sum(0) > 0
    # the order: a token that may see more tokens comes later; a context token sees all context
    order = sorted(range(len(tokens)), key=lambda i: (bool(predicted[i]), int((~query[0, i]).sum())))
    return {"tokens": tokens, "predicted": [int(i) for i in predicted.nonzero().flatten()],
            "order": order, "content_stream": (~content[0]).int().tolist(), "query_stream": (~query[0]).int().tolist(),
            "mask": {"kind": "permutation"}}


VIEWS: dict[str, Callable[..., dict[str, Any]]] = {
    "mlm": _view_mlm, "mlm+nsp": _view_nsp, "clm": _view_clm, "span": _view_span, "denoise": _view_denoise,
    "plm": _view_plm}


# --- terminal ------------------------------------------------------------------------------------

STYLES = {"masked": "1;31", "replaced": "1;35", "kept": "1;33", "special": "2", "noise": "1;31", "target": "32",
          "head": "1", "seen": "32", "predicted": "1;31"}
WIDTH = 100


class _Paint:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str | None) -> str:
        if not self.color or style is None:
            return text
        return f"\033[{STYLES[style]}m{text}\033[0m"


def _columns(rows: list[tuple[str, list[str]]], styles: list[str | None], paint: _Paint) -> list[str]:
    """Rows of cells aligned in columns (one column per position), wrapped at ``WIDTH``; ``styles``
    colours each column."""
    label_width = max(len(label) for label, _ in rows) + 2
    widths = [max(len(cells[i]) for _, cells in rows) for i in range(len(rows[0][1]))]
    lines, start = [], 0
    while start < len(widths):
        end, used = start, label_width
        while end < len(widths) and (end == start or used + widths[end] + 1 <= WIDTH):
            used += widths[end] + 1
            end += 1
        for label, cells in rows:
            line = label.ljust(label_width) + " ".join(
                paint(cells[i].ljust(widths[i]), styles[i]) for i in range(start, end))
            lines.append(line.rstrip())
        lines.append("")
        start = end
    return lines


def _render_mlm(e: dict[str, Any], paint: _Paint) -> list[str]:
    positions = e["positions"]
    rows = [("text", [p["token"] for p in positions]), ("model reads", [p["input"] for p in positions])]
    if "segment" in positions[0]:
        rows.append(("segment", [p["segment"] for p in positions]))
    styles = [p["status"] if p["status"] != "context" else None for p in positions]
    counts, chosen = e["counts"], sum(e["counts"].values())
    return [*_columns(rows, styles, paint),
            f"chosen: {chosen} of {e['candidates']} candidate tokens ({e['chosen_rate']:.0%}); of them "
            f"{paint(str(counts['masked']) + ' masked', 'masked')} (read as the mask token), "
            f"{paint(str(counts['replaced']) + ' replaced', 'replaced')} (a random token), "
            f"{paint(str(counts['kept']) + ' kept', 'kept')} (unchanged); every chosen token is predicted.",
            "special tokens and padding are never chosen; with whole-word masking a word is chosen whole."]


def _render_nsp(e: dict[str, Any], paint: _Paint) -> list[str]:
    return [f"A: {e['segment_a']}", f"B: {e['segment_b']}",
            paint(f"label {e['nsp_label']}: {e['nsp_meaning']}", "head"), "", *_render_mlm(e, paint)]


def _render_clm(e: dict[str, Any], paint: _Paint) -> list[str]:
    positions = e["positions"]
    rows = [("input", [p["input"] for p in positions]), ("predicts", [p["target"] or "-" for p in positions]),
            ("document", [str(p["document"]) for p in positions])]
    styles = ["target" if p["target"] else "special" for p in positions]
    boundary = ("tokens attend across documents (plain concatenation)" if e["cross_document_attention"] else
                "no token attends to an earlier document; positions restart in each, and the first token of a "
                "later document has no target")
    return [*_columns(rows, styles, paint), "each position is trained to predict the next token; " + boundary + "."]


def _render_span(e: dict[str, Any], paint: _Paint) -> list[str]:
    noise = [n or "" for n in e["noise"]] + [""] * (len(e["original"]) - len(e["noise"]))
    styles = ["noise" if n else None for n in noise]
    lines = _columns([("text", e["original"]), ("span", [n.replace("extra_id_", "") for n in noise])], styles,
                     paint)
    spans = [f"{s['sentinel']} = {' '.join(s['tokens'])}" for s in e["spans"]]
    return [*lines, f"noise: {e['noise_rate']:.0%} of the tokens, in {len(spans)} spans", *spans, "",
            "encoder reads: " + " ".join(e["inputs"]), "decoder writes: " + paint(" ".join(e["targets"]), "target")]


def _render_denoise(e: dict[str, Any], paint: _Paint) -> list[str]:
    lines = ["original: " + " ".join(e["original"])]
    for step in e["steps"]:
        drawn = ", ".join(f"{k} {v}" for k, v in step.items() if k in ("order", "span_lengths", "offset"))
        lines.append(paint(step["noise"].replace("_", " "), "head") + (f" ({drawn})" if drawn else "") + ":")
        lines.append("  " + " ".join(step["tokens"]))
    return [*lines, "", "encoder reads: " + " ".join(e["inputs"]),
            "decoder writes (the original): " + paint(" ".join(e["targets"]), "target")]


def _render_plm(e: dict[str, Any], paint: _Paint) -> list[str]:
    tokens, predicted = e["tokens"], e["predicted"]
    order = [i for i in e["order"] if i in set(predicted)]
    lines = ["tokens: " + " ".join(f"{i}:{paint(t, 'predicted' if i in predicted else None)}"
                                   for i, t in enumerate(tokens)),
             f"predicted ({len(predicted)} of {len(tokens)}), in factorization order: "
             + " ".join(f"{i}:{tokens[i]}" for i in order),
             "every other token is context, seen by all; a predicted token sees the context and the predicted "
             "tokens before it in the order.", ""]
    for stream, note in (("content_stream", "its own token included"), ("query_stream", "never its own token")):
        lines.append(paint(f"{stream.replace('_', ' ')} ({note}): row = predicted position, ■ = may see", "head"))
        lines.append("      " + "".join(str(j % 10) for j in range(len(tokens))))
        for i in order:
            lines.append(f"{i:>4}  " + "".join(paint("■", "seen") if v else "·" for v in e[stream][i]))
        lines.append("")
    return lines


RENDERERS = {"mlm": _render_mlm, "mlm+nsp": _render_nsp, "clm": _render_clm, "span": _render_span,
             "denoise": _render_denoise, "plm": _render_plm}


def render(explanation: dict[str, Any], *, color: bool = False) -> str:
    """The explanation as text for a terminal (ANSI colours when ``color``)."""
    paint = _Paint(color)
    e = explanation
    head = (f"{e['objective']} ({e['title']}) · {e['tokenizer']['kind']} tokenizer of {e['tokenizer']['vocab_size']} "
            f"tokens · seed {e['seed']}" + (f" · first {MAX_TOKENS} tokens" if e["truncated"] else ""))
    return "\n".join([paint(head, "head"), "", *RENDERERS[e["objective"]](e, paint)]).rstrip() + "\n"


# --- masks as a picture --------------------------------------------------------------------------


def attention_pictures(e: dict[str, Any]) -> list[tuple[str, np.ndarray, list[str]]]:
    """(title, may-see matrix [query, key], token labels) of each attention the objective trains."""
    if e["objective"] == "plm":
        return [("content stream", np.array(e["content_stream"]), e["tokens"]),
                ("query stream", np.array(e["query_stream"]), e["tokens"])]
    if e["objective"] == "clm":
        documents = np.array([p["document"] for p in e["positions"]])
        allowed = np.tril(np.ones((len(documents),) * 2, dtype=bool))
        if not e["cross_document_attention"]:
            allowed &= documents[:, None] == documents[None, :]
        return [("causal self-attention", allowed, [p["input"] for p in e["positions"]])]
    if e["objective"] in ("span", "denoise"):
        src, tgt = e["inputs"], e["targets"]
        return [("encoder (bidirectional)", np.ones((len(src), len(src)), dtype=bool), src),
                ("decoder (causal)", np.tril(np.ones((len(tgt), len(tgt)), dtype=bool)), tgt)]
    tokens = [p["input"] for p in e["positions"]]
    return [("encoder (bidirectional)", np.ones((len(tokens), len(tokens)), dtype=bool), tokens)]


def write_png(explanation: dict[str, Any], path: str | os.PathLike) -> None:
    """The attention / permutation masks of the explanation as one PNG (written atomically)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pictures = attention_pictures(explanation)
    fig = Figure(figsize=(6 * len(pictures), 6))
    FigureCanvasAgg(fig)
    for n, (title, allowed, labels) in enumerate(pictures, 1):
        ax = fig.add_subplot(1, len(pictures), n)
        ax.imshow(allowed, cmap="Greens", vmin=0, vmax=1.4, interpolation="nearest")
        ax.set_title(f"{explanation['objective']}: {title}")
        ax.set_xlabel("key (may be seen)")
        ax.set_ylabel("query (sees)")
        if len(labels) <= 64:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
