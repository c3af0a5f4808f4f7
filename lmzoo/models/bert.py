"""BERT: post-LN encoder with token types, pooler, tied MLM head and NSP head (Devlin et al., 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmzoo.config import ModelConfig, activation_from_hf, activation_to_hf, label_map_from_hf, label_map_to_hf
from lmzoo.errors import UserError
from lmzoo.models.base import FamilySpec, PreTrainedModel
from lmzoo.weights import prefixed
from lmzoo.nn.dropout import Dropout
from lmzoo.nn.embedding import Embeddings
from lmzoo.nn.ffn import activation_fn
from lmzoo.nn.heads import classifier_dropout
from lmzoo.nn.loss import masked_lm_loss, sequence_classification_loss, token_classification_loss, token_cross_entropy
from lmzoo.nn.norm import make_norm
from lmzoo.nn.stack import Stack
from lmzoo.outputs import ModelOutput

def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """HF BertConfig dict → ModelConfig."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"unsupported position_embedding_type {hf['position_embedding_type']!r} (only absolute)")
    return ModelConfig(
        family="bert",
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_positions=hf.get("max_position_embeddings", 512),
        tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        embedding_norm=True,
        activation=activation_from_hf(hf.get("hidden_act", "gelu")),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        classifier_dropout=hf.get("classifier_dropout"),
        pad_token_id=hf.get("pad_token_id", 0),
        id2label=label_map_from_hf(hf),
        problem_type=hf.get("problem_type"),
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig → HF BertConfig dict."""
    return {
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "intermediate_size": config.d_ff,
        "hidden_act": activation_to_hf(config.activation),
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_positions,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "classifier_dropout": config.classifier_dropout,
        "tie_word_embeddings": config.tie_embeddings,
        **label_map_to_hf(config),
    }


# HF module path (inside BertModel) → lmzoo module path; "{}" = layer index, None = drop on load.
ENCODER_KEY_MAP: list[tuple[str, str | None]] = [
    ("embeddings.word_embeddings", "embed.tokens"),
    ("embeddings.position_embeddings", "embed.positions"),
    ("embeddings.token_type_embeddings", "embed.token_types"),
    ("embeddings.LayerNorm", "embed.norm"),
    ("embeddings.position_ids", None),  # buffers that older checkpoints carry
    ("embeddings.token_type_ids", None),
    ("encoder.layer.{}.attention.self.query", "layers.{}.attn.q"),
    ("encoder.layer.{}.attention.self.key", "layers.{}.attn.k"),
    ("encoder.layer.{}.attention.self.value", "layers.{}.attn.v"),
    ("encoder.layer.{}.attention.output.dense", "layers.{}.attn.o"),
    ("encoder.layer.{}.attention.output.LayerNorm", "layers.{}.attn_norm"),
    ("encoder.layer.{}.intermediate.dense", "layers.{}.ffn.up"),
    ("encoder.layer.{}.output.dense", "layers.{}.ffn.down"),
    ("encoder.layer.{}.output.LayerNorm", "layers.{}.ffn_norm"),
    ("pooler.dense", "pooler"),
]


class BertPreTrainedModel(PreTrainedModel):
    model_types = ("bert",)
    config_from_hf = staticmethod(config_from_hf)
    config_to_hf = staticmethod(config_to_hf)


class BertModel(BertPreTrainedModel):
    """The bare encoder: embeddings → post-LN blocks → (pooler)."""

    hf_architecture = "BertModel"
    prefix_in_heads = "bert"
    fresh_modules = ("pooler",)

    def __init__(self, config: ModelConfig, *, add_pooler: bool = True, init: bool = True) -> None:
        """``init=False``: a head model builds this body and initialises everything once itself."""
        super().__init__(config)
        self.embed = Embeddings(config)
        self.layers = Stack(config, config.n_layers)
        self.pooler = nn.Linear(config.d_model, config.d_model) if add_pooler else None
        if init:
            self.init_weights()

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return ENCODER_KEY_MAP

    def default_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        return None  # 0..T-1

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        if input_ids.shape[1] > self.config.max_positions:
            raise UserError(f"sequence of {input_ids.shape[1]} tokens exceeds max_positions {self.config.max_positions}")
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids)
        x = self.layers(self.embed(input_ids, position_ids, token_type_ids), attention_mask=attention_mask)  # (B, T, D)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return ModelOutput(last_hidden_state=x, pooler_output=pooled)


class EncoderHeadModel(BertPreTrainedModel):
    """A task head over the encoder (``self.encoder``); its HF keys are the body's under
    ``base_prefix`` ("bert.", "roberta.") followed by ``head_key_map``."""

    base_prefix = "bert"
    base_class = BertModel
    fresh_modules = ("encoder.pooler",)
    head_key_map: list[tuple[str, str | None]] = []

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        return prefixed(cls.base_class.hf_key_map(config), cls.base_prefix, "encoder") + cls.head_key_map


class MLMHead(nn.Module):
    """dense → activation → LayerNorm → decoder (tied to the word embeddings unless tie_embeddings is off) + bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = activation_fn(config.activation)
        self.norm = make_norm(config)
        self.decoder = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))


