"""Model FLOPs from the config equal the matmul FLOPs torch counts in a real forward pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

from lmzoo.flops import forward_flops, parameter_count, training_flops
from lmzoo.models import family_spec
from lmzoo.objectives.plm import PLMCollator
from lmzoo.presets import preset_config

T, TARGETS, P = 48, 16, 10

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_SDPA not in flop_registry:  # torch counts its CUDA attention kernels but not the CPU one
    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def counted(model: torch.nn.Module, batch: dict) -> int:
    with FlopCounterMode(display=False) as counter:  # (its module tracker fails under no_grad)
        model(**batch)
    return counter.get_total_flops()


@pytest.mark.parametrize("preset", ["bert-tiny", "roberta-tiny", "gpt-tiny", "t5-tiny", "t5-v1_1-small", "bart-tiny",
                                    "xlnet-tiny"])
def test_forward_flops_match_torch_count(preset):
    config = preset_config(preset, dropout=0.0)
    spec = family_spec(config.family)
    model = spec.objectives[spec.default_objective](config).eval()
    ids = torch.randint(5, config.vocab_size, (1, T))
    shape: dict = {"tokens": T}
    if config.is_encoder_decoder:
        batch = {"input_ids": ids, "decoder_input_ids": ids[:, :TARGETS]}
        shape["targets"] = TARGETS
    elif config.positions == "relative_sinusoidal":  # XLNet's permutation LM: P query rows
        batch = PLMCollator(pad_id=0, K=4, max_span=2, num_predict=P, special_ids=())([{"input_ids": ids[0]}])
        batch.pop("labels")
        shape.update(query_rows=P, head_rows=P)
    else:
        batch = {"input_ids": ids}
    expected = counted(model, batch)
    assert forward_flops(config, **shape) == pytest.approx(expected, rel=0.03)
    assert training_flops(config, **shape) == 3 * forward_flops(config, **shape)


def test_parameter_count_is_the_matmul_weights():
    config = preset_config("gpt-tiny")
    model = family_spec("gpt2").objectives["clm"](config)
    weights = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    # the LM head (tied to the token embeddings) is one of the matmuls, counted once
    assert parameter_count(config) == sum(weights.values())
    # 6·N per token plus attention
    assert training_flops(config, tokens=T) == pytest.approx(6 * parameter_count(config) * T, rel=0.1)
