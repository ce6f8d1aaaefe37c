"""The factorised Bernoulli NLL of binarised peaks with a hand-written backward pass.

``p = clamp(sigmoid(logits) * sigmoid(region_logit) * cell_factor, 1e-6, 1 - 1e-6)`` and
``nll_i = -sum_r mask_ir log(1 - p_ir) - sum_{r open} mask_ir [log p_ir - log(1 - p_ir)]``.

Autograd through that expression makes about twenty passes over the ``(n_pairs, n_peaks)`` arrays on the way back
(the clamp, three products with their broadcasts, ``log1p``, the gathers at the open peaks); with 3 decoded rows per
multiome cell this took longer than the decoder's matrix products on one CPU thread. The derivatives are short:
with ``g_i`` the incoming gradient of row ``i``, ``s = sigmoid(logits)``, ``a = sigmoid(region_logit)`` and
``M = g mask p / (1 - p)`` (zero where the clamp is active),

- ``d logits = M (1 - s)``, ``d region_logit = (1 - a) sum_i M``, ``d cell_factor_i = sum_r M_ir / cell_factor_i``,

plus, at the open peaks, the same with ``M_open = -g mask / (1 - p)``. Same values as autograd on the plain
expression to float rounding (``tests/test_sparse.py``).
"""

from __future__ import annotations

import torch

PROB_EPS = 1e-6


class _FactorBernoulliNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, region_logit, cell_factor, open_pair, open_col, mask, open_mask):
        n_cols = logits.shape[-1]
        region = torch.sigmoid(region_logit.float())
        sig = torch.sigmoid(logits.float())
        probs = sig * region
        probs.mul_(cell_factor)
        low, high = torch.aminmax(probs)
        # the clamp's gradient mask, built only when some probability is clamped (one reduction otherwise)
        outside = None
        if low < PROB_EPS or high > 1 - PROB_EPS:
            outside = (probs < PROB_EPS) | (probs > 1 - PROB_EPS)
        probs.clamp_(PROB_EPS, 1 - PROB_EPS)
        # in place where possible: every fresh (n_pairs x n_peaks) array costs page faults on CPU
        log_closed = torch.neg(probs).log1p_()
        dense = (log_closed if mask is None else log_closed * mask).sum(-1)
        flat = open_pair * n_cols + open_col
        probs_open = probs.reshape(-1).index_select(0, flat)
        correction = torch.log(probs_open) - log_closed.reshape(-1).index_select(0, flat)
        if open_mask is not None:
            correction = correction * open_mask
        nll = -(dense.index_add(0, open_pair, correction))
        ctx.save_for_backward(sig, probs, region, cell_factor, open_pair, open_col, mask, open_mask)
        ctx.outside = outside
        ctx.logits_dtype = logits.dtype
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        sig, probs, region, cell_factor, open_pair, open_col, mask, open_mask = ctx.saved_tensors
        n_cols = probs.shape[-1]
        # M = g * mask * p / (1 - p): the gradient of -log(1 - p) times p (p = s a c, so d p = p (1-s) d logits ...)
        scale = torch.rsub(probs, 1.0)
        torch.div(probs, scale, out=scale)
        scale.mul_(grad_nll.unsqueeze(-1))
        if mask is not None:
            scale.mul_(mask)
        flat = open_pair * n_cols + open_col
        # at the open peaks -log p replaces -log(1 - p): M_open = -g mask / (1 - p) - M
        probs_open = probs.reshape(-1).index_select(0, flat)
        open_scale = -grad_nll.index_select(0, open_pair) / (1.0 - probs_open)
        if open_mask is not None:
            open_scale = open_scale * open_mask
        scale.reshape(-1).index_add_(0, flat, open_scale)
        if ctx.outside is not None:
            scale.masked_fill_(ctx.outside, 0.0)
        grad_logits = grad_region = grad_cell = None
        if ctx.needs_input_grad[1]:
            grad_region = scale.sum(0) * (1.0 - region)
        if ctx.needs_input_grad[2]:
            row_sum = scale.sum(-1, keepdim=True)
            grad_cell = torch.where(cell_factor > 0, row_sum / cell_factor.clamp_min(1e-30), 0.0)
        if ctx.needs_input_grad[0]:
            grad_logits = scale.addcmul_(scale, sig, value=-1.0).to(ctx.logits_dtype)  # M (1 - s)
        return grad_logits, grad_region, grad_cell, None, None, None, None


def factor_bernoulli_open_nll(
    logits: torch.Tensor,
    region_logit: torch.Tensor,
    cell_factor: torch.Tensor,
    open_pair: torch.Tensor,
    open_col: torch.Tensor,
    mask: torch.Tensor | None = None,
    open_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row NLL of the open peaks ``(open_pair, open_col)`` (all others closed) under the factorised Bernoulli.

    Parameters
    ----------
    logits
        Decoder output of shape ``(n, n_peaks)``.
    region_logit
        Region factor logits of shape ``(n_peaks,)``.
    cell_factor
        Cell factor of shape ``(n, 1)``.
    open_pair, open_col
        Row and peak of every open entry, int64 arrays of the same length.
    mask
        Feature mask of shape ``(n, n_peaks)`` (or broadcastable), or None when every peak was measured.
    open_mask
        The mask at the open entries (required with ``mask``).

    Returns
    -------
    Array of shape ``(n,)``, in float32.
    """
    return _FactorBernoulliNLL.apply(logits, region_logit, cell_factor, open_pair, open_col, mask, open_mask)
