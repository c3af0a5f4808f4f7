"""Weight-only int8 quantization (lmzoo.quantize): error bounds, trained-model fidelity, refusals, CLI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmzoo.errors import UserError
from lmzoo.generate import generate
from lmzoo.models.gpt2 import GPT2LMHeadModel
from lmzoo.models.t5 import T5ForConditionalGeneration
from lmzoo.presets import preset_config
from lmzoo.quantize import Int8Linear, quantize_int8
from lmzoo.train.loop import TrainConfig, train


def test_int8_linear_error_within_the_quantization_bound():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    q = Int8Linear(linear, dtype=torch.float32)
    # the int8 weights times the scales reconstruct the weights within half a step per channel
    step = q.scales[:, None].float()
    assert bool(((q.weight.float() * step - linear.weight).abs() <= step / 2 + 1e-7).all())
    assert q.weight.dtype == torch.int8 and int(q.weight.abs().max()) == 127  # absmax maps to 127
    x = torch.randn(5, 7, 96)
    bound = x.abs() @ (step.expand(-1, 96) / 2).t()  # |x| . |dW| summed over inputs
    err = (q(x) - linear(x)).abs().detach()
    assert bool((err <= bound + 1e-4).all())
    assert err.max() > 0  # it really is quantized


def _trained_gpt() -> tuple[GPT2LMHeadModel, torch.Tensor]:
    """A tiny GPT that learned a deterministic sequence (count up mod 40): peaked predictions."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=48, max_positions=64, dropout=0.0,
                                          attention_dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    starts = torch.randint(0, 40, (16, 1))
    rows = (starts + torch.arange(32)) % 40
    for _ in range(120):
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), rows


def test_quantized_trained_gpt_keeps_loss_and_greedy_tokens():
    model, rows = _trained_gpt()
    prompt = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        float_loss = model(input_ids=rows, labels=rows).loss.item()
    float_tokens = generate(model, prompt, max_new_tokens=20, eos_token_id=())
    assert float_tokens.tolist()[0][:5] == [11, 12, 13, 14, 15]  # it learned the task
    quantize_int8(model)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.transformer.layers[0].attn.q, Int8Linear)
    with torch.no_grad():
        q_loss = model(input_ids=rows, labels=rows).loss.item()
    assert abs(q_loss - float_loss) < 0.05 + 0.05 * float_loss
    assert torch.equal(generate(model, prompt, max_new_tokens=20, eos_token_id=()), float_tokens)


def test_quantized_seq2seq_logits_and_cached_decoding():
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(preset_config("t5-tiny", vocab_size=64, dropout=0.0)).eval()
    src = torch.randint(3, 64, (2, 9))
    start = torch.zeros(2, 1, dtype=torch.long)
    ref = model(input_ids=src, decoder_input_ids=start).logits
    quantize_int8(model)
    got = model(input_ids=src, decoder_input_ids=start).logits.float()
    assert torch.allclose(got, ref, atol=0.1 * ref.abs().max().item())
    # the int8 model's cached greedy decoding is its own uncached argmax at every step
    out = generate(model, src, max_new_tokens=6, eos_token_id=())
    with torch.no_grad():
        full = model(input_ids=src, decoder_input_ids=torch.cat([start, out[:, :-1]], 1)).logits
    assert torch.equal(full.argmax(-1), out)


def test_quantized_xlnet_generates_its_own_greedy_tokens():
    """XLNet's generation buffers took their dtype from lm_head.weight, which int8 makes int8."""
    from lmzoo.models.xlnet import XLNetLMHeadModel

    torch.manual_seed(0)
    model = quantize_int8(XLNetLMHeadModel(preset_config("xlnet-tiny", vocab_size=64, dropout=0.0)).eval())
    prompt = torch.randint(3, 64, (1, 5))
    out = generate(model, prompt, max_new_tokens=4, eos_token_id=())
    assert out.shape == (1, 4)
    ids = prompt
    with torch.no_grad():
        for _ in range(4):  # one uncached greedy step at a time: the next token is predicted at a new position
            ids = torch.cat([ids, generate(model, ids, max_new_tokens=1, eos_token_id=())], 1)
    assert torch.equal(ids[:, 5:], out)


def test_quantized_model_cannot_be_saved_or_trained(tmp_path):
    model = quantize_int8(GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=32)))
    with pytest.raises(UserError, match="int8-quantized"):
        model.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q" / "model.safetensors").exists()
    with pytest.raises(UserError, match="int8-quantized"):
        train(model, [{"input_ids": [1, 2]}], lambda ex, g: ex, out_dir=tmp_path / "run",
              config=TrainConfig(max_steps=1))


def test_cli_generate_with_int8(tmp_path, capsys):
    from lmzoo.cli import main
    from lmzoo.tokenizer import train_tokenizer

    text = "the cat sat on the mat. " * 50
    (tmp_path / "t.txt").write_text(text)
    tok = train_tokenizer([str(tmp_path / "t.txt")], kind="bpe", vocab_size=300)
    folder = tmp_path / "lm"
    model = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=tok.vocab_size, max_positions=64))
    model.save_pretrained(folder)
    tok.save(folder)
    code = main(["generate", str(folder), "the cat", "--max-new-tokens", "5", "--quantize", "int8"])
    out = capsys.readouterr().out
    assert code in (0, None)
    # the CLI prints what the quantized model generates through the Python API
    quantized = quantize_int8(GPT2LMHeadModel.from_pretrained(folder))
    ids = generate(quantized, torch.tensor([tok.encode("the cat")]), max_new_tokens=5)
    assert out == "the cat" + tok.decode(ids[0].tolist()) + "\n"
