"""lmzoo.generate: token-for-token parity with transformers' generate (greedy, beam), cached vs
uncached logits, logits processors on hand-made distributions, seeded sampling, stop rules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import transformers

import lmzoo
from lmzoo.errors import UserError
from lmzoo.generate import (GenerationConfig, TextStreamer, generate, left_pad, process_scores, repetition_penalty,
                            top_k_filter, top_p_filter, truncate_at_stop)

VOCAB, EOS = 64, 63


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random transformers GPT-2 with peaked logits, and the same weights in lmzoo."""
    folder = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=EOS, eos_token_id=EOS, initializer_range=0.3)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(folder)
    return hf, lmzoo.from_pretrained(folder)


def prompts():
    ids, mask = left_pad([[5, 9, 2, 7, 1, 33], [4, 4, 8], [12, 3, 50, 21]], pad_id=EOS)
    return ids, mask


def hf_generate(hf, ids, mask, **kw):
    out = hf.generate(input_ids=ids, attention_mask=mask, pad_token_id=EOS, do_sample=False, **kw)
    return out[:, ids.shape[1]:]


def test_greedy_single_prompt_matches_transformers(models):
    hf, ours = models
    ids = torch.tensor([[5, 9, 2, 7, 1, 33]])
    ref = hf_generate(hf, ids, torch.ones_like(ids), max_new_tokens=20)
    got = generate(ours, ids, max_new_tokens=20)
    assert torch.equal(got, ref)


def test_greedy_left_padded_batch_matches_transformers(models):
    hf, ours = models
    ids, mask = prompts()
    ref = hf_generate(hf, ids, mask, max_new_tokens=16)
    got = generate(ours, ids, mask, max_new_tokens=16)
    assert torch.equal(got, ref)
    # let row 0 stop early on an "eos" it really produces: the other rows keep going, row 0 is padded
    eos = int(ref[0, 3])
    ref = hf_generate(hf, ids, mask, max_new_tokens=16, eos_token_id=eos)
    got = generate(ours, ids, mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=EOS)
    assert torch.equal(got, ref)
    assert (got[0, 4:] == EOS).all()


@pytest.mark.parametrize("kw", [dict(), dict(length_penalty=0.6, num_return_sequences=3),
                                dict(early_stopping=True), dict(early_stopping="never", length_penalty=1.5)])
@pytest.mark.parametrize("eos_at", [(1, 2), (2, 3)])
def test_beam_search_matches_transformers(models, kw, eos_at):
    hf, ours = models
    ids, mask = prompts()
    ref_plain = hf_generate(hf, ids, mask, max_new_tokens=10, num_beams=4)
    eos = int(ref_plain[eos_at])  # a token some hypotheses really produce, so beams finish early
    ref = hf_generate(hf, ids, mask, max_new_tokens=10, num_beams=4, eos_token_id=eos, **kw)
    got = generate(ours, ids, mask, max_new_tokens=10, num_beams=4, eos_token_id=eos, pad_token_id=EOS, **kw)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("beams", [1, 4])
def test_min_new_tokens_holds_eos_back_as_transformers(models, beams):
    hf, ours = models
    ids, mask = prompts()
    eos = int(hf_generate(hf, ids, mask, max_new_tokens=10, num_beams=beams)[0, 1])  # produced at step 2
    ref = hf_generate(hf, ids, mask, max_new_tokens=10, min_new_tokens=6, num_beams=beams, eos_token_id=eos)
    got = generate(ours, ids, mask, max_new_tokens=10, min_new_tokens=6, num_beams=beams, eos_token_id=eos,
                   pad_token_id=EOS)
    assert torch.equal(got, ref)
    assert not (got[:, :6] == eos).any()
    with pytest.raises(UserError, match="min_new_tokens"):
        GenerationConfig(max_new_tokens=4, min_new_tokens=5)


