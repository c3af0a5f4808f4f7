"""Train and load WordPiece (BERT), byte-level BPE (RoBERTa/GPT-2/BART) and Unigram (T5)
tokenizers with the Hugging Face ``tokenizers`` library, and read/write HF tokenizer folders.

:class:`Tokenizer` adds what the objectives need on top of ``tokenizers.Tokenizer``: the ids of
the special tokens, word starts for whole-word masking, and its special-token ``template``
(see ``TEMPLATES``), which a family's spec chooses when pretraining trains the tokenizer.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import tokenizers
import torch
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmzoo.errors import UserError
from lmzoo.io import atomic_write_bytes, atomic_write_json, atomic_write_text

KINDS = ("wordpiece", "bpe", "unigram")
ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")

# The special tokens each kind is trained with, in id order (the first gets id 0).
DEFAULT_SPECIALS = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bpe": {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"},
    "unigram": {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"},
}
TOKENIZER_CLASS = {"wordpiece": "BertTokenizerFast", "bpe": "RobertaTokenizerFast", "unigram": "T5TokenizerFast"}
PLAIN_BPE_CLASS = "GPT2TokenizerFast"  # byte-level BPE that adds no special tokens
# The templates each class above adds by itself; another template is read from tokenizer.json's
# post-processor (GENERIC_CLASS), else transformers would add other special tokens than build_inputs.
NATIVE_TEMPLATES = {"wordpiece": ("cls_sep",), "bpe": ("cls_sep_sep", "plain"), "unigram": ("eos",)}
# Reads tokenizer.json as it is (normalizer, pre-tokenizer, post-processor, decoder); the classes above
# rebuild their own normalizer instead, so they are declared only where theirs is the one we saved.
GENERIC_CLASS = "PreTrainedTokenizerFast"
BYTE_ALPHABET = 256  # byte-level BPE starts from every byte, whatever the corpus
TEMPLATE_KEY = "lmzoo_template"  # tokenizer_config.json key holding the template (HF ignores it)


@dataclass(frozen=True)
class Template:
    """How ``build_inputs`` wraps a text A and an optional text B: the roles of the special tokens
    before and after each; B and the tokens around it get token type ``b_type``."""

    before_a: tuple[str, ...] = ()
    after_a: tuple[str, ...] = ()
    before_b: tuple[str, ...] = ()
    after_b: tuple[str, ...] = ()
    b_type: int = 0

    @property
    def roles(self) -> set[str]:
        return {*self.before_a, *self.after_a, *self.before_b, *self.after_b}


# Named by structure, so a family picks one (FamilySpec.template) without this module knowing families.
TEMPLATES = {
    # [CLS] A [SEP] B [SEP], token types 0 then 1
    "cls_sep": Template(before_a=("cls",), after_a=("sep",), after_b=("sep",), b_type=1),
    # <s> A </s></s> B </s>
    "cls_sep_sep": Template(before_a=("cls",), after_a=("sep",), before_b=("sep",), after_b=("sep",)),
    # A </s> B </s>
    "eos": Template(after_a=("eos",), after_b=("eos",)),
    # A B: nothing added
    "plain": Template(),
}


def _refuse_non_utf8(texts: list[str]) -> None:
    """A UserError naming the first text holding a lone surrogate: Python's stand-in for a byte that
    is not UTF-8 (a command-line argument typed in another encoding), which no tokenizer can read."""
    for text in texts:
        if not isinstance(text, str):
            raise UserError(f"expected a text, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UserError(f"the text {text[:40]!r} is not UTF-8 (a byte 0x{ord(text[e.start]) & 0xFF:02X} at "
                            f"character {e.start}); give UTF-8 text (is the terminal's encoding UTF-8?)") from None


class Tokenizer:
    """lmzoo's tokenizer: a ``tokenizers.Tokenizer`` (``backend``) plus the ids of its special
    tokens (``pad_id``, ``unk_id``, ``cls_id``, ``sep_id``, ``mask_id``, ``bos_id``, ``eos_id``;
    ``None`` when absent) and its ``template`` (a key of ``TEMPLATES``; ``None``: inferred from
    the special tokens present, as for an HF folder that does not say)."""

    def __init__(self, backend: tokenizers.Tokenizer, kind: str, special_tokens: dict[str, str], *,
                 lowercase: bool = False, model_max_length: int = 512,
                 additional_special_tokens: Iterable[str] = (), template: str | None = None):
        if kind not in KINDS:
            raise UserError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        backend.no_padding()  # padding / truncation are ours to do (some HF files enable them)
        backend.no_truncation()
        self.backend = backend
        self.kind = kind
        self.lowercase = lowercase
        self.model_max_length = model_max_length
        # only keep roles whose token really is in the vocabulary
        self.special_tokens = {r: t for r, t in special_tokens.items()
                               if r in ROLES and t is not None and backend.token_to_id(t) is not None}
        self.additional_special_tokens = [t for t in additional_special_tokens
                                          if backend.token_to_id(t) is not None]
        for role in ROLES:
            tok = self.special_tokens.get(role)
            setattr(self, f"{role}_id", None if tok is None else backend.token_to_id(tok))
        ids = {backend.token_to_id(t) for t in [*self.special_tokens.values(), *self.additional_special_tokens]}
        ids |= {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self.special_ids: frozenset[int] = frozenset(ids)
        self.template = self._inferred_template() if template is None else template
        if not isinstance(self.template, str) or self.template not in TEMPLATES:
            raise UserError(f"tokenizer template must be one of {tuple(TEMPLATES)}, got {self.template!r}")
        missing = sorted(r for r in TEMPLATES[self.template].roles if getattr(self, f"{r}_id") is None)
        if missing:
            raise UserError(f"template {self.template!r} needs {' and '.join(missing)} token(s), which this "
                            f"{kind} tokenizer lacks")

    # ------------------------------------------------------------------ basics

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary, added tokens included (the embedding rows a model needs)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, template={self.template!r}, vocab_size={self.vocab_size}, "
                f"special_tokens={self.special_tokens})")

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def encode(self, text: str, *, split_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``, no special tokens added. A special token's string inside the text
        (``<mask>``, ``<|endoftext|>``) becomes that token, unless ``split_special_tokens``: then it
        is ordinary text, as it must be in a corpus or a source file (``(?P<s>...)`` in a regex)."""
        return self.encode_batch([text], split_special_tokens=split_special_tokens)[0]

    def encode_batch(self, texts: list[str], *, split_special_tokens: bool = False) -> list[list[int]]:
        """``encode`` for several texts."""
        return [e.ids for e in self._encode_batch(texts, split_special_tokens)]

    def _encode_batch(self, texts: list[str], split_special_tokens: bool) -> list[tokenizers.Encoding]:
        # a setting of the shared backend, set around the call: one Tokenizer is not for concurrent threads
        before = self.backend.encode_special_tokens
        self.backend.encode_special_tokens = split_special_tokens
        try:
            return self.backend.encode_batch(list(texts), add_special_tokens=False)
        except TypeError:  # a str that is not text: argv / a file name decoded with surrogateescape
            _refuse_non_utf8(texts)
            raise
        finally:
            self.backend.encode_special_tokens = before

    def encode_with_word_starts(self, texts: list[str], *, split_special_tokens: bool = False
                                ) -> list[tuple[list[int], list[bool]]]:
        """(ids, word_starts) per text; ``word_starts[i]`` is True when token i begins a new word.

        Words are the pre-tokenizer's words (``Encoding.word_ids``), so this works for WordPiece,
        byte-level BPE and Unigram alike; where a token has no word id (an added token), it
        starts a word when its offsets do not touch the previous token's. ``split_special_tokens``:
        as in ``encode``.
        """
        out = []
        for enc in self._encode_batch(texts, split_special_tokens):
            words, offsets = enc.word_ids, enc.offsets
            starts = []
            for i in range(len(enc.ids)):
                if i == 0:
                    starts.append(True)
                elif words[i] is not None and words[i - 1] is not None:
                    starts.append(words[i] != words[i - 1])
                else:
                    starts.append(offsets[i][0] != offsets[i - 1][1] or offsets[i][0] == offsets[i][1])
            out.append((enc.ids, starts))
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens (``special_ids``) are left out unless asked for."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self.backend.decode(ids, skip_special_tokens=False)

    # ------------------------------------------------------------------ model inputs

    def _inferred_template(self) -> str:
        """The template of a folder that does not name one, from its kind and special tokens."""
        if self.kind == "wordpiece" and self.cls_id is not None and self.sep_id is not None:
            return "cls_sep"
        if self.kind == "bpe" and self.cls_id is not None and self.sep_id is not None:
            return "cls_sep_sep"
        if self.kind == "unigram" and self.eos_id is not None:
            return "eos"
        return "plain"  # e.g. a GPT-2 folder: <|endoftext|> only

    def _role_ids(self, roles: tuple[str, ...]) -> list[int]:
        return [getattr(self, f"{role}_id") for role in roles]

    def build_inputs(self, a: list[int], b: list[int] | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, token_type_ids) of text A (and B) wrapped in the ``template``'s special tokens:
        "cls_sep" ``[CLS] a [SEP] b [SEP]`` (types 0.., 1..); "cls_sep_sep" ``<s> a </s></s> b </s>``;
        "eos" ``a </s> b </s>``; "plain" ``a b``. Token types are 0 but for B's part in "cls_sep"."""
        t = TEMPLATES[self.template]
        ids = [*self._role_ids(t.before_a), *a, *self._role_ids(t.after_a)]
        types = [0] * len(ids)
        if b is not None:
            second = [*self._role_ids(t.before_b), *b, *self._role_ids(t.after_b)]
            ids += second
            types += [t.b_type] * len(second)
        return ids, types

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return len(self.build_inputs([], [] if pair else None)[0])

    def __call__(self, texts: list[str] | str, text_pairs: list[str] | str | None = None, *,
                 max_length: int = 512, padding: bool = True, truncation: bool = True) -> dict[str, torch.Tensor]:
        """A batch for a model: ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64).

        Truncation is longest-first for pairs (drop from the end of the longer text), padding is
        on the right to the longest sequence with ``pad_id`` (``eos_id`` when there is none).
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if text_pairs is not None:
            text_pairs = [text_pairs] if isinstance(text_pairs, str) else list(text_pairs)
            if len(text_pairs) != len(texts):
                raise UserError(f"got {len(texts)} texts but {len(text_pairs)} text pairs")
        pair = text_pairs is not None
        budget = max_length - self.num_special_tokens_to_add(pair)
        if truncation and budget < (2 if pair else 1):
            raise UserError(f"max_length={max_length} leaves no room for text after the special tokens")
        firsts = self.encode_batch(texts)
        seconds = self.encode_batch(text_pairs) if pair else [None] * len(texts)
        rows = []
        for a, b in zip(firsts, seconds):
            if truncation:
                a, b = _truncate(a, b, budget)
            rows.append(self.build_inputs(a, b))
        width = max(len(ids) for ids, _ in rows)
        if not padding and any(len(ids) != width for ids, _ in rows):
            raise UserError("sequences have different lengths; use padding=True to batch them")
        pad = self.pad_id if self.pad_id is not None else (self.eos_id or 0)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, types) in enumerate(rows):
            input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[r, :len(ids)] = 1
            token_type_ids[r, :len(ids)] = torch.tensor(types, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Tokenizer":
        """Load a Hugging Face tokenizer folder: ``tokenizer.json`` when present, else
        ``vocab.txt`` (BERT WordPiece), else ``vocab.json`` + ``merges.txt`` (byte-level BPE).
        Special tokens come from special_tokens_map.json / tokenizer_config.json, else from the
        well-known strings found in the vocabulary; the template from tokenizer_config.json's
        ``lmzoo_template``, else inferred from those tokens."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"tokenizer folder not found: {folder}")
        config = _read_json(folder / "tokenizer_config.json")
        smap = _read_json(folder / "special_tokens_map.json")
        lowercase = bool(config.get("do_lower_case", False))
        try:
            if (folder / "tokenizer.json").is_file():
                backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            elif (folder / "vocab.txt").is_file():
                lowercase = bool(config.get("do_lower_case", True))  # BertTokenizer's default
                backend = _wordpiece_pipeline(models.WordPiece.from_file(str(folder / "vocab.txt"),
                                                                         unk_token="[UNK]"), lowercase)
            elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                backend = _bpe_pipeline(models.BPE.from_file(str(folder / "vocab.json"),
                                                             str(folder / "merges.txt")), lowercase)
            else:
                raise UserError(f"no tokenizer in {folder}: expected tokenizer.json, vocab.txt, "
                                f"or vocab.json + merges.txt")
        except UserError:
            raise
        except Exception as e:  # tokenizers raises plain Exceptions for malformed files
            reason = str(e).splitlines()[0] if str(e) else repr(e)
            raise UserError(f"cannot read the tokenizer in {folder}: {reason}") from None

        model_type = type(backend.model).__name__
        kind = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram"}.get(model_type)
        if kind is None:
            raise UserError(f"unsupported tokenizer model {model_type} in {folder}")
        specials = {}
        for role in ROLES:
            value = smap.get(f"{role}_token", config.get(f"{role}_token"))
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                specials[role] = value
        for role, token in _detect_specials(backend, kind).items():
            specials.setdefault(role, token)
        extra = smap.get("additional_special_tokens", config.get("additional_special_tokens")) or []
        if not isinstance(extra, list):  # a string would be read as its characters
            raise UserError(f"{folder}: additional_special_tokens must be a list, got {extra!r}")
        extra = [t.get("content") if isinstance(t, dict) else t for t in extra]
        max_len = config.get("model_max_length", 512)
        max_len = max_len if isinstance(max_len, int) and 0 < max_len < 10**9 else 512
        tok = cls(backend, kind, specials, lowercase=lowercase, model_max_length=max_len,
                  additional_special_tokens=[t for t in extra if isinstance(t, str)],
                  template=config.get(TEMPLATE_KEY))
        # register vocabulary-file specials as added special tokens, as tokenizer.json would have them
        missing = [t for t in [*tok.special_tokens.values(), *tok.additional_special_tokens]
                   if t not in {a.content for a in backend.get_added_tokens_decoder().values()}]
        if missing and not (folder / "tokenizer.json").is_file():
            backend.add_special_tokens(missing)
            tok._attach_post_processor()
        return tok

    def save(self, folder: str | os.PathLike) -> None:
        """Write an HF-loadable tokenizer folder (into ``folder``, other files untouched):
        tokenizer.json, tokenizer_config.json, special_tokens_map.json, and vocab.txt
        (WordPiece) or vocab.json + merges.txt (BPE)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tokenizer.json", self.backend.to_str(pretty=True))
        smap = {f"{role}_token": tok for role, tok in self.special_tokens.items()}
        if self.additional_special_tokens:
            smap["additional_special_tokens"] = list(self.additional_special_tokens)
        config = {
            "tokenizer_class": self._hf_class(),
            TEMPLATE_KEY: self.template,
            "model_max_length": self.model_max_length,
            "do_lower_case": self.lowercase,
            "clean_up_tokenization_spaces": False,
            **smap,
        }
        if self.kind == "bpe":
            config["add_prefix_space"] = False
            config["trim_offsets"] = True
        if self.kind == "unigram":
            config["extra_ids"] = sum(t.startswith("<extra_id_") for t in self.additional_special_tokens)
        atomic_write_json(folder / "tokenizer_config.json", config)
        atomic_write_json(folder / "special_tokens_map.json", smap)
        if self.kind in ("wordpiece", "bpe"):
            with tempfile.TemporaryDirectory() as tmp:
                for name in self.backend.model.save(tmp):
                    atomic_write_bytes(folder / Path(name).name, Path(name).read_bytes())

    def _hf_class(self) -> str:
        """The transformers class ``AutoTokenizer`` should build for this tokenizer: the kind's own
        (BertTokenizerFast, RobertaTokenizerFast / GPT2TokenizerFast, T5TokenizerFast) when the
        pipeline it rebuilds is ours, else PreTrainedTokenizerFast, which reads tokenizer.json as is.
        transformers' byte-level BPE and T5 classes build no normalizer (so never lowercase) and
        BertTokenizerFast builds BERT's from ``do_lower_case``: what must stay true is that the
        folder encodes and decodes in transformers exactly as here (tests/test_interop.py)."""
        ours = json.loads(self.backend.to_str())
        lowercase = self.lowercase and self.kind == "wordpiece"  # only BERT's class can lowercase
        rebuilt = json.loads(_PIPELINES[self.kind](_EMPTY_MODELS[self.kind](), lowercase).to_str())
        if any(ours.get(part) != rebuilt[part] for part in ("normalizer", "pre_tokenizer", "decoder")):
            return GENERIC_CLASS
        if self.template not in NATIVE_TEMPLATES[self.kind]:
            return GENERIC_CLASS
        if self.kind == "bpe" and self.template == "plain":
            return PLAIN_BPE_CLASS
        return TOKENIZER_CLASS[self.kind]

    def _attach_post_processor(self) -> None:
        """Make ``backend.encode(..., add_special_tokens=True)`` (and so HF) match build_inputs."""
        t, token = TEMPLATES[self.template], self.special_tokens
        if self.kind == "bpe" and self.template == "cls_sep_sep":  # what HF's byte-level BPE classes expect
            self.backend.post_processor = processors.RobertaProcessing(
                (token["sep"], self.sep_id), (token["cls"], self.cls_id), trim_offsets=True, add_prefix_space=False)
        elif self.template != "plain":
            def part(roles: tuple[str, ...], type_id: int) -> list[str]:
                return [f"{token[r]}:{type_id}" for r in roles]

            single = [*part(t.before_a, 0), "$A:0", *part(t.after_a, 0)]
            pair = single + [*part(t.before_b, t.b_type), f"$B:{t.b_type}", *part(t.after_b, t.b_type)]
            self.backend.post_processor = processors.TemplateProcessing(
                single=" ".join(single), pair=" ".join(pair),
                special_tokens=[(token[r], getattr(self, f"{r}_id")) for r in sorted(t.roles)])
        elif self.kind == "bpe":
            self.backend.post_processor = processors.ByteLevel(trim_offsets=False)


def _truncate(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Longest-first, as the ``tokenizers`` library does it: cut the longer text down towards the
    shorter one; if both must go, each keeps half the budget (the longer one the odd token)."""
    if b is None:
        return a[:budget], None
    short, long_ = sorted((len(a), len(b)))
    if short + long_ <= budget:
        return a, b
    long_ = budget - short
    if long_ < short:
        short, long_ = budget // 2, budget - budget // 2
    n_a, n_b = (long_, short) if len(a) > len(b) else (short, long_)
    return a[:n_a], b[:n_b]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return value if isinstance(value, dict) else {}


