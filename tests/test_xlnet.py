"""XLNet beyond the shared parity harness (tests/test_parity.py): perm_mask / target_mapping,
bi_data and clamp_len, memory across segments, loss kinds, lmzoo presets through transformers,
two-stream masks, generation, bad input."""

from __future__ import annotations

import pytest
import torch
import transformers

import lmzoo
from conftest import assert_close, hf_model, tiny_config
from lmzoo.errors import UserError
from lmzoo.models import xlnet
from lmzoo.models.xlnet import XLNetLMHeadModel, attention_blocks
from lmzoo.presets import preset_config

VOCAB = tiny_config("xlnet").vocab_size


def plm_batch(batch=3, length=11, n_predict=4, seed=0):
    """Random perm_mask, one-hot target_mapping (one all-zero padding row), two segments, left padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, VOCAB, (batch, length), generator=g)
    perm_mask = (torch.rand(batch, length, length, generator=g) > 0.5).float()
    target_mapping = torch.zeros(batch, n_predict, length)
    for b in range(batch):
        for m, pos in enumerate(torch.randperm(length, generator=g)[:n_predict]):
            target_mapping[b, m, pos] = 1.0
    target_mapping[-1, -1] = 0.0
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    mask = torch.ones(batch, length)
    mask[1, :3] = 0
    return dict(input_ids=ids, perm_mask=perm_mask, target_mapping=target_mapping, token_type_ids=types,
                attention_mask=mask)


def test_lm_head_parity_with_perm_mask_and_target_mapping(tmp_path):
    hf = hf_model(transformers.XLNetLMHeadModel, tiny_config("xlnet"), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    assert type(ours) is XLNetLMHeadModel
    batch = plm_batch()
    labels = torch.randint(0, VOCAB, (3, 4))
    labels[-1, -1] = -100
    with torch.no_grad():
        ref = hf(**batch, use_mems=False)
        out = ours(**batch)
        ref_loss = hf(**batch, labels=labels, use_mems=False).loss
        ours_loss = ours(**batch, labels=labels)
    assert_close(out.logits, ref.logits)
    assert_close(ours_loss.loss, ref_loss)
    assert_close(ours_loss.logits, ref.logits[labels != -100])  # logits only for the labelled rows


@pytest.mark.parametrize("options", [{"bi_data": True}, {"clamp_len": 3}])
def test_bare_model_parity_with_bi_data_and_clamp_len(tmp_path, options):
    hf = hf_model(transformers.XLNetModel, tiny_config("xlnet", **options), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    assert type(ours).__name__ == "XLNetModel"
    batch = plm_batch(batch=4)
    with torch.no_grad():
        assert_close(ours(**batch).last_hidden_state, hf(**batch, use_mems=False).last_hidden_state)
        assert_close(ours(batch["input_ids"]).last_hidden_state, hf(batch["input_ids"], use_mems=False).last_hidden_state)


@pytest.mark.parametrize("mem_len,reuse_len", [(None, None), (6, None), (6, 8)])
def test_mems_across_two_segments(tmp_path, mem_len, reuse_len):
    hf = hf_model(transformers.XLNetLMHeadModel, tiny_config("xlnet", mem_len=mem_len, reuse_len=reuse_len), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    first, second = plm_batch(seed=1), plm_batch(seed=2)
    del first["attention_mask"], second["attention_mask"]  # HF's mask ignores memory; keep it simple
    with torch.no_grad():
        ref1 = hf(**first, use_mems=True)
        out1 = ours(**first, use_mems=True)
        assert len(out1.mems) == 2 and out1.mems[0].shape[1] == (mem_len or reuse_len or 11)
        for ours_mem, ref_mem in zip(out1.mems, ref1.mems):
            assert_close(ours_mem, ref_mem.transpose(0, 1))
        ref2 = hf(**second, mems=ref1.mems, use_mems=True)
        out2 = ours(**second, mems=out1.mems, use_mems=True)
    assert_close(out2.logits, ref2.logits)
    for ours_mem, ref_mem in zip(out2.mems, ref2.mems):
        assert_close(ours_mem, ref_mem.transpose(0, 1))
    # the memory matters: without it the second segment's logits differ
    with torch.no_grad():
        assert not torch.allclose(ours(**second).logits, out2.logits, atol=1e-3)


@pytest.mark.parametrize("problem", ["multi_label_classification", "regression"])  # single label: test_parity
def test_sequence_classification_losses_match_hf(tmp_path, problem):
    n = 1 if problem == "regression" else 3
    config = tiny_config("xlnet", num_labels=n, problem_type=problem)
    hf = hf_model(transformers.XLNetForSequenceClassification, config, tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    assert type(ours).__name__ == "XLNetForSequenceClassification"
    batch = plm_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = {"multi_label_classification": torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]]),
              "regression": torch.tensor([0.5, -1.0, 2.0])}[problem]
    with torch.no_grad():
        ref = hf(**inputs, labels=labels, use_mems=False)
        out = ours(**inputs, labels=labels)
    assert_close(out.logits, ref.logits)
    assert_close(out.loss, ref.loss)


@pytest.mark.parametrize("cls", ["XLNetLMHeadModel", "XLNetForSequenceClassification"])
def test_round_trip_through_transformers(tmp_path, cls):
    config = preset_config("xlnet-tiny", vocab_size=VOCAB, d_model=32, n_heads=4, d_ff=37, mem_len=5,
                                         id2label={0: "no", 1: "yes", 2: "maybe"})
    torch.manual_seed(0)
    ours = getattr(xlnet, cls)(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours.save_pretrained(tmp_path)
    hf = getattr(transformers, cls).from_pretrained(tmp_path).eval()
    assert hf.config.mem_len == 5 and hf.config.num_labels == 3
    batch = plm_batch()
    if cls == "XLNetForSequenceClassification":
        batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        assert_close(ours(**batch).logits, hf(**batch, use_mems=False).logits)
    again = lmzoo.from_pretrained(tmp_path)
    assert again.config == ours.config
    with torch.no_grad():
        assert_close(again(**batch).logits, ours(**batch).logits)


def test_masks_content_sees_itself_query_does_not():
    perm = torch.tensor([[[1, 1, 0], [0, 1, 0], [1, 1, 0]]]).float()  # token 0 predicted after 1; 1 predicted first
    content, query = attention_blocks(perm, torch.tensor([[1, 1, 0]]), 1, 3, mlen=2)
    assert content.shape == query.shape == (1, 3, 5)
    assert not content[0, :, :2].any() and not query[0, :, :2].any()  # memory always visible
    assert query[0, 0, 2] and query[0, 1, 3]  # predicted tokens cannot see themselves in the query stream
    assert not content[0, 0, 2] and not content[0, 1, 3] and not content[0, 2, 4]  # content stream sees itself
    assert query[0, 2, 4] and query[0, 0, 4] and content[0, 0, 4]  # the padding key is blocked
    itself = torch.zeros(1, 3, 5, dtype=torch.bool)
    itself[0, [0, 1, 2], [2, 3, 4]] = True
    assert torch.equal(content | itself, query | itself)  # the streams differ only on the diagonal


def test_too_long_without_memory_is_a_user_error():
    model = lmzoo.from_preset("xlnet-tiny", vocab_size=VOCAB, max_positions=8).eval()
    ids = torch.randint(6, VOCAB, (1, 12))
    with pytest.raises(UserError, match="exceeds max_positions 8"):
        model(ids)
    with torch.no_grad():  # the same text in segments with memory is fine
        first = model(ids[:, :6], use_mems=True)
        out = model(ids[:, 6:], mems=first.mems)
    assert out.logits.shape == (1, 6, VOCAB)


def test_generation_matches_transformers_greedy(tmp_path):
    for mem_len in (None, 9):  # 9 < prompt + new tokens: the memory window slides
        config = tiny_config("xlnet", mem_len=mem_len, initializer_range=0.3)
        hf = hf_model(transformers.XLNetLMHeadModel, config, tmp_path, seed=1)
        ours = lmzoo.from_pretrained(tmp_path)
        prompt = torch.randint(6, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
        ref = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0, output_scores=True,
                          return_dict_in_generate=True)
        state = ours.prepare_generation(prompt, None, 12)
        tokens, new = prompt, prompt
        for step in range(12):
            logits = ours.generation_step(new, state)
            assert_close(logits, ref.scores[step])
            new = logits.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, new], 1)
        assert torch.equal(tokens, ref.sequences)
        assert len(set(tokens[0, 7:].tolist())) > 2  # not a degenerate repetition


def test_generation_with_left_padding_equals_unpadded():
    torch.manual_seed(0)
    model = lmzoo.from_preset("xlnet-tiny", vocab_size=VOCAB, pad_token_id=0).eval()
    prompt = torch.randint(6, VOCAB, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    outs = []
    for ids, m in ((prompt, None), (padded, mask)):
        state = model.prepare_generation(ids, m, 4)
        logits = [model.generation_step(ids, state)]
        for tok in (7, 8, 9):
            logits.append(model.generation_step(torch.tensor([[tok]]), state))
        outs.append(torch.stack(logits))
    assert_close(outs[0], outs[1])


def test_generation_state_reorder():
    torch.manual_seed(0)
    model = lmzoo.from_preset("xlnet-tiny", vocab_size=VOCAB).eval()
    prompt = torch.randint(6, VOCAB, (3, 5))
    state = model.prepare_generation(prompt, None, 3)
    model.generation_step(prompt, state)
    state.reorder(torch.tensor([2, 2, 0]))
    nxt = torch.tensor([[11], [12], [13]])
    logits = model.generation_step(nxt, state)
    fresh = model.prepare_generation(prompt[[2, 2, 0]], None, 3)
    model.generation_step(prompt[[2, 2, 0]], fresh)
    assert_close(logits, model.generation_step(nxt, fresh))


def test_shared_generate_module_equals_transformers_greedy(tmp_path):
    from lmzoo.generate import generate

    config = tiny_config("xlnet", initializer_range=0.3)
    hf = hf_model(transformers.XLNetLMHeadModel, config, tmp_path, seed=1)
    ours = lmzoo.from_pretrained(tmp_path)
    prompt = torch.randint(6, VOCAB, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
        mine = generate(ours, prompt, max_new_tokens=12, eos_token_id=())
    assert torch.equal(mine, ref[:, 7:])


def test_training_loss_fused_with_the_head_equals_transformers_loss_and_gradients(tmp_path):
    """In training mode the LM head is fused with the loss (no logits); loss and gradients (head
    weight, its bias) equal transformers' on the same weights and PLM batch."""
    hf = hf_model(transformers.XLNetLMHeadModel, tiny_config("xlnet", dropout=0.0), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    inputs = plm_batch()
    labels = torch.randint(6, VOCAB, (3, 4), generator=torch.Generator().manual_seed(1))
    labels[-1, -1] = -100  # the all-zero target_mapping row
    hf.train(), ours.train()
    ref = hf(**inputs, labels=labels, use_mems=False)
    out = ours(**inputs, labels=labels)
    assert out.logits is None  # the fused path
    assert_close(out.loss, ref.loss)
    ref.loss.backward()
    out.loss.backward()
    assert_close(ours.lm_head.weight.grad, hf.lm_loss.weight.grad)
    assert_close(ours.lm_head.bias.grad, hf.lm_loss.bias.grad)
