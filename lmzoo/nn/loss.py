"""Every loss lmzoo computes, for the models' HF-style ``labels=`` argument and the objectives alike.

- ``token_cross_entropy``: mean CE over labels != -100 of given logits (float32).
- ``lm_loss``: an LM head's logits and loss over hidden states (``shift`` for causal LMs); while
  training with autograd the head is fused with the loss (``linear_cross_entropy``) and no
  logits are returned.
- ``masked_lm_loss``: MLM / PLM, where only the labelled rows go through the head.
- ``sequence_classification_loss`` (CE / BCE / MSE by problem type) and ``token_classification_loss``.

``linear_cross_entropy(hidden, weight, labels)`` equals
``F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, ignore_index=-100)`` (mean over the
labels that are not ignored). It walks the rows in chunks (~16M logits each): for each chunk it computes
the logits, their softmax in float32, the loss, and at once the gradient wrt the hidden rows; the
full-size float32 logits, log-probabilities and their gradient are never written, which is most of the
time a large-vocabulary LM head spends outside its matmuls.

The weight gradient: in float32 it is summed chunk by chunk. Under autocast the chunks' gradients wrt
the logits are stashed in the autocast dtype (up to 512 MB) and the weight gradient is one GEMM per
stash, which rounds it once, as F.linear's backward does.

The chunk buffers and the stash are kept between calls on CPU (a module-level workspace), because a
fresh large allocation is page-faulted in again on every training step there; that memory stays
reserved for the life of the process.

Under autocast the matmuls run in the autocast dtype (as ``F.linear`` would) and the softmax in
float32 (as the ``.float()`` cross-entropy would); the gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.compiling import eager_in_compile
from lmzoo.errors import UserError

IGNORE_INDEX = -100
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
CHUNK_ELEMENTS = 1 << 24  # logits per chunk by default
STASH_BYTES = 512 << 20  # low precision: logits gradients kept for one weight-gradient GEMM

_WORKSPACE: dict[tuple, torch.Tensor] = {}


def _workspace(name: str, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A [rows, cols] scratch buffer kept between calls on CPU, where a fresh large allocation is
    page-faulted in again on every call (CUDA's caching allocator already reuses memory)."""
    if device.type != "cpu":
        return torch.empty(rows, cols, dtype=dtype, device=device)
    key = (name, dtype, device)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < rows * cols:
        buf = _WORKSPACE[key] = torch.empty(rows * cols, dtype=dtype, device=device)
    return buf[:rows * cols].view(rows, cols)


def _chunk_loss(logits: torch.Tensor, probs: torch.Tensor, target: torch.Tensor, label_smoothing: float
                ) -> torch.Tensor:
    """Sum of the chunk's row losses from its logits and (float32) softmax."""
    index = torch.arange(target.shape[0], device=target.device)
    loss_rows = -probs[index, target].log()
    tiny = probs[index, target] < 1e-30  # -log(p) loses precision near underflow: use the lse there
    if bool(tiny.any()):
        sel = index[tiny]
        rows_logits = logits[sel].float()
        loss_rows[tiny] = torch.logsumexp(rows_logits, -1) - rows_logits[torch.arange(len(sel)), target[sel]]
    if label_smoothing:  # (1 - eps) * nll + eps * mean over the vocabulary of -log p
        lse = torch.logsumexp(logits, -1, keepdim=True).float()
        smooth_rows = lse.squeeze(1) - logits.float().mean(-1)
        loss_rows = (1.0 - label_smoothing) * loss_rows + label_smoothing * smooth_rows
    return loss_rows.sum()