def _detect_specials(backend: tokenizers.Tokenizer, kind: str) -> dict[str, str]:
    """Special tokens recognised by their well-known strings."""
    has = lambda t: backend.token_to_id(t) is not None  # noqa: E731
    found = {}
    for role, tok in DEFAULT_SPECIALS["wordpiece"].items():
        if has(tok):
            found[role] = tok
    for role, tok in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"), ("unk", "<unk>"), ("mask", "<mask>")):
        if has(tok):
            found.setdefault(role, tok)
    if kind == "bpe" and has("<s>") and has("</s>"):  # RoBERTa / BART
        found.setdefault("cls", "<s>")
        found.setdefault("sep", "</s>")
    if has("<|endoftext|>"):  # GPT-2: one token is bos, eos and unk
        for role in ("bos", "eos", "unk"):
            found.setdefault(role, "<|endoftext|>")
    return found


def _wordpiece_pipeline(model: models.Model, lowercase: bool) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(model)
    # strip_accents=None: strip accents exactly when lowercasing, as BERT uncased does
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _bpe_pipeline(model: models.Model, lowercase: bool) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(model)
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _unigram_pipeline(model: models.Model, lowercase: bool) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(model)
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    # the pipeline transformers' T5Tokenizer builds: whitespace runs (newlines too) become one ▁
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tok