def test_allowed_tokens_constrains_the_next_token(models):
    _, ours = models
    ids = torch.tensor([[5, 9, 2, 7, 1, 33]])
    free = generate(ours, ids, max_new_tokens=6)
    forced = int(free[0, 0]) + 1  # not what greedy picks first
    got = generate(ours, ids, max_new_tokens=6, allowed_tokens=lambda row, new: [forced] if not new else None)
    assert int(got[0, 0]) == forced
    assert torch.equal(got[:, 1:], generate(ours, torch.cat([ids, got[:, :1]], 1), max_new_tokens=5))
    with pytest.raises(UserError, match="allowed_tokens"):
        generate(ours, ids, max_new_tokens=3, num_beams=2, allowed_tokens=lambda row, new: None)


def test_cached_equals_uncached_at_every_step(models):
    _, ours = models
    ids, mask = prompts()
    state = ours.prepare_generation(ids, mask, max_new_tokens=8)
    tokens, seq, seq_mask = ids, ids, mask
    with torch.no_grad():
        for _ in range(8):
            cached = ours.generation_step(tokens, state)
            positions = (seq_mask.cumsum(1) - 1).clamp(min=0)
            full = ours(input_ids=seq, attention_mask=seq_mask, position_ids=positions).logits[:, -1]
            assert torch.allclose(cached, full, atol=1e-5), (cached - full).abs().max()
            tokens = full.argmax(-1, keepdim=True)
            seq, seq_mask = torch.cat([seq, tokens], 1), torch.cat([seq_mask, torch.ones_like(tokens)], 1)


# --- processors on hand-made distributions -------------------------------------------------------


def test_top_k_and_top_p_on_known_distribution():
    scores = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    assert torch.isinf(top_k_filter(scores, 2)).tolist() == [[True, False, True, False]]
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logp = probs.log()
    # p = 0.75: 0.5 + 0.3 = 0.8 reaches it → keep those two
    assert torch.isinf(top_p_filter(logp, 0.75)).tolist() == [[True, False, True, False]]
    # p = 0.85: needs 0.15 as well
    assert torch.isinf(top_p_filter(logp, 0.85)).tolist() == [[True, False, False, False]]
    # p tiny: still the single most probable token
    assert (~torch.isinf(top_p_filter(logp, 1e-6))).sum() == 1
    assert torch.equal(top_p_filter(logp, 1.0), logp)