class _Gradients:
    """The gradients wrt hidden rows, weight and bias, accumulated chunk by chunk from the chunks'
    gradients wrt the logits.

    float32: the weight gradient is summed chunk by chunk (addmm_). Low precision: the chunks'
    gradients wrt the logits are stashed and the weight gradient is one GEMM per stash (as
    F.linear's backward computes it: float32 accumulation inside the GEMM, one rounding).
    """

    def __init__(self, h: torch.Tensor, weight: torch.Tensor, needs: tuple[bool, bool, bool], n_valid: int,
                 rows_per_chunk: int, dtype: torch.dtype) -> None:
        needs_h, needs_w, needs_b = needs
        self.hidden, self.n_valid = h, n_valid
        low = dtype != torch.float32
        vocab = weight.shape[0]
        self.h = torch.empty_like(h) if needs_h else None
        self.w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if needs_w and (not low or n_valid == 0) else None
        self.b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if needs_b else None
        self.needs_w = needs_w
        self.stash = None
        if low and needs_w and n_valid:
            stash_rows = rows_per_chunk * max(1, STASH_BYTES // (rows_per_chunk * vocab * h.element_size()))
            self.stash = _workspace("stash", min(stash_rows, n_valid), vocab, dtype, h.device)
        self.low_buf = _workspace("low", rows_per_chunk, vocab, dtype, h.device) if low and self.stash is None \
            else None
        self.stash_start = 0  # first row of h whose gradient is in the stash

    def add(self, grad_logits: torch.Tensor, start: int, w: torch.Tensor) -> None:
        """Add the gradients of the chunk of rows [start, start + n) given d loss / d logits (float32)."""
        n = grad_logits.shape[0]
        if self.b is not None:
            self.b += grad_logits.sum(0)
        if self.stash is not None:  # low precision, weight gradient needed: the stash is the buffer
            offset = start - self.stash_start
            grad = self.stash[offset:offset + n].copy_(grad_logits)
            if self.h is not None:
                torch.mm(grad, w, out=self.h[start:start + n])
            if offset + n == self.stash.shape[0] or start + n == self.n_valid:  # stash full or last chunk
                part = torch.mm(self.stash[:offset + n].t(), self.hidden[self.stash_start:start + n])
                self.w = part.float() if self.w is None else self.w.add_(part)
                self.stash_start = start + n
            return
        if self.h is not None:
            grad = grad_logits if self.low_buf is None else self.low_buf[:n].copy_(grad_logits)
            torch.mm(grad, w, out=self.h[start:start + n])
        if self.needs_w:
            self.w.addmm_(grad_logits.t(), self.hidden[start:start + n])


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and (when needed) the gradients; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                chunk_size: int, ignore_index: int, label_smoothing: float) -> torch.Tensor:
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        needs = ctx.needs_input_grad[:3]  # hidden, weight, bias
        keep = labels != ignore_index
        n_valid = int(keep.sum())
        rows = keep.nonzero().squeeze(1)
        h = hidden.index_select(0, rows).to(dtype)  # ignored rows contribute nothing: drop them up front
        target = labels.index_select(0, rows)
        w = weight if weight.dtype == dtype else _workspace("weight", *weight.shape, dtype, weight.device).copy_(weight)
        b = bias.to(dtype) if bias is not None else None
        grads = _Gradients(h, weight, needs, n_valid, min(chunk_size, n_valid), dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # buffers reused by every chunk (and kept between calls on CPU)
        rows_per_chunk, vocab = min(chunk_size, n_valid), weight.shape[0]
        logits_buf = _workspace("logits", rows_per_chunk, vocab, dtype, h.device)
        probs_buf = _workspace("probs", rows_per_chunk, vocab, torch.float32, h.device)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, n_valid, chunk_size):
                h_c, t_c = h[start:start + chunk_size], target[start:start + chunk_size]
                n = h_c.shape[0]
                logits = logits_buf[:n]
                if b is None:
                    torch.mm(h_c, w.t(), out=logits)
                else:
                    torch.addmm(b, h_c, w.t(), out=logits)
                probs = probs_buf[:n]
                # in place in the float32 buffer: softmax(dtype=float32) would convert into a fresh tensor
                probs = torch.softmax(logits if logits.dtype == torch.float32 else probs.copy_(logits), -1, out=probs)
                total += _chunk_loss(logits, probs, t_c, label_smoothing)
                if any(needs):
                    # softmax - smoothed one-hot = d(sum of row losses) / d logits
                    probs[torch.arange(n, device=t_c.device), t_c] -= 1.0 - label_smoothing
                    if label_smoothing:
                        probs -= label_smoothing / vocab
                    grads.add(probs, start, w)
        scale = 1.0 / n_valid if n_valid else float("nan")
        ctx.save_for_backward(rows)
        # the gradients are kept as attributes, not saved tensors: backward scales them in place and
        # hands them over, so autograd stores them as .grad without copying [V, D] tensors
        ctx.grads = (grads.h, grads.w, grads.b)
        ctx.scale, ctx.shapes = scale, (hidden.shape, hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total / n_valid  # 0 / 0 = NaN when every label is ignored, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (rows,) = ctx.saved_tensors
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward through the same loss twice (retain_graph) "
                               "is not supported")
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None
        hidden_shape, hidden_dtype, weight_dtype, bias_dtype = ctx.shapes
        scale = grad_loss * ctx.scale
        out_h = out_w = out_b = None
        if ctx.needs_input_grad[0]:
            out_h = torch.zeros(hidden_shape, dtype=hidden_dtype, device=grad_h.device)
            out_h.index_copy_(0, rows, (grad_h * scale.to(grad_h.dtype)).to(hidden_dtype))
        if ctx.needs_input_grad[1]:
            out_w = grad_w.mul_(scale).to(weight_dtype)
        if ctx.needs_input_grad[2]:
            out_b = grad_b.mul_(scale).to(bias_dtype)
        return out_h, out_w, out_b, None, None, None, None


