"""Objective units, family specs and tokenizer templates: options written once (dataclass ↔ CLI
flags), defaults from the specs, templates that survive save/load, and each unit's batches."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import random
from types import SimpleNamespace

import pytest
import tokenizers
import torch
from tokenizers import models, pre_tokenizers

from lmzoo.cli import build_parser, main, objective_options_from_args
from lmzoo.errors import UserError
from lmzoo.models import FAMILIES, OBJECTIVE_FAMILIES, family_spec
from lmzoo.objectives import OBJECTIVES, objectives_by_options
from lmzoo.objectives.clm import CLMConfig
from lmzoo.objectives.denoising import DenoisingConfig
from lmzoo.objectives.mlm import IGNORE_INDEX, MLMConfig
from lmzoo.objectives.plm import PLMConfig
from lmzoo.objectives.span_corruption import SpanCorruptionConfig, sentinel_ids_of
from lmzoo.options import flag_name
from lmzoo.presets import PRESETS, preset_config
from lmzoo.pretrain import prepare_tokenizer, pretrain, resolve_objective
from lmzoo.tokenizer import TEMPLATES, Tokenizer
from lmzoo.train.loop import TrainConfig

# every field of every options dataclass away from its default, and valid
NON_DEFAULT = [
    MLMConfig(mask_prob=0.2, mask_token_prob=0.7, random_token_prob=0.2, whole_word=True),
    CLMConfig(cross_document_attention=True),
    PLMConfig(k=4.0, max_span=3),
    SpanCorruptionConfig(noise_density=0.25, mean_span_length=2.0),
    DenoisingConfig(infill_rate=0.2, poisson_lambda=2.5, mask_rate=0.1, delete_rate=0.05, permute_sentences=False,
                    rotate=True),
]
# what `lmzoo pretrain --preset X` trained before family specs existed: the CLI contract
DEFAULT_OBJECTIVES = {"bert": "mlm+nsp", "roberta": "mlm", "gpt2": "clm", "t5": "span", "bart": "denoise",
                      "xlnet": "plm"}
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def preset_of(family: str) -> str:
    return next(p for p in PRESETS if preset_config(p).family == family)


def flags_of(options) -> list[str]:
    """The command-line flags that set ``options`` (nothing for a default value)."""
    flags = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value != f.default:
            flags += [flag_name(f)] if isinstance(value, bool) else [flag_name(f), str(value)]
    return flags


def parse_pretrain(*flags) -> object:
    return build_parser().parse_args(["pretrain", "--out", "unused", *[str(f) for f in flags]])


@pytest.mark.parametrize("options", NON_DEFAULT, ids=lambda o: type(o).__name__)
def test_options_round_trip_through_their_flags(options):
    cls = type(options)
    assert all(getattr(options, f.name) != f.default for f in dataclasses.fields(cls))  # every flag exercised
    units = objectives_by_options()[cls]
    for unit in units:
        preset = preset_of(OBJECTIVE_FAMILIES[unit.name][0])
        args = parse_pretrain("--preset", preset, "--objective", unit.name, *flags_of(options))
        assert resolve_objective(preset, unit.name) is unit
        assert objective_options_from_args(args, unit) == options
        defaults = parse_pretrain("--preset", preset, "--objective", unit.name)
        assert objective_options_from_args(defaults, unit) == cls()


def test_every_objective_has_a_unit_and_distinct_flag_destinations():
    assert set(OBJECTIVES) == set(OBJECTIVE_FAMILIES)  # every objective a family trains with has a unit
    assert {type(o) for o in NON_DEFAULT} == set(objectives_by_options())
    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    pretrain_parser = verbs.choices["pretrain"]
    dests = collections.Counter(a.dest for a in pretrain_parser._actions)
    assert max(dests.values()) == 1, [d for d, n in dests.items() if n > 1]  # no option reads another's value


@pytest.mark.parametrize("flags,message", [
    (["--preset", "bert-tiny", "--mask-prob", 0], "mask_prob must be in (0, 1)"),
    (["--preset", "roberta-tiny", "--mask-token-prob", 0.9, "--random-token-prob", 0.2], "must be <= 1"),
    (["--preset", "gpt-tiny", "--whole-word"], "--whole-word is an option of objective mlm / mlm+nsp, not of clm"),
    (["--preset", "xlnet-tiny", "--plm-k", 1], "--plm-k must be a number > 1"),
    (["--preset", "xlnet-tiny", "--max-span", 0], "--max-span must be >= 1"),
    (["--preset", "t5-tiny", "--noise-density", 1.0], "noise_density must be in (0, 1)"),
    (["--preset", "t5-tiny", "--mean-span-length", 0.5], "mean_span_length must be a number >= 1"),
    (["--preset", "bart-tiny", "--infill-rate", 1.5], "infill_rate must be in [0, 1)"),
    (["--preset", "bart-tiny", "--poisson-lambda", 0], "poisson_lambda must be in [0.1, 10000]"),
    # non-finite or extreme values: they used to fail inside numpy mid-run, or hang
    (["--preset", "t5-tiny", "--mean-span-length", "nan"], "mean_span_length must be a number >= 1"),
    (["--preset", "t5-tiny", "--mean-span-length", "inf"], "mean_span_length must be a number >= 1"),
    (["--preset", "bart-tiny", "--poisson-lambda", "1e-6"], "poisson_lambda must be in [0.1, 10000]"),
    (["--preset", "bart-tiny", "--poisson-lambda", "nan"], "poisson_lambda must be in"),
    (["--preset", "bart-tiny", "--poisson-lambda", "1e30"], "poisson_lambda must be in"),
    (["--preset", "xlnet-tiny", "--plm-k", "inf"], "--plm-k must be a number > 1"),
    (["--preset", "bart-tiny", "--infill-rate", 0, "--no-permute-sentences"], "every noise is off"),
    (["--preset", "bart-tiny", "--noise-density", 0.3], "--noise-density is an option of objective span"),
    (["--preset", "t5-tiny", "--objective", "mlm"], "objective mlm trains bert / roberta presets, not t5"),
    (["--preset", "bert-tiny", "--objective", "nope"], "unknown objective 'nope'"),
    (["--preset", "bert-tiny", "--seq-len", 4], "--seq-len must be >= 8"),
])
def test_a_bad_option_is_one_line_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code = main(["pretrain", "--out", str(out), *[str(f) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()  # no tokenizer trained, nothing written


def test_options_are_checked_by_their_dataclass_and_by_pretrain(tmp_path):
    for bad in (dict(mask_prob=1.5), dict(whole_word="yes")):
        with pytest.raises(UserError):
            MLMConfig(**bad)
    with pytest.raises(UserError, match="cross_document_attention"):
        CLMConfig(cross_document_attention=1)
    with pytest.raises(UserError, match="objective clm takes CLMConfig options, got MLMConfig"):
        pretrain(preset="gpt-tiny", objective="clm", options=MLMConfig(), data="unused", out=tmp_path / "run",
                 train_config=TrainConfig(max_steps=1))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_presets_default_objective_comes_from_its_family_spec(preset):
    family = preset_config(preset).family
    unit = resolve_objective(preset)
    assert unit.name == family_spec(family).default_objective == DEFAULT_OBJECTIVES[family]
    assert set(FAMILIES) == set(DEFAULT_OBJECTIVES)


# ---------------------------------------------------------------- tokenizer templates

def toy_tokenizer(kind: str, template: str | None, roles=("pad", "cls", "sep", "eos")) -> Tokenizer:
    """A word-level tokenizer with known ids: [PAD]=0 [CLS]=1 [SEP]=2 </s>=3, words from 10."""
    names = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "eos": "</s>"}
    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "</s>": 3, **{w: 10 + i for i, w in enumerate(NUMBERS)}}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([names[r] for r in roles])
    return Tokenizer(backend, kind, {r: names[r] for r in roles}, template=template)


@pytest.mark.parametrize("kind,template,single,pair,types", [
    ("wordpiece", "cls_sep", [1, 10, 11, 2], [1, 10, 11, 2, 12, 2], [0, 0, 0, 0, 1, 1]),
    ("bpe", "cls_sep_sep", [1, 10, 11, 2], [1, 10, 11, 2, 2, 12, 2], [0] * 7),
    ("unigram", "eos", [10, 11, 3], [10, 11, 3, 12, 3], [0] * 5),
    ("bpe", "plain", [10, 11], [10, 11, 12], [0] * 3),
    ("unigram", "plain", [10, 11], [10, 11, 12], [0] * 3),
])
def test_build_inputs_of_each_template(kind, template, single, pair, types):
    tok = toy_tokenizer(kind, template)
    assert tok.template == template
    assert tok.build_inputs([10, 11]) == (single, [0] * len(single))
    assert tok.build_inputs([10, 11], [12]) == (pair, types)
    assert tok.num_special_tokens_to_add(False) == len(single) - 2
    assert tok.num_special_tokens_to_add(True) == len(pair) - 3
    tok._attach_post_processor()  # what HF and backend.encode add agrees (types are build_inputs' job)
    assert tok.backend.encode("zero one", "two").ids == pair


def test_templates_are_inferred_structurally_and_checked():
    assert toy_tokenizer("wordpiece", None).template == "cls_sep"
    assert toy_tokenizer("bpe", None).template == "cls_sep_sep"
    assert toy_tokenizer("unigram", None).template == "eos"
    assert toy_tokenizer("unigram", None, roles=("pad",)).template == "plain"
    with pytest.raises(UserError, match="needs cls and sep"):
        toy_tokenizer("wordpiece", "cls_sep", roles=("pad", "eos"))
    with pytest.raises(UserError, match="template must be one of"):
        toy_tokenizer("wordpiece", "bert")
    assert set(TEMPLATES) == {spec.template for spec in FAMILIES.values()} | {"plain"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    docs = []
    for _ in range(60):
        start = rng.randrange(0, 4)
        docs.append("\n".join(" ".join(NUMBERS[start + s + k] for k in range(4)) + "." for s in range(6)))
    path = tmp_path_factory.mktemp("corpus") / "numbers.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.fixture(scope="module")
def family_tokenizers(corpus, tmp_path_factory):
    """family → (tokenizer, folder) as pretraining trains them (prepare_tokenizer)."""
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        preset = preset_of(family)
        tok = prepare_tokenizer(preset=preset, unit=resolve_objective(preset), data=[str(corpus)], out=folder,
                                tokenizer_path=None, vocab_size=261, lowercase=False)
        out[family] = (tok, folder)
    return out


@pytest.mark.parametrize("family", list(DEFAULT_OBJECTIVES))
def test_a_pretraining_tokenizer_has_its_familys_template_after_save_and_load(family_tokenizers, family):
    tok, folder = family_tokenizers[family]
    spec = family_spec(family)
    assert (tok.kind, tok.template) == (spec.tokenizer_kind, spec.template)
    assert json.loads((folder / "tokenizer_config.json").read_text())["lmzoo_template"] == spec.template
    again = Tokenizer.load(folder)
    assert again.template == spec.template
    a, b = tok.encode("three four five."), tok.encode("six seven.")
    assert again.build_inputs(a, b) == tok.build_inputs(a, b)
    assert tok.backend.encode("three four five.", "six seven.").ids == tok.build_inputs(a, b)[0]
    n_added = {"cls_sep": 3, "cls_sep_sep": 4, "eos": 2, "plain": 0}[spec.template]
    assert len(tok.build_inputs(a, b)[0]) == len(a) + len(b) + n_added


def test_a_folder_without_the_template_key_infers_it(family_tokenizers, tmp_path):
    # an HF folder says nothing: the template comes from the kind and the special tokens present
    for family, expected in (("bert", "cls_sep"), ("roberta", "cls_sep_sep"), ("t5", "eos"), ("xlnet", "eos")):
        _, folder = family_tokenizers[family]
        copy = tmp_path / family
        copy.mkdir()
        for name in ("tokenizer.json", "special_tokens_map.json"):
            (copy / name).write_bytes((folder / name).read_bytes())
        assert Tokenizer.load(copy).template == expected


# ---------------------------------------------------------------- each unit's data

class Perfect(SimpleNamespace):
    """A model output whose logits put all their mass on ``targets``."""

    def __init__(self, targets: torch.Tensor, vocab_size: int, **extra):
        super().__init__(logits=torch.nn.functional.one_hot(targets.clamp(min=0), vocab_size).float(), **extra)


@pytest.mark.parametrize("family", list(DEFAULT_OBJECTIVES))
def test_each_default_objective_builds_batches_of_its_recipe(family_tokenizers, corpus, family, tmp_path):
    from lmzoo.data import TokenizedCorpus

    tok, _ = family_tokenizers[family]
    unit = resolve_objective(preset_of(family))
    train, held_out = TokenizedCorpus.build([str(corpus)], tok, tmp_path / "cache").split(0.2, seed=0)
    seq_len = 32
    setup = unit.build(tok, train, held_out, unit.options(), seq_len=seq_len, seed=0)
    assert len(setup.train_data) >= 16 and len(setup.eval_data) >= 1
    batch = setup.collate([setup.train_data[i] for i in range(16)], torch.Generator().manual_seed(0))
    ids, labels = batch["input_ids"], batch["labels"]
    if unit.name in ("mlm", "mlm+nsp"):
        assert ids.shape[1] <= seq_len
        structural = torch.isin(ids, torch.tensor([tok.cls_id, tok.sep_id]))  # never chosen, so never changed
        chosen = (labels != IGNORE_INDEX).sum() / (batch["attention_mask"].sum() - structural.sum())
        assert 0.08 < chosen < 0.25  # ~15% of the other tokens
        output = Perfect(labels, tok.vocab_size, nsp_logits=torch.nn.functional.one_hot(
            batch.get("nsp_labels", torch.zeros(len(ids), dtype=torch.long)), 2).float())
    elif unit.name == "clm":
        assert ids.shape == (16, seq_len)  # packed full rows
        output = Perfect(labels.roll(-1, dims=1), tok.vocab_size)  # logits at t predict t + 1
    elif unit.name == "plm":
        assert ids.shape == (16, seq_len)
        assert batch["target_mapping"].shape == (16, math.ceil(seq_len / 6) + 5, seq_len)
        output = Perfect(labels, tok.vocab_size)
    elif unit.name == "span":
        assert ids.shape == (16, seq_len)  # the corrupted inputs fill seq_len exactly
        sentinels = torch.isin(ids, torch.tensor(sentinel_ids_of(tok)))
        assert (sentinels.sum(1) >= 1).all() and len(sentinel_ids_of(tok)) == unit.extra_ids == 100
        output = Perfect(labels, tok.vocab_size)
    else:  # denoise: bos + noised + eos in, bos + original + eos out
        assert ids.shape[1] <= seq_len and (ids[:, 0] == tok.bos_id).all() and (labels[:, 0] == tok.bos_id).all()
        output = Perfect(labels, tok.vocab_size)
    sums = setup.metrics_fn(batch, output)
    prefix = {"mlm": "mlm", "mlm+nsp": "mlm", "clm": "clm", "plm": "plm", "span": "token", "denoise": "token"}
    correct, total = sums[f"{prefix[unit.name]}_correct"], sums[f"{prefix[unit.name]}_total"]
    assert total > 0 and correct == total  # a perfect model scores 100%


@pytest.mark.parametrize("family,flags,message", [
    # 113 spans per row of 512 need more than the tokenizer's 100 sentinels: it used to fail at the first batch
    ("t5", ["--seq-len", "512", "--noise-density", "0.3", "--mean-span-length", "1.5"],
     "113 noise spans per row of 512 tokens but the tokenizer has only 100 sentinels"),
    # a span longer than the row: the prediction rows (one per token of the longest span) ran out of memory
    ("xlnet", ["--seq-len", "32", "--max-span", "1000000000"], "--max-span 1000000000 is longer than a row"),
])
def test_an_objective_that_does_not_fit_the_tokenizer_or_row_is_refused_before_training(
        corpus, family_tokenizers, tmp_path, capsys, family, flags, message):
    out = tmp_path / "run"
    code = main(["pretrain", "--preset", preset_of(family), "--data", str(corpus), "--tokenizer",
                 str(family_tokenizers[family][1]), "--out", str(out), "--max-steps", "1", "--batch-size", "1",
                 "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()  # the refused fresh run leaves nothing behind
