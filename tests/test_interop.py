"""What lmzoo writes, transformers reads identically: the tokenizer a ``pretrain`` run saves for each
family (through ``prepare_tokenizer`` itself) gives the same ids, special tokens and text through
``AutoTokenizer``; transformers' fill-mask and text-generation pipelines on tiny run folders give
lmzoo's answers. Plus the decoding fixes: XLNet / Unigram spacing after a prompt, fill-mask text of
byte-level tokens, reconstruct's gap tokens."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch
import transformers

from lmzoo.errors import UserError
from lmzoo.generate import TextStreamer, continuation_text, generate
from lmzoo.pipelines import fill_mask, load_model_and_tokenizer
from lmzoo.pretrain import _initial_model, prepare_tokenizer, resolve_objective
from lmzoo.tasks.seq2seq import gaps_for_model, reconstruct_texts
from lmzoo.tokenizer import ROLES, Tokenizer, train_tokenizer

PRESETS = {"bert": "bert-tiny", "roberta": "roberta-tiny", "gpt2": "gpt-tiny", "t5": "t5-tiny",
           "bart": "bart-tiny", "xlnet": "xlnet-tiny"}
LINES = [
    "Enter KING LEAR, with Goneril and Regan.",
    "Good morrow, my lord; how does your Grace?",
    "O, reason not the need! Our basest beggars",
    "Are in the poorest thing superfluous.",
    "Naïve café: déjà vu, ünïcödé — and 'quotes' \"too\".",
    "def f(x):\n    return x ** 2\n",
]
TEXTS = [
    "Good morning, Enter KING Lear.",
    "  two  spaces\n\nnewline\ttab é ü 🙂",
    "a <mask> and [MASK] and <extra_id_0> and </s> inside",
    "UPPER lower MiXeD",
]
TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ff=48)


def write_corpus(folder: Path) -> Path:
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(LINES * 30))
    return path


def run_folder(family: str, folder: Path, *, lowercase: bool, model: bool = False) -> Tokenizer:
    """The tokenizer ``pretrain`` saves for ``family``'s preset (its kind, template and sentinels),
    written to ``folder``; with ``model``, a tiny random model of the preset saved beside it."""
    preset = PRESETS[family]
    unit = resolve_objective(preset)
    tokenizer = prepare_tokenizer(preset=preset, unit=unit, data=[str(write_corpus(folder))], out=folder,
                                  tokenizer_path=None, vocab_size=400, lowercase=lowercase)
    if model:
        _initial_model(preset, unit, tokenizer, 32, 0, TINY).eval().save_pretrained(folder)
    return Tokenizer.load(folder)


def auto_tokenizer(folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("lowercase", [False, True])
@pytest.mark.parametrize("family", list(PRESETS))
def test_auto_tokenizer_reads_run_folders_identically(family, lowercase, tmp_path):
    ours = run_folder(family, tmp_path, lowercase=lowercase)
    hf = auto_tokenizer(tmp_path)
    assert len(hf) == ours.vocab_size
    for role in ROLES:
        assert getattr(hf, f"{role}_token_id") == getattr(ours, f"{role}_id"), role
    assert set(hf.all_special_ids) == set(ours.special_ids)
    sentinels = [t for t in ours.additional_special_tokens if t.startswith("<extra_id_")]
    assert len(sentinels) == (100 if family == "t5" else 0)  # the span objective's sentinels
    assert hf.convert_tokens_to_ids(sentinels) == [ours.token_to_id(t) for t in sentinels]
    for text in TEXTS:
        assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text), text
        single = ours.build_inputs(ours.encode(text))[0]
        assert hf(text)["input_ids"] == single, text
        pair = ours([text], [TEXTS[0]], padding=False)
        hf_pair = hf(text, TEXTS[0])
        assert hf_pair["input_ids"] == pair["input_ids"][0].tolist(), text
        if "token_type_ids" in hf_pair:
            assert hf_pair["token_type_ids"] == pair["token_type_ids"][0].tolist(), text
        assert hf.decode(single, skip_special_tokens=True) == ours.decode(single), text
        assert hf.decode(single, skip_special_tokens=False) == ours.decode(single, skip_special_tokens=False), text
    if lowercase:  # the normalizer survives: a capitalised word is the lowercase one, not characters
        assert hf("Good")["input_ids"] == hf("good")["input_ids"]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_transformers_fill_mask_pipeline_gives_lmzoo_answers(family, tmp_path):
    run_folder(family, tmp_path, lowercase=False, model=True)
    model, tokenizer = load_model_and_tokenizer(tmp_path)
    mask = tokenizer.id_to_token(tokenizer.mask_id)
    text = f"Good morrow, my {mask}; how does your Grace?"
    ours = fill_mask(model, tokenizer, text, top_k=5)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = transformers.pipeline("fill-mask", model=str(tmp_path), device="cpu")
    # lmzoo never proposes special tokens; transformers may: ask for more and drop them
    theirs = [p for p in pipe(text, top_k=5 + len(tokenizer.special_ids)) if p["token"] not in tokenizer.special_ids]
    assert [p.token_id for p in ours] == [p["token"] for p in theirs[:5]]
    assert [p.text for p in ours] == [p["token_str"] for p in theirs[:5]]
    assert [p.probability for p in ours] == pytest.approx([p["score"] for p in theirs[:5]], abs=1e-5)


def test_transformers_text_generation_pipeline_gives_lmzoo_answers(tmp_path):
    run_folder("gpt2", tmp_path, lowercase=False, model=True)
    model, tokenizer = load_model_and_tokenizer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = transformers.pipeline("text-generation", model=str(tmp_path), device="cpu")
        for prompt in ["Enter KING", "O, reason not", "def f(x):\n"]:
            ids = tokenizer.encode(prompt)
            new = generate(model, torch.tensor([ids]), max_new_tokens=12)[0].tolist()
            theirs = pipe(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
            assert theirs == prompt + continuation_text(tokenizer, ids, new), prompt
            assert len(new) == 12  # nothing stopped early: the whole continuation was compared


def test_unigram_continuation_keeps_the_space_after_the_prompt(tmp_path):
    """XLNet's Unigram / Metaspace pieces: "▁enter" alone decodes to "enter", so printing the prompt and
    then the new tokens' own text glued "Enter king" + "enter king" into "Enter kingenter king"."""
    tokenizer = run_folder("xlnet", tmp_path, lowercase=True, model=True)
    prompt, new = tokenizer.encode("Enter king"), tokenizer.encode("enter king, and more")
    assert "Enter king" + tokenizer.decode(new) == "Enter kingenter king, and more"  # the bug: new text alone
    assert continuation_text(tokenizer, prompt, new) == " enter king, and more"
    comma = tokenizer.encode("king,")[-1]  # the piece "," (no ▁): no space where none belongs
    assert tokenizer.id_to_token(comma) == "," and continuation_text(tokenizer, prompt, [comma]) == ","
    assert continuation_text(tokenizer, [], new) == "enter king, and more"
    out = io.StringIO()
    streamer = TextStreamer(tokenizer, file=out, prompt_ids=prompt)
    for token in new:
        streamer(torch.tensor([token]))
    assert out.getvalue() == streamer.text == " enter king, and more"
    # a real XLNet run folder streams what decoding the prompt and the continuation together gives
    model, _ = load_model_and_tokenizer(tmp_path)
    out = io.StringIO()
    generated = generate(model, torch.tensor([prompt]), max_new_tokens=6,
                         streamer=TextStreamer(tokenizer, file=out, prompt_ids=prompt))[0].tolist()
    whole = tokenizer.decode(prompt + generated)
    assert whole == tokenizer.decode(prompt) + out.getvalue()


