"""Using a trained encoder: load a model folder with its tokenizer, fill masks, score sentence pairs."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from lmzoo.errors import UserError
from lmzoo.models.base import PreTrainedModel
from lmzoo.tokenizer import Tokenizer

MASK_SPELLINGS = ("[MASK]", "<mask>")


def load_model_and_tokenizer(folder: str | Path) -> tuple[PreTrainedModel, Tokenizer]:
    """A model folder written by ``lmzoo pretrain`` (or any HF folder with tokenizer files).

    A tokenizer with more tokens than the model has embedding rows is refused (its ids would index
    past the table; fewer is fine: HF pads vocabularies). ``model.missing_weights`` lists the head
    parameters the folder holds no weights for (they were randomly initialised, with a note):
    :func:`fill_mask` refuses to answer from such a head."""
    from lmzoo.hf import load_pretrained

    model = load_pretrained(folder)
    tokenizer = Tokenizer.load(folder)
    check_vocab_fits(tokenizer, model, folder)
    model.missing_weights = missing_head_weights(model, folder)
    return model, tokenizer


def check_vocab_fits(tokenizer: Tokenizer, model: PreTrainedModel, folder: str | Path) -> None:
    """A UserError when ``tokenizer`` has ids past the model's embedding rows (e.g. a tokenizer
    trained into a run folder after its model)."""
    rows = model.config.vocab_size
    if tokenizer.vocab_size > rows:
        raise UserError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model embeds only {rows}; "
                        "the tokenizer does not belong to this model (was it retrained?)")
    for name in ("bos_token_id", "eos_token_id", "decoder_start_token_id"):  # generation and scoring feed these
        token_id = getattr(model.config, name)
        if token_id is not None and not 0 <= token_id < rows:
            raise UserError(f"{folder}/config.json: {name} {token_id} is outside the model's {rows} embedding rows; "
                            f"set it to the tokenizer's id of that token (or null)")


def _weight_names(folder: Path) -> set[str] | None:
    """The tensor names of a folder's safetensors weights, read from the headers (None for
    pytorch_model.bin, whose names need the whole file)."""
    import safetensors

    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif (folder / "model.safetensors.index.json").is_file():
        from lmzoo.weights import index_weight_map

        return set(index_weight_map(folder / "model.safetensors.index.json"))
    else:
        return None
    names: set[str] = set()
    for path in files:
        with safetensors.safe_open(str(path), "pt") as f:
            names.update(f.keys())
    return names


def missing_head_weights(model: PreTrainedModel, folder: str | Path) -> tuple[str, ...]:
    """The model's head parameters (``head_modules``, tied ones aside) with no tensor in ``folder``."""
    from lmzoo.weights import rename

    names = _weight_names(Path(folder))
    if names is None:
        return ()
    names = {n.replace(".gamma", ".weight").replace(".beta", ".bias") for n in names}
    key_map, tied = model.hf_key_map(model.config), model.tied_parameters()
    missing = []
    for name, _ in model.named_parameters():
        if name.split(".")[0] not in model.head_modules or name in tied:
            continue
        try:
            hf_name = rename(name, key_map, to_hf=True)
        except KeyError:
            continue
        if hf_name is not None and hf_name not in names:
            missing.append(name)
    return tuple(missing)


def _require_head(model: PreTrainedModel, head: str, what: str) -> None:
    """A UserError naming the missing weights when the loaded folder had none for ``head``: its
    answers would come from random weights."""
    missing = [n for n in getattr(model, "missing_weights", ()) if n.split(".")[0] == head]
    if missing:
        raise UserError(f"{model.hf_architecture}: the folder has no weights for its {what} head ({len(missing)} "
                        f"missing, e.g. {missing[0]}); the answers would come from random weights: use a folder "
                        f"saved with its {what} head")


@dataclass
class MaskPrediction:
    """One candidate for a blank. ``token``: its text to show (decoded and stripped; a token that
    is only whitespace is shown quoted, e.g. ``'\\n'``, never as a raw byte-level symbol such as
    ``Ċ``); ``text``: the decoded text exactly (transformers' ``token_str``)."""

    token: str
    token_id: int
    probability: float
    text: str = ""