def _trainer(kind: str, vocab_size: int, min_frequency: int, specials: list[str]) -> trainers.Trainer:
    """The ``tokenizers`` trainer of ``kind`` (``vocab_size`` without T5 sentinels, added afterwards)."""
    if kind == "wordpiece":
        return trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                         continuing_subword_prefix="##", show_progress=False)
    if kind == "bpe":
        return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                   show_progress=False)


def _check_alphabet_fits(backend: tokenizers.Tokenizer, kind: str, vocab_size: int, n_special: int,
                         documents: Iterable[str]) -> None:
    """Refuse (one line naming the minimum) a ``vocab_size`` below what the trainer keeps whatever
    it is told: every character of the corpus (WordPiece also each as a ``##`` continuation; Unigram
    one more piece on top) plus the special tokens. Returns when the alphabet is not the reason."""
    chars: set[str] = set()
    for doc in documents:
        text = backend.normalizer.normalize_str(doc) if backend.normalizer is not None else doc
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(text):
            chars.update(word)
    alphabet = f"{len(chars)} characters"
    if kind == "wordpiece":  # trained too small, the vocabulary is just specials + characters + ##continuations
        minimum = backend.get_vocab_size(with_added_tokens=True)
        alphabet += f" and {minimum - n_special - len(chars)} ##continuations"
    elif kind == "unigram":
        minimum = len(chars) + n_special + 1  # measured: below this the trainer grows past vocab_size
        alphabet += " and one more piece"
    else:
        minimum, alphabet = BYTE_ALPHABET + n_special, f"{BYTE_ALPHABET} bytes"
    if vocab_size < minimum:
        _refuse_vocab_size(vocab_size, kind, minimum, alphabet, n_special)