def test_fill_mask_shows_decoded_text_of_byte_level_tokens(tmp_path):
    run_folder("roberta", tmp_path, lowercase=False, model=True)
    model, tokenizer = load_model_and_tokenizer(tmp_path)
    newline, space_the = tokenizer.encode("\n")[0], tokenizer.encode(" the")[0]
    assert tokenizer.id_to_token(newline) == "Ċ" and tokenizer.id_to_token(space_the) == "Ġthe"
    with torch.no_grad():  # make the two byte-level tokens the model's first choices
        model.mlm_head.decoder.bias[newline] += 50.0
        model.mlm_head.decoder.bias[space_the] += 49.0
    first, second = fill_mask(model, tokenizer, "Good <mask> lord", top_k=2)[0]
    assert (first.token_id, first.text, first.token) == (newline, "\n", repr("\n"))
    assert (second.token_id, second.text, second.token) == (space_the, " the", "the")


def test_reconstruct_writes_gaps_as_the_tokenizer_has_them(tmp_path):
    corpus = [str(write_corpus(tmp_path))]
    t5 = train_tokenizer(corpus, kind="unigram", vocab_size=200, extra_ids=3)
    bart = train_tokenizer(corpus, kind="bpe", vocab_size=300, template="cls_sep_sep")
    plain = train_tokenizer(corpus, kind="unigram", vocab_size=200)  # no mask, no sentinels
    assert gaps_for_model(t5, "a <mask> b [MASK]") == "a <extra_id_0> b <extra_id_1>"
    assert gaps_for_model(t5, "a <mask> b <extra_id_0>") == "a <extra_id_1> b <extra_id_0>"
    assert gaps_for_model(t5, "a <extra_id_2> b") == "a <extra_id_2> b"
    with pytest.raises(UserError, match="more gaps than this model's 3 sentinels"):
        gaps_for_model(t5, "<mask> " * 4)
    with pytest.raises(UserError, match=r"no <extra_id_3> gap token: its sentinels are <extra_id_0> to <extra_id_2>"):
        gaps_for_model(t5, "a <extra_id_3> b")
    with pytest.raises(UserError, match='no gap to fill: write "<extra_id_0>"'):
        gaps_for_model(t5, "no gap here")
    assert gaps_for_model(bart, "a [MASK] b <mask>") == "a <mask> b <mask>"
    with pytest.raises(UserError, match="no <extra_id_0> gap token: write <mask>"):
        gaps_for_model(bart, "a <extra_id_0> b")
    with pytest.raises(UserError, match='no gap to fill: write "<mask>"'):
        gaps_for_model(bart, "no gap here")
    with pytest.raises(UserError, match="neither a mask token nor <extra_id_N> sentinels"):
        gaps_for_model(plain, "a <mask> b")


