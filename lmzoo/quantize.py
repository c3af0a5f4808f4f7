"""Weight-only int8 quantization for fast decoding (inference only).

Batch-1 decoding reads every weight once per token, so its speed is set by how many bytes the
weights take, not by arithmetic. ``quantize_int8(model)`` replaces each ``nn.Linear`` (the LM head
included) by an ``Int8Linear``: int8 weights with one float scale per output channel (symmetric,
absmax / 127), a quarter of the float32 bytes. The matmul runs on PyTorch's weight-only int8 kernel
(``aten._weight_int8pack_mm``, as in gpt-fast) with bfloat16 activations; the rest of the model
(embeddings, norms, attention) runs in bfloat16.

Outputs are close to, not equal to, the float model's (each weight moves by at most half a
quantization step, scale / 2); greedy decoding usually keeps the same tokens for a while and can
then diverge. A quantized model cannot be trained or saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.errors import UserError


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights [out, in] and per-output-channel scales."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", q.contiguous())
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.scales.dtype)
        if x2.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        else:  # other devices: dequantize on the fly (still a quarter of the bytes in memory)
            y = F.linear(x2, self.weight.to(x2.dtype) * self.scales[:, None])
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Quantize ``model`` in place for inference: every ``nn.Linear`` → ``Int8Linear``, the rest → ``dtype``.

    Returns the model (in eval mode). Saving or training it afterwards raises ``UserError``.
    """
    if getattr(model, "quantized", False):
        return model
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not targets:
        raise UserError(f"{type(model).__name__} has no linear layers to quantize")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(linear, dtype))
    for param in model.parameters():
        param.data = param.data.to(dtype)
        param.requires_grad_(False)
    for module in model.modules():  # float buffers (e.g. BART's final_logits_bias) follow; int8 ones stay
        for key, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point():
                module._buffers[key] = buf.to(dtype)
    model.eval()
    model.quantized = True
    return model


def refuse_if_quantized(model: nn.Module, action: str) -> None:
    """A UserError when ``model`` was quantized (its int8 weights are not a checkpoint's float weights)."""
    if getattr(model, "quantized", False):
        raise UserError(f"cannot {action} an int8-quantized model: quantization is for inference only; "
                        "load the float checkpoint instead")