def _refuse_vocab_size(vocab_size: int, kind: str, minimum: int, alphabet: str, n_special: int) -> None:
    raise UserError(f"vocab_size={vocab_size} is too small for this {kind} tokenizer: it needs at least {minimum} "
                    f"(its alphabet of {alphabet}, plus {n_special} special tokens)")


def _renumber_wordpiece(backend: tokenizers.Tokenizer, n_special: int) -> None:
    """WordPiece encodes by longest match over its vocabulary, whatever the ids; the trainer numbers
    pieces in hash-map order, different on each run. Renumbered in a fixed order (the special tokens
    keep theirs, then by kind, length and spelling), the same pieces always get the same ids.
    (The trainer may still pick other pieces when merge counts tie on a large corpus: README.)"""
    vocab = backend.get_vocab(with_added_tokens=False)
    ordered = sorted(vocab, key=vocab.get)
    pieces = sorted(ordered[n_special:], key=lambda t: (t.startswith("##"), len(t), t))
    backend.model = models.WordPiece({t: i for i, t in enumerate(ordered[:n_special] + pieces)},
                                     unk_token="[UNK]", continuing_subword_prefix="##")


_PIPELINES = {"wordpiece": _wordpiece_pipeline, "bpe": _bpe_pipeline, "unigram": _unigram_pipeline}
_EMPTY_MODELS = {"wordpiece": lambda: models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"),
                 "bpe": models.BPE,
                 "unigram": models.Unigram}


MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")


def refuse_to_replace(out_dir: Path) -> None:
    """A UserError when ``out_dir`` is a file, or holds a model or a tokenizer a new tokenizer would
    silently replace (the model's embeddings were trained for the old one)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; --out names the tokenizer's folder")
    model = next((n for n in MODEL_FILES if (out_dir / n).is_file()), None)
    if model is not None:
        raise UserError(f"{out_dir} holds a model ({model}), trained with the tokenizer there: a new tokenizer "
                        "would not match its embeddings; choose another --out, or pass --overwrite to replace it")
    tokenizer = next((n for n in TOKENIZER_FILES if (out_dir / n).is_file()), None)
    if tokenizer is not None:
        raise UserError(f"{out_dir} already holds a tokenizer ({tokenizer}); choose another --out, or pass "
                        "--overwrite to replace it")


def _check_special_tokens(tokens: Sequence[str]) -> None:
    """A special token is a non-empty string without surrounding whitespace: a " " one would
    swallow every space of the text (decode glues the words together)."""
    bad = next((t for t in tokens if not isinstance(t, str) or not t.strip() or t != t.strip()), None)
    if bad is not None:
        raise UserError(f"special token {bad!r}: special tokens must be non-empty, without surrounding whitespace")


def train_tokenizer(files: list[str] | str, *, kind: str, vocab_size: int, out_dir: str | None = None,
                    lowercase: bool = False, min_frequency: int = 2, special_tokens: list[str] | None = None,
                    extra_ids: int = 0, document_split: str = "blank_line", template: str | None = None,
                    text_field: str = "text", overwrite: bool | None = None) -> Tokenizer:
    """Train a tokenizer on the documents of ``files`` (anything :func:`lmzoo.data.iter_documents`
    reads: files, folders, globs; .txt/.md/.jsonl, gzipped or not).

    ``kind``: "wordpiece" (BERT: [PAD]=0 [UNK] [CLS] [SEP] [MASK]), "bpe" (byte-level, RoBERTa:
    <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>), or "unigram" (T5: <pad>=0 </s>=1 <unk>=2, then
    ``extra_ids`` sentinels at the end of the vocabulary with <extra_id_0> last, as in T5).
    ``special_tokens`` are extra special tokens added after the kind's own (e.g. "<|endoftext|>").
    ``vocab_size`` counts every token, sentinels included. ``template``: its special-token layout
    (a key of ``TEMPLATES``, e.g. a family spec's); default "cls_sep" for wordpiece, "cls_sep_sep"
    for bpe, "eos" for unigram. ``text_field``: the column of .jsonl / .csv / .parquet / datasets
    sources that holds the text. With ``out_dir`` the tokenizer is also saved there as an HF
    tokenizer folder. ``overwrite=False`` (the CLI's default) refuses an ``out_dir`` that already
    holds a model or a tokenizer, before training: a new tokenizer's ids do not match a model's
    embeddings. ``None`` (the library default) writes into any folder, as before.
    """
    from lmzoo.data import iter_documents

    if out_dir is not None and overwrite is False:
        refuse_to_replace(Path(out_dir))
    if kind not in KINDS:
        raise UserError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
    if extra_ids < 0 or (extra_ids and kind != "unigram"):
        raise UserError(f"extra_ids must be 0 for {kind!r} and >= 0 for 'unigram', got {extra_ids}")
    if min_frequency < 1:
        raise UserError(f"min_frequency must be >= 1, got {min_frequency}")
    roles = dict(DEFAULT_SPECIALS[kind])
    if kind == "bpe":  # RoBERTa: <s> doubles as the classifier token, </s> as the separator
        roles.update(cls="<s>", sep="</s>")
    if template is not None and (template not in TEMPLATES or TEMPLATES[template].roles - roles.keys()):
        raise UserError(f"template {template!r} does not fit a {kind} tokenizer (its special tokens: "
                        f"{', '.join(roles)}; templates: {', '.join(TEMPLATES)})")
    _check_special_tokens(special_tokens or [])
    user_extra = [t for t in dict.fromkeys(special_tokens or []) if t not in roles.values()]
    specials = list(DEFAULT_SPECIALS[kind].values()) + user_extra
    n_special = len(specials) + extra_ids
    if vocab_size <= n_special:
        raise UserError(f"vocab_size={vocab_size} is too small for the {n_special} special tokens of {kind!r}")
    if kind == "bpe" and vocab_size < BYTE_ALPHABET + n_special:
        _refuse_vocab_size(vocab_size, kind, BYTE_ALPHABET + n_special, f"{BYTE_ALPHABET} bytes", n_special)
    if not files:
        raise UserError("no training files given")

    documents = iter_documents(files, document_split=document_split, text_field=text_field)
    first = next(documents, None)  # resolves the paths and fails early on a missing or empty corpus
    if first is None:
        raise UserError(f"empty corpus: no text in {files!r}")
    documents = itertools.chain([first], documents)

    backend = _PIPELINES[kind](_EMPTY_MODELS[kind](), lowercase)
    trainer = _trainer(kind, vocab_size - extra_ids, min_frequency, specials)
    try:
        backend.train_from_iterator(documents, trainer=trainer)
        failed = None
    except UserError:  # from reading the corpus (a binary file, bad UTF-8): already one line
        raise
    except Exception as e:  # the Rust trainers raise plain Exceptions, e.g. vocab too small for the alphabet
        failed = str(e)
    if failed is not None or backend.get_vocab_size(with_added_tokens=True) > vocab_size - extra_ids:
        # the trainer keeps the whole alphabet, whatever vocab_size says: refuse rather than grow
        documents = iter_documents(files, document_split=document_split, text_field=text_field)
        _check_alphabet_fits(backend, kind, vocab_size, n_special, documents)
        if failed is not None:
            raise UserError(f"training the {kind} tokenizer failed: {failed}")

    if kind == "wordpiece":
        _renumber_wordpiece(backend, len(specials))
    extra = [f"<extra_id_{i}>" for i in range(extra_ids)]
    if extra:
        # T5 order: <extra_id_0> is the last id, <extra_id_{n-1}> the first after the pieces
        backend.add_special_tokens(list(reversed(extra)))
    tok = Tokenizer(backend, kind, roles, lowercase=lowercase,
                    additional_special_tokens=extra + user_extra, template=template)
    tok._attach_post_processor()
    if out_dir is not None:
        tok.save(out_dir)
    return tok