def test_temperature_and_repetition_penalty():
    logp = torch.tensor([[0.1, 0.2, 0.7]]).log()
    warmed = process_scores(logp, GenerationConfig(do_sample=True, temperature=0.5), None).softmax(-1)
    expected = torch.tensor([[0.01, 0.04, 0.49]]) / 0.54  # p ** (1 / T), renormalised
    assert torch.allclose(warmed, expected, atol=1e-6)
    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert repetition_penalty(scores, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


class DictState(dict):
    """The fake models' state: nothing per row to reorder."""

    def reorder(self, index):
        self["rows"] = len(index)


@dataclass
class FakeConfig:
    vocab_size: int = 5
    eos_token_id: int | None = None
    pad_token_id: int | None = 0
    is_encoder_decoder: bool = False
    decoder_start_token_id: int | None = None


class FixedModel:
    """A model of the protocol whose next-token distribution never changes (or counts up by one)."""

    def __init__(self, probs: list[float], counter: bool = False, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig(vocab_size=len(probs))
        self.logits = torch.tensor(probs).log()
        self.counter = counter

    def prepare_generation(self, input_ids, attention_mask, max_new_tokens):
        return DictState(rows=input_ids.shape[0], feeds=[])

    def generation_step(self, tokens, state):
        state["feeds"].append(tokens.clone())
        if self.counter:  # the next token is the last one + 1
            return torch.nn.functional.one_hot((tokens[:, -1] + 1) % self.config.vocab_size,
                                               self.config.vocab_size).float() * 10
        return self.logits.expand(tokens.shape[0], -1).clone()


def fixed(probs, **kw):
    return FixedModel(probs, **kw)


def test_sampling_frequencies_topk_and_seed():
    probs = [0.1, 0.2, 0.3, 0.4]
    model = fixed(probs)
    prompt = torch.zeros(1, 1, dtype=torch.long)
    draws = generate(model, prompt, max_new_tokens=200, do_sample=True, num_return_sequences=20, seed=1)
    assert draws.shape == (20, 200)
    freq = torch.bincount(draws.flatten(), minlength=4).float() / draws.numel()
    # 4000 draws: each frequency within 4 standard errors of its probability
    for f, p in zip(freq.tolist(), probs):
        assert abs(f - p) < 4 * (p * (1 - p) / 4000) ** 0.5
    again = generate(model, prompt, max_new_tokens=200, do_sample=True, num_return_sequences=20, seed=1)
    other = generate(model, prompt, max_new_tokens=200, do_sample=True, num_return_sequences=20, seed=2)
    assert torch.equal(draws, again) and not torch.equal(draws, other)
    top2 = generate(model, prompt, max_new_tokens=500, do_sample=True, top_k=2, seed=3)
    freq3 = (top2 == 3).float().mean().item()
    assert set(top2.flatten().tolist()) <= {2, 3} and abs(freq3 - 0.4 / 0.7) < 4 * (0.25 / 500) ** 0.5
    greedy = generate(model, prompt, max_new_tokens=5)
    assert greedy.tolist() == [[3] * 5]


def test_greedy_eos_stop_strings_and_streamer():
    model = fixed([0.2] * 8, counter=True, config=FakeConfig(vocab_size=8, eos_token_id=5, pad_token_id=0))
    prompt = torch.tensor([[1], [3]])
    out = generate(model, prompt, max_new_tokens=7)
    assert out.tolist() == [[2, 3, 4, 5], [4, 5, 0, 0]]  # row 1 stops at eos, then padding
    class Letters:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(ord("a") + i) for i in ids)

    streamed = []
    out = generate(model, torch.tensor([[0]]), max_new_tokens=7, eos_token_id=7, stop_strings=["de"],
                   tokenizer=Letters(), streamer=lambda t: streamed.append(int(t[0])))
    assert out.tolist() == [[1, 2, 3, 4]] and streamed == [1, 2, 3, 4]  # "bcde" contains "de"
    assert truncate_at_stop("bcde\nxyz", ["\n", "xy"]) == "bcde"
    text = []
    streamer = TextStreamer(Letters(), file=type("F", (), {"write": lambda s, x: text.append(x),
                                                          "flush": lambda s: None})())
    generate(model, torch.tensor([[0]]), max_new_tokens=3, eos_token_id=7, streamer=streamer)
    assert "".join(text) == "bcd"


def test_repetition_penalty_changes_greedy_choice():
    model = fixed([0.1, 0.2, 0.3, 0.4])
    prompt = torch.tensor([[3]])  # the favourite token is already in the prompt
    assert generate(model, prompt, max_new_tokens=1).tolist() == [[3]]
    # log p = -2.30, -1.61, -1.20, -0.92; penalty 2 doubles the seen ones: 3 → -1.83 loses to 2 (-1.20);
    # then 2 → -2.41 and 3 → -1.83 lose to 1 (-1.61); then 1 → -3.22: 3 (-1.83) is back on top
    out = generate(model, prompt, max_new_tokens=3, repetition_penalty=2.0)
    assert out.tolist() == [[2, 1, 3]]


@pytest.mark.parametrize("kw, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(temperature=0.0), "temperature"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(max_new_tokens=4, bogus=1), "bogus"),
])
def test_bad_options(kw, message):
    with pytest.raises(UserError, match=message):
        generate(fixed([0.5, 0.5]), torch.tensor([[1]]), **kw)


def test_bad_inputs(models):
    _, ours = models
    with pytest.raises(UserError, match="empty prompt"):
        generate(ours, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3)
    with pytest.raises(UserError, match="positions"):
        generate(ours, torch.ones(1, 60, dtype=torch.long), max_new_tokens=10)
    with pytest.raises(UserError, match="cannot generate"):
        generate(ours.transformer, torch.ones(1, 3, dtype=torch.long), max_new_tokens=3)


