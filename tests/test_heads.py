"""Sequence / token classification heads of BERT and RoBERTa beyond the shared parity harness
(tests/test_parity.py): every loss kind against transformers, bodies and heads loaded across
classes, and the shared pooling pieces other families plug in."""

from __future__ import annotations

import pytest
import torch
import transformers

import lmzoo
from conftest import LABEL2ID, LABELS, assert_close, hf_model, padded_batch, tiny_config
from lmzoo.models.bert import BertForSequenceClassification, BertModel
from lmzoo.nn.heads import last_token, last_token_of
from lmzoo.nn.loss import sequence_classification_loss


@pytest.mark.parametrize("problem", ["multi_label_classification", "regression"])
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_sequence_losses_match_hf(tmp_path, family, problem):
    n = 1 if problem == "regression" else 3
    labels_map = {i: f"L{i}" for i in range(n)}
    config = tiny_config(family, problem_type=problem, id2label=labels_map,
                         label2id={v: k for k, v in labels_map.items()})
    hf_cls = getattr(transformers, f"{family.capitalize()}ForSequenceClassification")
    hf = hf_model(hf_cls, config, tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    assert ours.config.problem_type == problem and ours.config.num_labels == n
    ids, mask = padded_batch((11, 7, 3), high=101, low=5, pad_id=0 if family == "bert" else 1)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]) if n == 3 else torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        out = ours(input_ids=ids, attention_mask=mask, labels=labels)
    assert_close(out.logits, ref.logits)
    assert_close(out.loss, ref.loss)


def test_bare_encoder_folder_loads_into_a_classifier(tmp_path, capsys):
    """A BertModel folder (like the MiniLM checkpoint) gives the body; the head starts random, with a note."""
    body = hf_model(transformers.BertModel, tiny_config("bert", id2label=LABELS, label2id=LABEL2ID), tmp_path)
    clf = BertForSequenceClassification.from_pretrained(tmp_path)
    assert "classifier" in capsys.readouterr().err
    ids, mask = padded_batch((11, 7, 3), high=101, low=5, pad_id=0)
    with torch.no_grad():
        ref = body(input_ids=ids, attention_mask=mask)
        out = clf(input_ids=ids, attention_mask=mask)
    assert_close(out.pooler_output, ref.pooler_output)
    assert out.logits.shape == (3, 3)
    # and back: the classifier folder loads as a bare BertModel (the head is ignored)
    clf.save_pretrained(tmp_path / "clf")
    bare = BertModel.from_pretrained(tmp_path / "clf")
    with torch.no_grad():
        assert_close(bare(input_ids=ids, attention_mask=mask).pooler_output, ref.pooler_output)


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
    from lmzoo.models.bert import BertForMaskedLM
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
