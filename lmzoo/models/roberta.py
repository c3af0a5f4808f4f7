"""RoBERTa: BERT's encoder with positions counted after the padding index and one token type
(Liu et al., 2019). Trained with dynamic MLM on packed full sentences, no NSP."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.models.base import FamilySpec
from lmzoo.models.bert import (BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification, BertModel,
                               config_from_hf as bert_config_from_hf, config_to_hf as bert_config_to_hf)
from lmzoo.nn.heads import ClassificationHead, first_token
from lmzoo.outputs import ModelOutput


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """HF RobertaConfig dict → ModelConfig: the position table has pad_token_id + 1 rows before position 0."""
    pad = hf.get("pad_token_id", 1)
    offset = pad + 1
    return bert_config_from_hf({**hf, "position_embedding_type": "absolute"}).replace(
        family="roberta",
        max_positions=hf.get("max_position_embeddings", 514) - offset,
        position_offset=offset,
        type_vocab_size=hf.get("type_vocab_size", 1),
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        pad_token_id=pad,
        bos_token_id=hf.get("bos_token_id", 0),
        eos_token_id=hf.get("eos_token_id", 2),
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    return {
        **bert_config_to_hf(config),
        "model_type": "roberta",
        "max_position_embeddings": config.max_positions + config.position_offset,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
    }


class RobertaFamily:
    """What every RoBERTa class overrides of the BERT class it extends."""

    model_types = ("roberta",)
    config_from_hf = staticmethod(config_from_hf)
    config_to_hf = staticmethod(config_to_hf)


class RobertaModel(RobertaFamily, BertModel):
    hf_architecture = "RobertaModel"
    prefix_in_heads = "roberta"

    def default_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions count non-padding tokens only; padding sits at position -1, which the
        offset turns into row pad_token_id of the table, exactly as fairseq/HF do."""
        not_pad = (input_ids != self.config.pad_token_id).long()
        return torch.cumsum(not_pad, dim=1) * not_pad - 1


class RobertaForMaskedLM(RobertaFamily, BertForMaskedLM):
    hf_architecture = "RobertaForMaskedLM"
    base_prefix = "roberta"
    base_class = RobertaModel
    head_key_map = [
        ("lm_head.dense", "mlm_head.dense"),
        ("lm_head.layer_norm", "mlm_head.norm"),
    ]
    output_prefix = "lm_head"


class RobertaForSequenceClassification(RobertaFamily, BertForSequenceClassification):
    """No pooler: the <s> state → dropout → dense → tanh → dropout → out_proj (HF's RobertaClassificationHead)."""

    hf_architecture = "RobertaForSequenceClassification"
    base_prefix = "roberta"
    base_class = RobertaModel
    add_pooler = False
    head_key_map = [("classifier.dense", "classifier.dense"), ("classifier.out_proj", "classifier.out_proj")]

    def make_classifier(self, config: ModelConfig) -> nn.Module:
        return ClassificationHead(config)

    def classify(self, out: ModelOutput) -> torch.Tensor:
        return self.classifier(first_token(out.last_hidden_state))


class RobertaForTokenClassification(RobertaFamily, BertForTokenClassification):
    hf_architecture = "RobertaForTokenClassification"
    base_prefix = "roberta"
    base_class = RobertaModel


SPEC = FamilySpec(
    name="roberta",
    architectures=(RobertaForMaskedLM, RobertaModel, RobertaForSequenceClassification, RobertaForTokenClassification),
    tokenizer_kind="bpe",
    template="cls_sep_sep",  # <s> A </s></s> B </s>, one token type
    objectives={"mlm": RobertaForMaskedLM},
)