# --- CLI: generate / chat / complete ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """A random tiny GPT-2 with a byte-level BPE tokenizer in one folder, as lmzoo pretrain writes it."""
    from lmzoo.tokenizer import train_tokenizer
    from lmzoo.models.gpt2 import GPT2LMHeadModel, GPT2Model
    from lmzoo.presets import preset_config

    folder = tmp_path_factory.mktemp("lm")
    text = folder / "text.txt"
    text.write_text("def add(a, b):\n    return a + b\n\nto be or not to be, that is the question\n" * 20)
    tok = train_tokenizer([str(text)], kind="bpe", vocab_size=300, out_dir=str(folder))
    config = preset_config("gpt-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id,
                           max_positions=48)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    bare = tmp_path_factory.mktemp("bare")
    GPT2Model(config).save_pretrained(bare)
    tok.save(bare)
    return folder, bare, tok


def cli(capsys, *argv):
    from lmzoo.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_generate_greedy_streams_what_generate_returns(lm_folder, capsys):
    folder, _, tok = lm_folder
    code, out, err = cli(capsys, "generate", folder, "to be or", "--max-new-tokens", 12)
    assert code == 0, err
    model = lmzoo.from_pretrained(folder)
    ids = generate(model, torch.tensor([tok.encode("to be or")]), max_new_tokens=12)[0].tolist()
    assert out == "to be or" + tok.decode(ids) + "\n"


def test_cli_sampling_is_seeded_and_beams_return_sequences(lm_folder, capsys):
    folder, _, _ = lm_folder
    args = ["generate", folder, "to be", "--max-new-tokens", 10, "--top-p", 0.9, "--temperature", 1.5]
    first, second = cli(capsys, *args, "--seed", 3), cli(capsys, *args, "--seed", 3)
    assert first[0] == 0 and first[1] == second[1]
    assert any(cli(capsys, *args, "--seed", s)[1] != first[1] for s in (4, 5, 6))
    code, out, _ = cli(capsys, "generate", folder, "to be", "--max-new-tokens", 6, "--num-beams", 3,
                       "--num-return-sequences", 2)
    assert code == 0 and out.count("---") == 1 and out.startswith("to be")


@pytest.mark.parametrize("argv, message", [
    (["generate", "{lm}", ""], "empty prompt"),
    (["generate", "{lm}", "to be " * 60], "longer than the model's context"),
    (["generate", "{lm}", "to be", "--max-new-tokens", "0"], "max-new-tokens"),
    (["generate", "{lm}", "to be", "--top-p", "0"], "top-p"),
    (["generate", "{lm}", "to be", "--top-p", "1.5"], "top-p"),
    (["generate", "{bare}", "to be"], "cannot generate"),
    (["complete", "{bare}", "--file", "{lm}/text.txt"], "cannot generate"),
    (["chat", "{bare}"], "cannot generate"),
])
def test_cli_bad_input_is_one_line_exit_2(lm_folder, capsys, argv, message):
    folder, bare, _ = lm_folder
    code, out, err = cli(capsys, *[a.format(lm=folder, bare=bare) for a in argv])
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_chat_answers_each_turn(lm_folder, capsys, monkeypatch):
    import io

    folder, _, _ = lm_folder
    monkeypatch.setattr("sys.stdin", io.StringIO("to be or not\n\nthat is the question\n"))
    code, out, err = cli(capsys, "chat", folder, "--max-new-tokens", 8, "--bot", "Hamlet")
    lines = out.splitlines()
    assert code == 0, err
    assert len(lines) == 2 and all(line.startswith("HAMLET: ") for line in lines)


def test_cli_complete_stops_at_the_end_of_the_line(lm_folder, capsys, tmp_path):
    folder, _, _ = lm_folder
    prefix = tmp_path / "prefix.py"
    prefix.write_text("def add(a, b):\n    return")
    code, out, err = cli(capsys, "complete", folder, "--file", prefix, "--until", "line", "--max-new-tokens", 20)
    assert code == 0, err
    assert out.count("\n") == 1  # only the rest of the current line


