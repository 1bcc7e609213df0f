"""Decompositions applied while capturing: composite ops written as the primitives they are made of.

Norms, softmaxes and attention become elementwise ops, products and reductions, whose terms have
closed forms (see :mod:`hessviz.ops`), instead of opaque ops whose terms would need per-op
Hessian-vector products. Each decomposition computes the same function as the op (the plan's
self-check compares the result with autograd on the original ``f``). Max-shifts of softmaxes are
detached: softmax is invariant to the shift, so its derivatives are unchanged.
"""

from __future__ import annotations

import math

import torch

aten = torch.ops.aten


def _norm_dims(x: torch.Tensor, normalized_shape) -> list[int]:
    return list(range(x.ndim - len(normalized_shape), x.ndim))


def native_layer_norm(x, normalized_shape, weight, bias, eps):
    dims = _norm_dims(x, normalized_shape)
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dims, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    out = centred * rstd
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out, mean, rstd


def native_group_norm(x, weight, bias, N, C, HxW, group, eps):
    shape = x.shape
    g = x.reshape(N, group, -1)
    mean = g.mean(-1, keepdim=True)
    centred = g - mean
    var = (centred * centred).mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    out = (centred * rstd).reshape(shape)
    affine = [1, C] + [1] * (len(shape) - 2)
    if weight is not None:
        out = out * weight.reshape(affine)
    if bias is not None:
        out = out + bias.reshape(affine)
    return out, mean.reshape(N, group), rstd.reshape(N, group)


def _softmax(x, dim, half_to_float=False):
    e = torch.exp(x - x.amax(dim, keepdim=True).detach())
    return e / e.sum(dim, keepdim=True)


def _log_softmax(x, dim, half_to_float=False):
    shifted = x - x.amax(dim, keepdim=True).detach()
    return shifted - torch.log(torch.exp(shifted).sum(dim, keepdim=True))


def _safe_softmax(x, dim, dtype=None):
    return _softmax(x if dtype is None else x.to(dtype), dim)


def logsumexp(x, dim, keepdim=False):
    top = x.amax(dim, keepdim=True).detach()
    out = torch.log(torch.exp(x - top).sum(dim, keepdim=True)) + top
    return out if keepdim else out.squeeze(dim)


def _attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * s
    if is_causal:
        L, S = q.shape[-2], k.shape[-2]
        keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return _softmax(scores, -1) @ v


def scaled_dot_product_attention(
    q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    if dropout_p:
        raise NotImplementedError("attention dropout draws random numbers")
    return _attention(q, k, v, attn_mask, is_causal, scale)


def _flash_cpu(q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    if dropout_p:
        raise NotImplementedError("attention dropout draws random numbers")
    out = _attention(q, k, v, attn_mask, is_causal, scale)
    return out, q.new_zeros(q.shape[:-1])  # the logsumexp output is never differentiated


#: The table handed to ``make_fx``.
TABLE = {
    aten.native_layer_norm.default: native_layer_norm,
    aten.native_group_norm.default: native_group_norm,
    aten._softmax.default: _softmax,
    aten._log_softmax.default: _log_softmax,
    aten._safe_softmax.default: _safe_softmax,
    aten.logsumexp.default: logsumexp,
    aten.scaled_dot_product_attention.default: scaled_dot_product_attention,
    aten._scaled_dot_product_flash_attention_for_cpu.default: _flash_cpu,
}


def div(a, b):
    """``a / b`` as ``a · (1/b)``: a product and an elementwise op, both with closed-form terms."""
    if isinstance(b, torch.Tensor) and isinstance(a, torch.Tensor):
        return a * torch.reciprocal(b)
    return NotImplemented


TABLE[aten.div.Tensor] = div


# -- losses: per element, then the reduction (0 none, 1 mean, 2 sum) ------------------------------
def _reduce(loss, reduction):
    return loss if reduction == 0 else (loss.mean() if reduction == 1 else loss.sum())


def mse_loss(x, target, reduction=1):
    d = x - target
    return _reduce(d * d, reduction)


def nll_loss_forward(x, target, weight, reduction, ignore_index):
    if x.ndim != 2 or weight is not None:
        return NotImplemented
    picked = -x.gather(1, target.unsqueeze(1)).squeeze(1)
    keep = (target != ignore_index).to(x.dtype)
    picked = picked * keep
    if reduction == 1:
        total = picked.sum() / keep.sum()
    else:
        total = _reduce(picked, reduction)
    return total, keep.sum()


def binary_cross_entropy_with_logits(x, target, weight=None, pos_weight=None, reduction=1):
    if pos_weight is not None:
        return NotImplemented
    loss = torch.nn.functional.softplus(x) - x * target
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


TABLE[aten.mse_loss.default] = mse_loss
TABLE[aten.nll_loss_forward.default] = nll_loss_forward
TABLE[aten.binary_cross_entropy_with_logits.default] = binary_cross_entropy_with_logits
