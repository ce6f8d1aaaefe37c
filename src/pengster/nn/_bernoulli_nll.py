"""The factorised Bernoulli NLL of binarised peaks with a hand-written backward pass, in row blocks.

``p = clamp(sigmoid(logits) * sigmoid(region_logit) * cell_factor, 1e-6, 1 - 1e-6)`` and
``nll_i = -sum_r mask_ir log(1 - p_ir) - sum_{r open} mask_ir [log p_ir - log(1 - p_ir)]``.

Autograd through that expression makes about twenty passes over the ``(n_pairs, n_peaks)`` arrays on the way back
(the clamp, three products with their broadcasts, ``log1p``, the gathers at the open peaks); with 3 decoded rows per
multiome cell this took longer than the decoder's matrix products on one CPU thread. The derivatives are short:
with ``g_i`` the incoming gradient of row ``i``, ``s = sigmoid(logits)``, ``a = sigmoid(region_logit)`` and
``M = g mask p / (1 - p)`` (zero where the clamp is active),

- ``d logits = M (1 - s)``, ``d region_logit = (1 - a) sum_i M``, ``d cell_factor_i = sum_r M_ir / cell_factor_i``,

plus, at the open peaks, the same with ``M_open = -g mask / (1 - p)``.

Both passes run over blocks of rows small enough for a CPU's cache (:data:`BLOCK_ENTRIES`): a block's arrays are
made, used and reused there, and only ``sigmoid(logits)`` (kept for the backward pass) and the gradient of the
logits are written out whole. Each value is computed as on the whole arrays, except the region gradient, a sum of
the blocks' sums (float rounding). Same values as autograd on the plain expression to float rounding
(``tests/test_sparse.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

PROB_EPS = 1e-6
BLOCK_ENTRIES = 1 << 18
"""Entries of a row block on the CPU (1 MB in float32), so that the few arrays of a block in use stay in its cache.
Elsewhere (a GPU) the whole array is one block: a block costs a dozen kernel launches and its bounds a host read."""


def _block_rows(n_rows: int, n_cols: int, device: torch.device) -> int:
    if device.type != "cpu":
        return max(1, n_rows)
    return max(1, min(n_rows, BLOCK_ENTRIES // max(n_cols, 1)))


def _blocks(n_rows: int, n_cols: int, open_pair: torch.Tensor) -> Iterator[tuple[int, int, int, int]]:
    """``(start, stop, first, last)``: each row block, and the range of its open entries (``open_pair`` sorted)."""
    edges = [*range(0, n_rows, _block_rows(n_rows, n_cols, open_pair.device)), n_rows]
    if len(edges) <= 2:
        return iter([(0, n_rows, 0, len(open_pair))] if n_rows else [])
    bounds = torch.searchsorted(open_pair, torch.tensor(edges, dtype=open_pair.dtype, device=open_pair.device))
    bounds = bounds.tolist()
    return zip(edges[:-1], edges[1:], bounds[:-1], bounds[1:], strict=True)


def _sum_logs(closed: torch.Tensor, out: torch.Tensor) -> None:
    """Row sums of ``log(closed)`` into ``out``, with a quarter of the logarithms (``closed`` is overwritten).

    The columns' four quarters are multiplied together first. Each factor ``1 - p`` is in ``[1e-6, 1]`` and exact
    to a float32 rounding, so a product stays above 1e-24 and its logarithm is within a few roundings (1e-7) of the
    sum of the four; the float32 sum over thousands of peaks rounds more than that. ``log1p(-p)`` over every entry
    took a quarter of the time of the forward and backward passes (``log`` is about 1.4 ns an entry on one thread).
    """
    quarter = closed.shape[-1] // 4
    head = closed[:, :quarter]
    for part in range(1, 4):
        head.mul_(closed[:, part * quarter : (part + 1) * quarter])
    torch.sum(head.log_(), -1, out=out)
    if closed.shape[-1] > 4 * quarter:
        out.add_(closed[:, 4 * quarter :].log_().sum(-1))


def _probs(sig: torch.Tensor, region: torch.Tensor, cell_factor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``sig * region * cell_factor`` (not clamped) into ``out``."""
    return torch.mul(sig, region, out=out).mul_(cell_factor)