def test_code_block_end():
    from lmzoo.generate import code_block_end

    body = "    y = x + 1\n    return y\n\ndef g():\n    pass\n"
    cut = code_block_end("def f(x):\n")
    assert body[:cut(body)] == "    y = x + 1\n    return y\n"
    assert cut("    y = x + 1\n    return y\n") is None  # no dedent yet: go on
    nested = code_block_end("def f(x):\n    if x:\n        z = 1\n")
    assert nested("        w = 2\n    return z\n") == len("        w = 2")
    line = code_block_end("x = fo", until="line")
    assert line("o(1)\nbar\n") == 4 and line("o(1") is None
    assert code_block_end("import os\n")("import sys\nimport re\n") == len("import sys")
    # a block opener with a trailing comment still opens a block; a ":" inside a string or comment does not
    commented = code_block_end("class A:\n    def f(self):  # note\n")
    assert commented("        return 1\n    def g(self):\n        return 2\n") == len("        return 1")
    assert code_block_end("def f(x):  # doubles\n")(body) == cut(body)
    assert code_block_end('x = "a:"  # b:\n')("y = 1\nz = 2\n") == len("y = 1")


# ---- review mends: healing, beam scores, seq2seq prompts, flags that would be ignored ----------------


@pytest.fixture(scope="module")
def seq2seq_folders(tmp_path_factory):
    """Random tiny run folders: a GPT-2 with a WordPiece tokenizer (it has no whitespace tokens), a T5 and a
    BART with 40 learned decoder positions."""
    from conftest import corpus, tiny_folder

    root = tmp_path_factory.mktemp("s2s")
    text = corpus(root / "text.txt")
    return {"gpt_wordpiece": tiny_folder(root / "gpt", text, "gpt-tiny", scale=0.5, kind="wordpiece"),
            "t5": tiny_folder(root / "t5", text, "t5-tiny", scale=0.5, extra_ids=10),
            "bart": tiny_folder(root / "bart", text, "bart-tiny", scale=0.5, max_positions=40)}


def test_healing_is_skipped_when_no_token_can_write_the_whitespace(seq2seq_folders, capsys, tmp_path):
    from lmzoo.generate import _can_write, heal_trailing_whitespace
    from lmzoo.tokenizer import Tokenizer

    assert _can_write("\n    ", {"\n", "  ", "x"}) and _can_write("\n ", {"\n  x"})
    assert not _can_write("\n", {"a", " "}) and not _can_write("\n  ", {"\n", "x"})
    tokenizer = Tokenizer.load(seq2seq_folders["gpt_wordpiece"])
    assert heal_trailing_whitespace("the king\n", tokenizer) == ("the king\n", "", None)
    prefix = tmp_path / "prefix.txt"
    prefix.write_text("the king and the queen\n")
    for sampling in ([], ["--temperature", "0.8"], ["--top-k", "5"]):  # sampling used to crash on all -inf scores
        code, out, err = cli(capsys, "complete", seq2seq_folders["gpt_wordpiece"], "--file", prefix,
                             "--max-new-tokens", 6, *sampling)
        assert code == 0 and out.strip(), (sampling, err)