def fill_mask(model: PreTrainedModel, tokenizer: Tokenizer, text: str, *, top_k: int = 5) -> list[list[MaskPrediction]]:
    """Top-k predictions for every mask in ``text`` (written ``[MASK]`` or ``<mask>``, whatever the
    model's own spelling), most probable first, by what the model can do: a masked LM (an
    ``mlm_head``) sees the tokenizer's mask token at each blank; a permutation LM (a forward taking
    ``perm_mask`` and ``target_mapping``, and an LM head) predicts each blank with its query
    stream, the blanks' content hidden from every position."""
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if getattr(model, "mlm_head", None) is not None:
        _require_head(model, "mlm_head", "masked-LM")
        logits = _masked_lm_logits(model, tokenizer, text)
    elif _predicts_hidden_positions(model):
        _require_head(model, "lm_head", "LM")
        logits = _permutation_lm_logits(model, tokenizer, text)
    else:
        raise UserError(f"{model.hf_architecture} has no masked-LM head; fill-mask needs e.g. a *ForMaskedLM model")
    return _top_predictions(logits, tokenizer, top_k)


def _predicts_hidden_positions(model: PreTrainedModel) -> bool:
    """Whether the model predicts chosen positions without seeing their content (XLNet's query stream)."""
    parameters = inspect.signature(model.forward).parameters
    return "perm_mask" in parameters and "target_mapping" in parameters and hasattr(model, "lm_head")


def _check_length(model: PreTrainedModel, ids: list[int]) -> None:
    if len(ids) > model.config.max_positions:
        raise UserError(f"text of {len(ids)} tokens exceeds the model's {model.config.max_positions} positions")


def _masked_lm_logits(model: PreTrainedModel, tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """[n_masks, vocab]: the MLM head's logits at each mask token of the text (with the template's specials)."""
    if tokenizer.mask_id is None:
        raise UserError("the tokenizer has no mask token")
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    for spelling in MASK_SPELLINGS:
        text = text.replace(spelling, mask_token)
    ids, types = tokenizer.build_inputs(tokenizer.encode(text))
    if tokenizer.mask_id not in ids:
        raise UserError(f"no mask in the text: write {mask_token} where a word should be predicted")
    _check_length(model, ids)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=input_ids, token_type_ids=torch.tensor([types])).logits[0]  # (T, V)
    return logits[(input_ids[0] == tokenizer.mask_id).nonzero().flatten()]


def _top_predictions(logits: torch.Tensor, tokenizer: Tokenizer, top_k: int) -> list[list[MaskPrediction]]:
    """[n_blanks, vocab] logits → the top-k tokens of each row, special tokens excluded."""
    results = []
    for row in logits:
        probs = row.float().softmax(-1)
        special = [i for i in tokenizer.special_ids if i < probs.numel()]
        probs[special] = -1.0  # never propose [CLS], [PAD], ...: ranked last, then cut off
        top = probs.topk(min(top_k, probs.numel() - len(set(special))))
        row_predictions = []
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            text = tokenizer.decode([i])
            row_predictions.append(MaskPrediction(text.strip() or repr(text), i, p, text))
        results.append(row_predictions)
    return results


def _permutation_lm_logits(model: PreTrainedModel, tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """[n_blanks, vocab], one token per blank: no position may see a blank's content (perm_mask, so
    the placeholder id is never read), and the query stream predicts every blank from its position
    and the visible context."""
    pieces = text
    for spelling in MASK_SPELLINGS:
        pieces = pieces.replace(spelling, "\0")
    parts = pieces.split("\0")
    if len(parts) < 2:
        raise UserError("no blank in the text: write <mask> (or [MASK]) where a token should be predicted")
    ids: list[int] = []
    blanks: list[int] = []
    for n, part in enumerate(parts):
        if part.strip():
            ids += tokenizer.encode(part.strip())
        if n < len(parts) - 1:
            blanks.append(len(ids))
            ids.append(tokenizer.unk_id if tokenizer.unk_id is not None else 0)  # content never seen
    _check_length(model, ids)
    length = len(ids)
    perm_mask = torch.zeros(1, length, length)
    perm_mask[0, :, blanks] = 1.0
    target_mapping = torch.zeros(1, len(blanks), length)
    target_mapping[0, torch.arange(len(blanks)), blanks] = 1.0
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), perm_mask=perm_mask, target_mapping=target_mapping).logits[0]


def next_sentence_probability(model: PreTrainedModel, tokenizer: Tokenizer, first: str, second: str) -> float:
    """P(second follows first) from BERT's NSP head (HF convention: class 0 = is next)."""
    if getattr(model, "nsp_head", None) is None:
        raise UserError(f"{model.hf_architecture} has no next-sentence head; nsp needs a BertForPreTraining model")
    _require_head(model, "nsp_head", "next-sentence")
    if not first.strip() or not second.strip():
        raise UserError("both sentences must be non-empty")
    ids, types = tokenizer.build_inputs(tokenizer.encode(first), tokenizer.encode(second))
    if len(ids) > model.config.max_positions:
        raise UserError(f"the pair of {len(ids)} tokens exceeds the model's {model.config.max_positions} positions")
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]))
    return float(out.nsp_logits[0].float().softmax(-1)[0])