def test_t5_reconstruct_fills_mask_gaps_through_sentinels(tmp_path, monkeypatch):
    """A T5 run given <mask> fills it (spans put back in place), never echoing the gap."""
    import lmzoo.tasks.seq2seq as seq2seq

    run_folder("t5", tmp_path, lowercase=False, model=True)
    model, tokenizer = load_model_and_tokenizer(tmp_path)
    prompts = []

    def spying_generate(model, input_ids, attention_mask=None, **options):
        prompts.append(tokenizer.decode(input_ids[0].tolist(), skip_special_tokens=False))
        return generate(model, input_ids, attention_mask=attention_mask, **options)

    monkeypatch.setattr(seq2seq, "generate", spying_generate)
    (out,) = reconstruct_texts(model, tokenizer, ["Good <mask> lord"], max_new_tokens=6)
    assert "<extra_id_0>" in prompts[0] and "<mask>" not in prompts[0]
    assert out.startswith("Good ") and out.endswith(" lord") and "<" not in out


def test_bart_reconstruct_writes_mask_texts_whole(tmp_path, monkeypatch):
    """A BART run (a mask token, no sentinels) gets [MASK] as its own <mask> and writes the text out whole."""
    import lmzoo.tasks.seq2seq as seq2seq

    run_folder("bart", tmp_path, lowercase=False, model=True)
    model, tokenizer = load_model_and_tokenizer(tmp_path)
    prompts = []

    def spying_generate(model, input_ids, attention_mask=None, **options):
        prompts.append(tokenizer.decode(input_ids[0].tolist(), skip_special_tokens=False))
        return generate(model, input_ids, attention_mask=attention_mask, **options)

    monkeypatch.setattr(seq2seq, "generate", spying_generate)
    (out,) = reconstruct_texts(model, tokenizer, ["Good [MASK] lord"], max_new_tokens=6)
    assert prompts == ["<s>Good <mask> lord</s>"]
    assert out == seq2seq.generate_texts(model, tokenizer, ["Good <mask> lord"], max_new_tokens=6)[0]
    with pytest.raises(UserError, match="write <mask>"):
        reconstruct_texts(model, tokenizer, ["Good <extra_id_0> lord"])


def test_sharded_hf_folder_loads_and_a_broken_index_is_one_line(tmp_path):
    """transformers writes large checkpoints as shards plus model.safetensors.index.json: lmzoo reads
    every shard (the same logits as transformers); an index without its weight map is a UserError."""
    from conftest import hf_model, tiny_config

    from lmzoo.hf import load_pretrained
    from lmzoo.weights import read_state_dict

    folder = tmp_path / "sharded"
    hf = hf_model(transformers.BertForMaskedLM, tiny_config("bert"), tmp_path / "whole")
    hf.save_pretrained(folder, max_shard_size="20KB")
    assert len(list(folder.glob("model-*.safetensors"))) > 1 and not (folder / "model.safetensors").exists()
    ids = torch.randint(5, hf.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = hf(ids).logits
        ours = load_pretrained(folder).eval()(ids).logits
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert read_state_dict(folder).keys() == read_state_dict(tmp_path / "whole").keys()
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(UserError, match="model.safetensors.index.json: not a safetensors index"):
        read_state_dict(folder)


def test_fill_mask_never_lists_special_tokens_even_for_a_huge_top_k(tmp_path):
    from conftest import corpus, tiny_folder

    folder = tiny_folder(tmp_path / "bert", corpus(tmp_path / "text.txt"), "bert-tiny")
    model, tokenizer = load_model_and_tokenizer(folder)
    [predictions] = fill_mask(model, tokenizer, "the [MASK] and queen", top_k=100_000)
    special = set(tokenizer.special_ids)
    assert len(predictions) == tokenizer.vocab_size - len(special)
    assert not {p.token_id for p in predictions} & special