def test_chat_says_when_its_tokenizer_cannot_end_a_turn(seq2seq_folders, capsys, monkeypatch):
    """A WordPiece vocabulary has no newline: a reply can never end its turn with a blank line."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("the king\n"))
    code, out, err = cli(capsys, "chat", seq2seq_folders["gpt_wordpiece"], "--max-new-tokens", 4)
    assert code == 0 and out.startswith("JULIET: ")
    assert "wordpiece tokenizer cannot write a blank line, which ends a turn" in err


def test_complete_keeps_the_space_before_its_first_word(seq2seq_folders, capsys, tmp_path):
    """WordPiece decodes a word alone without its leading space: complete's text must be what
    generate writes after the same prompt, not "the king" + "queen" glued into "the kingqueen"."""
    folder = seq2seq_folders["gpt_wordpiece"]
    (tmp_path / "prefix.txt").write_text("the king")
    code, completed, err = cli(capsys, "complete", folder, "--file", tmp_path / "prefix.txt", "--until", "line",
                               "--max-new-tokens", 5)
    assert code == 0, err
    code, generated, err = cli(capsys, "generate", folder, "the king", "--max-new-tokens", 5)
    assert code == 0, err
    assert generated.startswith("the king ") and completed.rstrip("\n") == generated.rstrip("\n")[len("the king"):]


def test_a_large_length_penalty_scores_beams_without_overflow(models):
    _, ours = models
    ids, mask = prompts()
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=8, num_beams=3, length_penalty=1000.0)
    assert out.shape == (3, 8)


def test_forced_first_and_last_tokens():
    config = GenerationConfig(max_new_tokens=4, forced_bos_token_id=3, forced_eos_token_id=5)
    scores = torch.randn(2, 10)
    for step, token in ((0, 3), (3, 5)):
        forced = process_scores(scores, config, None, step)
        assert forced[:, token].eq(0).all() and torch.isinf(forced).sum() == 2 * 9
    assert torch.equal(process_scores(scores, config, None, 1), scores)


def test_generate_wraps_a_seq2seq_prompt_as_text2text_does(seq2seq_folders, capsys):
    for name in ("t5", "bart"):
        folder = seq2seq_folders[name]
        code, generated, err = cli(capsys, "generate", folder, "the king and queen", "--max-new-tokens", 6)
        assert code == 0, err
        code, text2text, err = cli(capsys, "text2text", folder, "the king and queen", "--max-new-tokens", 6)
        assert code == 0, err
        assert generated.strip() == text2text.strip(), name


@pytest.mark.parametrize("verb", ["generate", "reconstruct", "text2text"])
def test_seq2seq_new_tokens_are_capped_at_the_decoder_positions(seq2seq_folders, capsys, verb):
    text = "the <mask> and queen" if verb == "reconstruct" else "the king"
    code, out, err = cli(capsys, verb, seq2seq_folders["bart"], text, "--max-new-tokens", 100)
    assert code == 0, err
    assert "note: generating at most 40 tokens" in err


@pytest.mark.parametrize("argv, message", [
    (["generate", "{gpt}", "the king", "--length-penalty", "2"], "--length-penalty scores beam hypotheses"),
    (["generate", "{gpt}", "the king", "--seed", "3"], "--seed seeds sampling"),
    (["generate", "{gpt}", "the king", "--num-beams", "2", "--seed", "3"], "--seed seeds sampling"),
    (["text2text", "{t5}", "the king", "--source-column", "src"], "--source-column names the inputs' column"),
])
def test_flags_that_would_be_ignored_are_refused(seq2seq_folders, capsys, argv, message):
    folders = {"gpt": seq2seq_folders["gpt_wordpiece"], "t5": seq2seq_folders["t5"]}
    code, out, err = cli(capsys, *[a.format(**folders) for a in argv])
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_chat_keeps_the_conversation_within_the_trained_context(tmp_path, monkeypatch, capsys):
    """A model pretrained at --seq-len 24 reads at most 24 positions per reply (the newest turns),
    not its 512 max positions, where it was never trained; --context sets another window."""
    import io
    import json

    import lmzoo.generate as generation
    from conftest import corpus, tiny_folder

    folder = tiny_folder(tmp_path / "gpt", corpus(tmp_path / "corpus.txt"), "gpt-tiny", scale=0.5)
    (folder / "run_config.json").write_text(json.dumps({"format": 1, "data": {"seq_len": 24}}))
    seen, real = [], generation.generate

    def spy(model, ids, **kw):
        seen.append(ids.shape[1] + kw["max_new_tokens"])
        return real(model, ids, **kw)

    monkeypatch.setattr(generation, "generate", spy)
    for extra, window in (([], 24), (["--context", "40"], 40)):
        seen.clear()
        monkeypatch.setattr("sys.stdin", io.StringIO("the king and the queen went far away\n" * 6))
        code, out, err = cli(capsys, "chat", folder, "--max-new-tokens", 6, *extra)
        assert code == 0 and len(out.splitlines()) == 6, err
        assert max(seen) == window  # the history grew past the window and was cut to it
    assert cli(capsys, "chat", folder, "--context", 1000)[0] == 2
