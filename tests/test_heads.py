"""Sequence / token classification heads of BERT and RoBERTa: parity with transformers through the
production loader (logits and every loss kind), round trip both ways with label maps, and the
shared pooling pieces other families plug in."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import lmzoo
from lmzoo.models.bert import BertForSequenceClassification, BertModel
from lmzoo.nn.heads import last_token, last_token_of, sequence_classification_loss

ATOL = 1e-5
LABELS = {0: "neg", 1: "neu", 2: "pos"}


def hf_config(family: str, **kw):
    common = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **kw)
    if family == "bert":
        return transformers.BertConfig(max_position_embeddings=64, **common)
    return transformers.RobertaConfig(max_position_embeddings=66, **common)


def hf_model(cls, config, folder):
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # non-trivial biases and norms: a wrongly mapped one cannot hide behind 0 / 1
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return model


def batch(pad_id: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 101, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


CASES = [
    ("bert", transformers.BertForSequenceClassification),
    ("bert", transformers.BertForTokenClassification),
    ("roberta", transformers.RobertaForSequenceClassification),
    ("roberta", transformers.RobertaForTokenClassification),
]


@pytest.mark.parametrize("family,hf_cls", CASES, ids=[c.__name__ for _, c in CASES])
def test_head_parity_and_round_trip(tmp_path, family, hf_cls):
    hf = hf_model(hf_cls, hf_config(family), tmp_path / "hf")
    ours = lmzoo.from_pretrained(tmp_path / "hf")
    assert type(ours).__name__ == hf_cls.__name__
    assert ours.config.id2label == LABELS
    ids, mask = batch(0 if family == "bert" else 1)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1 if family == "bert" else 0
    token_level = "Token" in hf_cls.__name__
    labels = torch.tensor([[0, 2, 1, 0, 2, 1, 1, -100, 0, 2, 1]] * 3) if token_level else torch.tensor([2, 0, 1])
    if token_level:
        labels[mask == 0] = -100
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        out = ours(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    keep = mask.bool() if token_level else slice(None)
    assert torch.allclose(out.logits[keep], ref.logits[keep], atol=ATOL)
    assert torch.allclose(out.loss, ref.loss, atol=ATOL)

    # ours → HF folder → transformers: same logits, label maps intact
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["architectures"] == [hf_cls.__name__]
    assert saved["label2id"] == {"neg": 0, "neu": 1, "pos": 2}
    back = hf_cls.from_pretrained(tmp_path / "ours").eval()
    assert back.config.id2label == LABELS
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert torch.allclose(again[keep], out.logits[keep], atol=ATOL)


@pytest.mark.parametrize("problem", ["multi_label_classification", "regression"])
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_sequence_losses_match_hf(tmp_path, family, problem):
    n = 1 if problem == "regression" else 3
    labels_map = {i: f"L{i}" for i in range(n)}
    config = hf_config(family, problem_type=problem)
    config.id2label, config.label2id = labels_map, {v: k for k, v in labels_map.items()}
    hf_cls = getattr(transformers, f"{family.capitalize()}ForSequenceClassification")
    hf = hf_model(hf_cls, config, tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    assert ours.config.problem_type == problem and ours.config.num_labels == n
    ids, mask = batch(0 if family == "bert" else 1)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]) if n == 3 else torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        out = ours(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.allclose(out.logits, ref.logits, atol=ATOL)
    assert torch.allclose(out.loss, ref.loss, atol=ATOL)


def test_bare_encoder_folder_loads_into_a_classifier(tmp_path, capsys):
    """A BertModel folder (like the MiniLM checkpoint) gives the body; the head starts random, with a note."""
    body = hf_model(transformers.BertModel, hf_config("bert"), tmp_path)
    clf = BertForSequenceClassification.from_pretrained(tmp_path)
    assert "classifier" in capsys.readouterr().err
    ids, mask = batch(0)
    with torch.no_grad():
        ref = body(input_ids=ids, attention_mask=mask)
        out = clf(input_ids=ids, attention_mask=mask)
    assert torch.allclose(out.pooler_output, ref.pooler_output, atol=ATOL)
    assert out.logits.shape == (3, 3)
    # and back: the classifier folder loads as a bare BertModel (the head is ignored)
    clf.save_pretrained(tmp_path / "clf")
    bare = BertModel.from_pretrained(tmp_path / "clf")
    with torch.no_grad():
        assert torch.allclose(bare(input_ids=ids, attention_mask=mask).pooler_output, ref.pooler_output, atol=ATOL)


def test_pooling_helpers_pick_the_right_positions():
    hidden = torch.arange(2 * 5, dtype=torch.float).view(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])  # right- and left-padded
    assert last_token(hidden, mask).flatten().tolist() == [2.0, 9.0]
    ids = torch.tensor([[0, 7, 2, 9, 2], [0, 2, 5, 5, 1]])
    assert last_token_of(hidden, ids, 2).flatten().tolist() == [4.0, 6.0]


def test_problem_type_guess_follows_hf():
    config = lmzoo.from_preset("bert-tiny").config.replace(id2label={0: "a", 1: "b"})
    logits = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    ce = sequence_classification_loss(config, logits, torch.tensor([0, 1]))
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])))
    bce = sequence_classification_loss(config, logits, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(bce, torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0.0], [0.0, 1.0]])))
    one = config.replace(id2label={0: "LABEL_0"})
    mse = sequence_classification_loss(one, torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))
    assert mse.item() == pytest.approx((1.0 + 4.0) / 2)


def test_mlm_only_bert_checkpoint_loads_into_a_classifier_with_a_fresh_pooler(tmp_path, capsys):
    """RoBERTa-style MLM pretraining saves no pooler; a classifier starts it from random init, as HF does."""
    import lmzoo
    from lmzoo.models.bert import BertForMaskedLM, BertForSequenceClassification
    from lmzoo.presets import preset_config

    torch.manual_seed(0)
    mlm = BertForMaskedLM(preset_config("bert-tiny", vocab_size=50, d_model=32, n_heads=2, d_ff=64, max_positions=16))
    mlm.save_pretrained(tmp_path)
    classifier = BertForSequenceClassification.from_pretrained(tmp_path)
    assert "pooler" in capsys.readouterr().err
    assert classifier.encoder.pooler is not None
    for name, p in mlm.encoder.named_parameters():
        assert torch.equal(p, dict(classifier.encoder.named_parameters())[name]), name
    assert lmzoo.from_pretrained(tmp_path).__class__ is BertForMaskedLM