class _FactorBernoulliNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, region_logit, cell_factor, open_pair, open_col, mask, open_mask):
        n_rows, n_cols = logits.shape
        ctx.logits_dtype = logits.dtype
        region = torch.sigmoid(region_logit.float())
        logits = logits.float()
        mask = None if mask is None else mask.expand(n_rows, n_cols)  # sliced by rows below
        sig = torch.empty_like(logits)
        dense = logits.new_empty(n_rows)
        buffer = logits.new_empty(_block_rows(n_rows, n_cols, logits.device), n_cols)
        clamped = False
        for start, stop, _, _ in _blocks(n_rows, n_cols, open_pair):
            torch.sigmoid(logits[start:stop], out=sig[start:stop])
            probs = _probs(sig[start:stop], region, cell_factor[start:stop], buffer[: stop - start])
            if not clamped:  # the clamp's gradient mask is rebuilt in the backward pass only when some p was clamped
                low, high = torch.aminmax(probs)
                clamped = bool(low < PROB_EPS or high > 1 - PROB_EPS)
            probs.clamp_(PROB_EPS, 1 - PROB_EPS)
            if mask is not None:
                probs.mul_(mask[start:stop])  # p = 0 where not measured: log(1 - p) = 0
            _sum_logs(probs.neg_().add_(1.0), dense[start:stop])
        probs_open = sig.reshape(-1).index_select(0, open_pair * n_cols + open_col) * region.index_select(0, open_col)
        probs_open = (probs_open * cell_factor.reshape(-1).index_select(0, open_pair)).clamp_(PROB_EPS, 1 - PROB_EPS)
        correction = torch.log(probs_open) - torch.neg(probs_open).log1p_()
        if open_mask is not None:
            correction = correction * open_mask
        nll = -(dense.index_add(0, open_pair, correction))
        ctx.save_for_backward(sig, region, cell_factor, open_pair, open_col, probs_open, mask, open_mask)
        ctx.clamped = clamped
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        sig, region, cell_factor, open_pair, open_col, probs_open, mask, open_mask = ctx.saved_tensors
        n_rows, n_cols = sig.shape
        # at the open peaks -log p replaces -log(1 - p): M_open = -g mask / (1 - p) - M
        open_scale = -grad_nll.index_select(0, open_pair) / (1.0 - probs_open)
        if open_mask is not None:
            open_scale = open_scale * open_mask
        needs_logits, needs_region, needs_cell = ctx.needs_input_grad[:3]
        grad_logits = torch.empty_like(sig) if needs_logits else None
        region_sum = torch.zeros_like(region) if needs_region else None
        row_sum = sig.new_empty(n_rows) if needs_cell else None
        buffers = sig.new_empty(2, _block_rows(n_rows, n_cols, sig.device), n_cols)
        for start, stop, first, last in _blocks(n_rows, n_cols, open_pair):
            rows = slice(start, stop)
            probs = _probs(sig[rows], region, cell_factor[rows], buffers[0, : stop - start])
            outside = ((probs < PROB_EPS) | (probs > 1 - PROB_EPS)) if ctx.clamped else None
            probs.clamp_(PROB_EPS, 1 - PROB_EPS)
            # M = g * mask * p / (1 - p): the gradient of -log(1 - p) times p (p = s a c, so d p = p (1-s) d logits ...)
            scale = torch.neg(probs, out=buffers[1, : stop - start]).add_(1.0)
            torch.div(probs, scale, out=scale)
            scale.mul_(grad_nll[rows].unsqueeze(-1))
            if mask is not None:
                scale.mul_(mask[rows])
            local = (open_pair[first:last] - start) * n_cols + open_col[first:last]
            scale.view(-1).index_add_(0, local, open_scale[first:last])
            if outside is not None:
                scale.masked_fill_(outside, 0.0)
            if needs_region:
                region_sum += scale.sum(0)
            if needs_cell:
                torch.sum(scale, -1, out=row_sum[rows])
            if needs_logits:
                torch.addcmul(scale, scale, sig[rows], value=-1.0, out=grad_logits[rows])  # M (1 - s)
        grad_region = region_sum * (1.0 - region) if needs_region else None
        grad_cell = None
        if needs_cell:
            grad_cell = torch.where(cell_factor > 0, row_sum.unsqueeze(-1) / cell_factor.clamp_min(1e-30), 0.0)
        if needs_logits:
            grad_logits = grad_logits.to(ctx.logits_dtype)
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
        Row and peak of every open entry, int64 arrays of the same length, in any order.
    mask
        0/1 feature mask (1: measured) of shape ``(n, n_peaks)`` (or broadcastable), or None when every peak was
        measured.
    open_mask
        The mask at the open entries (required with ``mask``).

    Returns
    -------
    Array of shape ``(n,)``, in float32.
    """
    several_blocks = _block_rows(len(logits), logits.shape[-1], logits.device) < len(logits)
    if several_blocks and len(open_pair) > 1 and bool((open_pair[1:] < open_pair[:-1]).any()):
        order = torch.argsort(open_pair, stable=True)  # the blocks take their entries as ranges of rows
        open_pair, open_col = open_pair.index_select(0, order), open_col.index_select(0, order)
        open_mask = None if open_mask is None else open_mask.index_select(0, order)
    return _FactorBernoulliNLL.apply(logits, region_logit, cell_factor, open_pair, open_col, mask, open_mask)
