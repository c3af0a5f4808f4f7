"""Parity with transformers for every family and head, through the production loader, both ways.

For each (architecture, tiny HF config): a random transformers model (fixed seed, eval mode) is saved
with ``save_pretrained``, loaded with ``lmzoo.hf.load_pretrained`` and compared on padded batches
(float32, atol 1e-5: last hidden state, logits, the other outputs both have, loss when labels are
given); then the lmzoo model is saved with its ``save_pretrained``, loaded by transformers with
nothing missing or unexpected, and compared again. Family-specific behaviour (generation, caches,
XLNet's perm_mask / mems, special checkpoints) is tested in each family's file."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from conftest import LABEL2ID, LABELS, assert_close, hf_model, padded_batch, tiny_config
from lmzoo.hf import load_pretrained

LABEL_MAPS = {"id2label": LABELS, "label2id": LABEL2ID}
ROBERTA = {"max_positions": 64, "position_offset": 2}  # HF's 66 positions: 64 after the padding offset 2
# XLNet has no embedding norm: at the default init (0.02) layer 0's attention is so flat that a
# wrongly mapped q / k / r_w_bias changes the outputs by < 1e-5; at 0.1 each one shows
XLNET = {"initializer_range": 0.1}
UNTIED = {"tie_word_embeddings": False}


def case(family: str, arch: str, overrides: dict | None = None, expected: dict | None = None, suffix: str = ""):
    """(family of the tiny config, architecture, config overrides, lmzoo config fields the loader must read)."""
    return pytest.param(family, arch, overrides or {}, expected or {}, id=arch + suffix)


CASES = [
    case("bert", "BertModel"),
    case("bert", "BertForMaskedLM"),
    case("bert", "BertForPreTraining"),
    case("bert", "BertForSequenceClassification", LABEL_MAPS, {"id2label": LABELS}),
    case("bert", "BertForTokenClassification", LABEL_MAPS, {"id2label": LABELS}),
    case("roberta", "RobertaModel", {}, ROBERTA),
    case("roberta", "RobertaForMaskedLM", {}, ROBERTA),
    case("roberta", "RobertaForSequenceClassification", LABEL_MAPS, {"id2label": LABELS, **ROBERTA}),
    case("roberta", "RobertaForTokenClassification", LABEL_MAPS, {"id2label": LABELS, **ROBERTA}),
    case("gpt2", "GPT2Model"),
    case("gpt2", "GPT2LMHeadModel"),
    case("t5", "T5ForConditionalGeneration", {}, {"gated_ffn": False, "tie_embeddings": True}, "-v1.0"),
    case("t5-v1.1", "T5ForConditionalGeneration", {}, {"gated_ffn": True, "tie_embeddings": False}, "-v1.1"),
    case("t5", "T5EncoderModel"),
    case("bart", "BartModel"),
    case("bart", "BartForConditionalGeneration", {}, {"max_positions": 40, "embedding_scale": False}),
    case("bart", "BartForConditionalGeneration", {"scale_embedding": True},
         {"max_positions": 40, "embedding_scale": True}, "-scaled"),
    case("bart", "BartForConditionalGeneration", {"decoder_attention_heads": 2, "decoder_ffn_dim": 80},
         {"n_decoder_heads": 2, "d_decoder_ff": 80}, "-unequal"),
    case("xlnet", "XLNetModel", XLNET),
    case("xlnet", "XLNetLMHeadModel", XLNET),
    case("xlnet", "XLNetForSequenceClassification", {**XLNET, **LABEL_MAPS}, {"id2label": LABELS}),
    # untied LM heads (tie_word_embeddings false; BART then also unties each stack's embed_tokens)
    case("bert", "BertForPreTraining", UNTIED, {"tie_embeddings": False}, "-untied"),
    case("roberta", "RobertaForMaskedLM", UNTIED, {"tie_embeddings": False}, "-untied"),
    case("gpt2", "GPT2LMHeadModel", UNTIED, {"tie_embeddings": False}, "-untied"),
    case("bart", "BartForConditionalGeneration", UNTIED, {"tie_embeddings": False}, "-untied"),
    case("xlnet", "XLNetLMHeadModel", {**XLNET, **UNTIED}, {"tie_embeddings": False}, "-untied"),
]
# our keyword → transformers' (everything else is spelled the same)
HF_NAMES = {"nsp_labels": "next_sentence_label"}
# given labels, these compute logits only at the labelled positions ([n_labelled, vocab], row-major)
SPARSE_LOGITS = {"BertForMaskedLM", "BertForPreTraining", "RobertaForMaskedLM", "XLNetLMHeadModel"}


def batches(family: str, arch: str) -> list[dict]:
    """The inputs a case is compared on: padded batches, and the same with labels where the head
    takes them (with labels, the SPARSE_LOGITS heads compute logits only at labelled positions)."""
    if family in ("bert", "roberta"):
        ids, mask = padded_batch((11, 7, 3), high=101, low=5, pad_id=0 if family == "bert" else 1)
        batch = {"input_ids": ids, "attention_mask": mask}
        if family == "bert":
            batch["token_type_ids"] = torch.zeros_like(ids)
            batch["token_type_ids"][:, 5:] = 1
        if arch.endswith(("ForMaskedLM", "ForPreTraining")):
            labels = torch.full_like(ids, -100)
            labels[0, 2], labels[1, 4], labels[2, 1] = 7, 9, 11
            extra = {"nsp_labels": torch.tensor([0, 1, 0])} if arch.endswith("ForPreTraining") else {}
            return [batch, {**batch, "labels": labels, **extra}]
        if arch.endswith("ForSequenceClassification"):
            return [batch, {**batch, "labels": torch.tensor([2, 0, 1])}]
        if arch.endswith("ForTokenClassification"):
            labels = torch.tensor([[0, 2, 1, 0, 2, 1, 1, -100, 0, 2, 1]] * 3).masked_fill(mask == 0, -100)
            return [batch, {**batch, "labels": labels}]
        return [batch]
    if family == "gpt2":
        ids, mask = padded_batch((9, 6, 3), high=100, low=0, pad_id=100, seed=1, left=True)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = [{"input_ids": ids, "attention_mask": mask, "position_ids": positions}, {"input_ids": ids}]
        if arch == "GPT2LMHeadModel":
            labels = ids.clone()  # unpadded, one position ignored
            labels[0, 4] = -100
            # no label where the previous position is padding (predicted from no token at all)
            after_padding = torch.nn.functional.pad(mask, (1, 0))[:, :-1] == 0
            out += [{**out[0], "labels": ids.masked_fill(after_padding, -100)}, {"input_ids": ids, "labels": labels}]
        return out
    if family.startswith("t5"):
        ids, mask, labels = padded_batch((30, 17, 4), high=97, low=2, pad_id=0, target_length=9)  # > max_distance
        if arch == "T5EncoderModel":
            return [{"input_ids": ids, "attention_mask": mask}]
        return [{"input_ids": ids, "attention_mask": mask, "labels": labels}]
    if family == "bart":
        ids, mask, labels = padded_batch((13, 9, 4), high=97, low=3, pad_id=1, target_length=8)
        if arch == "BartModel":
            dec, dec_mask = padded_batch((6, 6, 4), high=97, low=3, pad_id=1, seed=1)
            return [{"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
                     "decoder_attention_mask": dec_mask},
                    {"input_ids": ids, "attention_mask": mask}]  # no decoder inputs: the input shifted right
        return [{"input_ids": ids, "attention_mask": mask, "labels": labels}]
    # xlnet: left padding, two segments (perm_mask / target_mapping: tests/test_xlnet.py)
    ids, mask = padded_batch((11, 8, 11), high=101, low=6, pad_id=0, left=True)
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if arch == "XLNetLMHeadModel":
        labels = torch.randint(6, 101, ids.shape, generator=torch.Generator().manual_seed(1))
        return [batch, {**batch, "labels": labels.masked_fill(mask == 0, -100)}]
    if arch == "XLNetForSequenceClassification":
        return [batch, {**batch, "labels": torch.tensor([0, 2, 1])}]
    return [batch, {"input_ids": ids}]


def run_hf(model, batch: dict) -> dict:
    """transformers' outputs under lmzoo's names."""
    kw = {HF_NAMES.get(k, k): v for k, v in batch.items()}
    if isinstance(model, transformers.XLNetPreTrainedModel):
        kw["use_mems"] = False
    with torch.no_grad():
        ref = model(**kw, output_hidden_states=True)

    def get(*names):  # the first of these fields that this output class has
        return next((getattr(ref, n) for n in names if getattr(ref, n, None) is not None), None)

    hidden = get("last_hidden_state")
    if hidden is None:  # a head's output: the last of the (decoder's) hidden states
        hidden = get("decoder_hidden_states", "hidden_states")[-1]
    out = {"last_hidden_state": hidden, "logits": get("logits", "prediction_logits"),
           "pooler_output": get("pooler_output"), "nsp_logits": get("seq_relationship_logits"),
           "encoder_last_hidden_state": get("encoder_last_hidden_state"), "loss": get("loss")}
    return {k: v for k, v in out.items() if v is not None}


def compare(ours, batch: dict, ref: dict, keep: torch.Tensor | None) -> None:
    """Every output transformers has equals ours: at least the last hidden state, and the logits
    exactly when ours has logits; per-token outputs where ``keep`` [B, S] is 1 (None: everywhere,
    padding included)."""
    with torch.no_grad():
        out = ours(**batch)
    assert "last_hidden_state" in ref and ("logits" in ref) == (out.logits is not None), sorted(ref)
    for name, expected in ref.items():
        actual = getattr(out, name)
        assert actual is not None, name
        if name == "logits" and "labels" in batch and ours.hf_architecture in SPARSE_LOGITS:
            expected = expected[batch["labels"] != -100]
        assert_close(actual, expected, keep if actual.dim() == 3 else None)


@pytest.mark.parametrize("family,arch,overrides,expected", CASES)
def test_parity_and_round_trip(tmp_path, capsys, family, arch, overrides, expected):
    hf_cls = getattr(transformers, arch)
    hf = hf_model(hf_cls, tiny_config(family, **overrides), tmp_path / "hf", untie=family == "t5-v1.1" or overrides.get("tie_word_embeddings") is False)
    capsys.readouterr()  # transformers' progress bars
    ours = load_pretrained(tmp_path / "hf")
    assert capsys.readouterr().err == ""  # no missing or ignored weights (they would be noted)
    assert type(ours).__name__ == arch
    assert {k: getattr(ours.config, k) for k in expected} == expected
    inputs = batches(family, arch)
    # padded positions are compared too, except GPT-2's left padding: a position that sees no token
    # at all, whose values are a convention
    keeps = [batch.get("attention_mask") if family == "gpt2" else None for batch in inputs]
    for batch, keep in zip(inputs, keeps):
        compare(ours, batch, run_hf(hf, batch), keep)

    # round trip: lmzoo → HF folder → transformers, nothing missing or unexpected, same outputs
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [arch]  # Auto* classes
    back, info = hf_cls.from_pretrained(tmp_path / "ours", output_loading_info=True)
    back.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert (back.config.id2label, back.config.label2id) == (hf.config.id2label, hf.config.label2id)

    def tied(model) -> bool:
        head = model.get_output_embeddings()
        return head is not None and head.weight is model.get_input_embeddings().weight

    assert tied(back) == tied(hf)
    for batch, keep in zip(inputs, keeps):
        compare(ours, batch, run_hf(back, batch), keep)