@eager_in_compile  # data-dependent row counts and a hand-written backward: eager in a compiled model
def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, *, chunk_size: int | None = None,
                         ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` [N, V] against ``labels`` [N], without the logits.

    ``hidden`` [N, D] (or [..., D] with ``labels`` [...]); rows whose label is ``ignore_index`` are left
    out of the mean (NaN when every row is ignored, as ``F.cross_entropy``). ``chunk_size`` rows of
    logits exist at a time (default: ``CHUNK_ELEMENTS // vocab`` rows, about 16M logits).
    ``label_smoothing`` as ``F.cross_entropy``'s.
    """
    if chunk_size is None:
        chunk_size = max(16, CHUNK_ELEMENTS // weight.shape[0])
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, labels.reshape(-1),
                                     chunk_size, ignore_index, float(label_smoothing))


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy (float32) of ``logits`` [..., V] over ``labels`` [...] that are not -100."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def lm_loss(hidden: torch.Tensor, labels: torch.Tensor | None, *, weight: torch.Tensor,
            bias: torch.Tensor | None = None, head: nn.Module | None = None, fused: bool = False,
            shift: bool = False, label_smoothing: float = 0.0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(logits, loss) of the LM head ``hidden @ weight.T + bias`` (``head(hidden)`` when a head module is
    given, e.g. a quantized one) against ``labels`` (None: no loss).

    ``shift``: the logits at position t predict the label at t + 1 (causal LM; logits keep every
    position). ``fused`` (training with autograd): the head runs inside ``linear_cross_entropy`` and
    logits is None: the [..., V] logits are never stored.
    """
    if labels is not None and fused:
        rows, targets = (hidden[:, :-1], labels[:, 1:]) if shift else (hidden, labels)
        return None, linear_cross_entropy(rows, weight, targets, bias, label_smoothing=label_smoothing)
    logits = head(hidden) if head is not None else F.linear(hidden, weight, bias)
    if labels is None:
        return logits, None
    scored, targets = (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)
    return logits, token_cross_entropy(scored, targets, label_smoothing)


@eager_in_compile  # the labelled rows' number is data-dependent: eager, so the head sees only those rows
def masked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor | None, *, head: nn.Module,
                   fused: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """MLM / PLM (logits, loss): with labels only the labelled rows go through ``head`` (the costliest
    matmul of a small encoder), so logits are [n_labelled, V] in row-major order of ``labels != -100``;
    a batch without any label has loss 0. ``fused`` needs ``head`` to be one linear layer."""
    if labels is None:
        return head(hidden), None
    selected = labels != IGNORE_INDEX
    rows, targets = hidden[selected], labels[selected]
    if rows.shape[0] == 0:
        logits = head(rows)
        return logits, logits.sum() * 0.0
    return lm_loss(rows, targets, weight=head.weight if fused else None, bias=head.bias if fused else None,
                   head=head, fused=fused)


def problem_type(config: ModelConfig, labels: torch.Tensor) -> str:
    """``config.problem_type``, else HF's guess: regression for one output, single-label for integer
    labels, multi-label otherwise."""
    if config.problem_type:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if labels.dtype in (torch.long, torch.int) else "multi_label_classification"


def sequence_classification_loss(config: ModelConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (single label), BCE with logits on float multi-hot labels (multi-label), or MSE
    (regression), as HF's *ForSequenceClassification compute it."""
    kind = problem_type(config, labels)
    logits = logits.float()
    if kind == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1))
        return F.mse_loss(logits, labels.float())
    if kind == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled tokens (-100 = not scored: padding, specials, later subwords)."""
    return token_cross_entropy(logits, labels)