class BertForMaskedLM(EncoderHeadModel):
    hf_architecture = "BertForMaskedLM"
    with_nsp = False
    head_modules = ("mlm_head", "nsp_head")
    head_key_map: list[tuple[str, str | None]] = [
        ("cls.predictions.transform.dense", "mlm_head.dense"),
        ("cls.predictions.transform.LayerNorm", "mlm_head.norm"),
    ]
    output_prefix = "cls.predictions"

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        """Tied (HF's default): the decoder's weight is the word embeddings and its bias is ``bias``, neither
        stored twice. Untied (tie_word_embeddings false): HF's decoder has a weight and bias of its own
        and leaves ``bias`` unused."""
        out = cls.output_prefix
        if config.tie_embeddings:
            output = [(f"{out}.bias", "mlm_head.decoder.bias"), (f"{out}.decoder", None)]
        else:
            output = [(f"{out}.bias", None), (f"{out}.decoder", "mlm_head.decoder")]
        return [*super().hf_key_map(config), *output]

    @classmethod
    def hf_tensors_out(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if config.tie_embeddings:
            return state
        # HF's unused ``bias`` parameter, written so that its loader finds every key it expects
        return {**state, f"{cls.output_prefix}.bias": state[f"{cls.output_prefix}.decoder.bias"].clone()}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = self.base_class(config, add_pooler=self.with_nsp, init=False)
        self.mlm_head = MLMHead(config)
        self.nsp_head = nn.Linear(config.d_model, 2) if self.with_nsp else None
        self.init_weights()
        if config.tie_embeddings:
            self.mlm_head.decoder.weight = self.encoder.embed.tokens.weight

    def tied_parameters(self) -> dict[str, str]:
        return {"mlm_head.decoder.weight": "encoder.embed.tokens.weight"} if self.config.tie_embeddings else {}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids)
        logits, loss = masked_lm_loss(out.last_hidden_state, labels, head=self.mlm_head)
        return ModelOutput(loss=loss, mlm_loss=loss, logits=logits, last_hidden_state=out.last_hidden_state)


class BertForPreTraining(BertForMaskedLM):
    """MLM + next-sentence prediction (NSP label 0 = B follows A, 1 = B is random, as HF)."""

    hf_architecture = "BertForPreTraining"
    with_nsp = True
    head_key_map = BertForMaskedLM.head_key_map + [("cls.seq_relationship", "nsp_head")]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        nsp_labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids)
        logits, mlm_loss = masked_lm_loss(out.last_hidden_state, labels, head=self.mlm_head)
        nsp_logits = self.nsp_head(out.pooler_output)
        nsp_loss = token_cross_entropy(nsp_logits, nsp_labels) if nsp_labels is not None else None
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        return ModelOutput(
            loss=sum(losses) if losses else None,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            logits=logits,
            nsp_logits=nsp_logits,
            last_hidden_state=out.last_hidden_state,
            pooler_output=out.pooler_output,
        )


class BertForSequenceClassification(EncoderHeadModel):
    """Sentence (or sentence-pair) classification / regression: pooled [CLS] → dropout → classifier.
    Loss by ``config.problem_type`` (see ``lmzoo.nn.heads``); labels: class ids, multi-hot floats or scores."""

    hf_architecture = "BertForSequenceClassification"
    head_kind = "sequence_classification"
    add_pooler = True
    head_modules = ("classifier",)
    head_key_map: list[tuple[str, str | None]] = [("classifier", "classifier")]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = self.base_class(config, add_pooler=self.add_pooler, init=False)
        self.dropout = Dropout(classifier_dropout(config))
        self.classifier = self.make_classifier(config)
        self.init_weights()

    def make_classifier(self, config: ModelConfig) -> nn.Module:
        return nn.Linear(config.d_model, config.num_labels)

    def classify(self, out: ModelOutput) -> torch.Tensor:
        """Encoder output → logits [batch, num_labels]."""
        return self.classifier(self.dropout(out.pooler_output))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids)
        logits = self.classify(out)
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                           pooler_output=out.pooler_output)


class BertForTokenClassification(EncoderHeadModel):
    """Per-token labels (NER): hidden state → dropout → classifier; labels -100 are not scored."""

    hf_architecture = "BertForTokenClassification"
    head_kind = "token_classification"
    head_modules = ("classifier",)
    head_key_map: list[tuple[str, str | None]] = [("classifier", "classifier")]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = self.base_class(config, add_pooler=False, init=False)
        self.dropout = Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids, position_ids).last_hidden_state
        logits = self.classifier(self.dropout(hidden))  # (B, T, num_labels)
        loss = None if labels is None else token_classification_loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=hidden)


SPEC = FamilySpec(
    name="bert",
    architectures=(BertForPreTraining, BertModel, BertForMaskedLM, BertForSequenceClassification,
                   BertForTokenClassification),
    tokenizer_kind="wordpiece",
    template="cls_sep",  # [CLS] A [SEP] B [SEP], token types 0 then 1
    objectives={"mlm+nsp": BertForPreTraining, "mlm": BertForMaskedLM},
)
