"""Losses of TAGI stage-2 training: `L = L_pred + lambda1 * L_kl + lambda2 * L_ins` (paper, Sec. 3.2.4).

All functions are pure: tensors in, a scalar tensor out. Positions labelled -100 are padding; they are removed in
one place ([`masked_token_mean`]) so every token-level loss averages over label tokens only. Teacher inputs are
treated as constants (detached): gradients reach the student only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX
from ..modeling.lora import LoraFactors


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 -> fp32, fp64 stays fp64


def masked_token_mean(per_token: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average a per-token quantity over the positions whose label is not -100.

    Args:
        per_token (`torch.Tensor` of shape `(batch, tgt_len)`): Loss per target position.
        labels (`torch.Tensor` of shape `(batch, tgt_len)`): Target ids, -100 at padding.

    Returns:
        `torch.Tensor`: Scalar mean over label tokens (0 when there are none, so an empty batch adds nothing).

    Example:

    ```python
    >>> import torch
    >>> from tagi_hf.training.losses import masked_token_mean
    >>> masked_token_mean(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[5, 6, -100]]))
    tensor(2.)
    ```
    """
    mask = labels != IGNORE_INDEX  # (batch, tgt_len)
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()  # where, not *: inf at padding stays out
    return total / mask.sum().clamp(min=1)


def _check_logits(logits: torch.Tensor, labels: torch.Tensor, name: str = "logits") -> None:
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"`{name}` must have shape (batch, tgt_len, vocab) matching `labels` {tuple(labels.shape)}, "
            f"got {tuple(logits.shape)}."
        )


def prediction_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`L_pred`: token-mean cross-entropy of the student on the labels, ignoring -100.

    Args:
        logits (`torch.Tensor` of shape `(batch, tgt_len, vocab)`): Student decoder logits.
        labels (`torch.Tensor` of shape `(batch, tgt_len)`): Target ids, -100 at padding.

    Returns:
        `torch.Tensor`: Scalar loss (computed in float32).

    Example:

    ```python
    >>> import math, torch
    >>> from tagi_hf.training.losses import prediction_loss
    >>> loss = prediction_loss(torch.zeros(1, 2, 10), torch.tensor([[3, -100]]))
    >>> round(loss.item(), 4) == round(math.log(10), 4)
    True
    ```
    """
    _check_logits(logits, labels)
    per_token = F.cross_entropy(_upcast(logits).transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return masked_token_mean(per_token, labels)  # per_token: (batch, tgt_len)


def distillation_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """`L_kl`: KL(teacher || student) between temperature-softened output distributions, times `T^2`.

    With `p = softmax(teacher / T)` and `q = softmax(student / T)`, each position contributes
    `T^2 * sum_v p_v (log p_v - log q_v)`; the `T^2` keeps gradient magnitudes comparable across temperatures
    (Hinton et al., 2015). Positions labelled -100 are ignored; the teacher is detached.

    Args:
        student_logits (`torch.Tensor` of shape `(batch, tgt_len, vocab)`): Student decoder logits.
        teacher_logits (`torch.Tensor` of shape `(batch, tgt_len, vocab)`): Teacher logits on the same labels.
        labels (`torch.Tensor` of shape `(batch, tgt_len)`): Target ids, -100 at padding.
        temperature (`float`, *optional*, defaults to 1.0): Softening temperature `T > 0`.

    Returns:
        `torch.Tensor`: Scalar loss, averaged over label tokens (computed in float32).

    Example:

    ```python
    >>> import torch
    >>> from tagi_hf.training.losses import distillation_kl_loss
    >>> logits = torch.randn(2, 3, 7)
    >>> distillation_kl_loss(logits, logits.clone(), torch.ones(2, 3, dtype=torch.long)).abs().item() < 1e-6
    True
    ```
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"`student_logits` {tuple(student_logits.shape)} and `teacher_logits` {tuple(teacher_logits.shape)} "
            "must have the same shape."
        )
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    _check_logits(student_logits, labels, name="student_logits")
    log_q = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)  # (batch, tgt_len, vocab)
    log_p = F.log_softmax(_upcast(teacher_logits.detach()) / temperature, dim=-1)  # (batch, tgt_len, vocab)
    per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (batch, tgt_len)
    return masked_token_mean(per_token, labels) * temperature**2


class SparseTeacher(NamedTuple):
    """A teacher's output distribution kept as its `k` most likely tokens per position (see
    [`tagi_hf.training.teacher_logits`]): `p_v = exp(logits / T - log_normalizer)` for the kept ids, the rest lumped.

    Args:
        ids (`torch.Tensor` of shape `(batch, tgt_len, k)`): Token ids, most likely first.
        logits (`torch.Tensor` of shape `(batch, tgt_len, k)`): The teacher's raw logits of those ids.
        log_normalizer (`torch.Tensor` of shape `(batch, tgt_len)`): `logsumexp(all logits / T)` over the vocabulary.
    """

    ids: torch.Tensor
    logits: torch.Tensor
    log_normalizer: torch.Tensor


def sparse_distillation_kl_loss(
    student_logits: torch.Tensor, teacher: SparseTeacher, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """`L_kl` from a teacher kept as its top-k tokens: [`distillation_kl_loss`] over `k + 1` outcomes, the `k` kept
    tokens and "any other token" (teacher mass `1 - sum p_k`, student mass `1 - sum q_k`).

    Each kept token's term `p_v (log p_v - log q_v)` is exact (the normaliser is the full vocabulary's); only the tail
    is lumped, so the value is the full KL when the tail holds no teacher mass and never above it otherwise (KL can
    only shrink when outcomes are merged). With `k` = the vocabulary size it is [`distillation_kl_loss`].

    Returns:
        `torch.Tensor`: Scalar loss, averaged over label tokens and times `T^2` (computed in float32).
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    _check_logits(student_logits, labels, name="student_logits")
    if teacher.ids.shape[:2] != labels.shape or teacher.logits.shape != teacher.ids.shape:
        raise ValueError(
            f"The sparse teacher's ids {tuple(teacher.ids.shape)} and logits {tuple(teacher.logits.shape)} must be "
            f"(batch, tgt_len, k) matching `labels` {tuple(labels.shape)}."
        )
    log_q_all = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)  # (batch, tgt_len, vocab)
    log_q = log_q_all.gather(-1, teacher.ids.long())  # (batch, tgt_len, k)
    log_p = _upcast(teacher.logits.detach()) / temperature - _upcast(teacher.log_normalizer.detach())[..., None]
    p = log_p.exp()
    kept = (p * (log_p - log_q)).sum(-1)  # (batch, tgt_len)
    tiny = torch.finfo(log_q.dtype).tiny
    rest_p = (1 - p.sum(-1)).clamp(min=0)
    rest_q = (1 - log_q.exp().sum(-1)).clamp(min=tiny)
    tail = torch.where(rest_p > 0, rest_p * (rest_p.clamp(min=tiny).log() - rest_q.log()), torch.zeros_like(rest_p))
    return masked_token_mean(kept + tail, labels) * temperature**2


def _as_scaling(scaling: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(scaling, dtype=like.dtype, device=like.device)  # (...) or ()


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Dense LoRA weight update `scaling * B @ A`, batched over leading dimensions.

    Args:
        A (`torch.Tensor` of shape `(..., r, d_in)`): Down-projection.
        B (`torch.Tensor` of shape `(..., d_out, r)`): Up-projection.
        scaling (`float` or `torch.Tensor` of shape `(...)`, *optional*, defaults to 1.0): `lora_alpha / r`.

    Returns:
        `torch.Tensor` of shape `(..., d_out, d_in)`: The update added to the frozen weight.

    Example:

    ```python
    >>> import torch
    >>> from tagi_hf.training.losses import lora_delta
    >>> lora_delta(torch.ones(4, 2, 5), torch.ones(4, 3, 2), scaling=0.5).shape
    torch.Size([4, 3, 5])
    ```
    """
    if A.shape[-2] != B.shape[-1]:
        raise ValueError(f"`A` {tuple(A.shape)} and `B` {tuple(B.shape)} disagree on the rank (A[-2] vs B[-1]).")
    scale = _as_scaling(scaling, A)[..., None, None]  # (..., 1, 1)
    return scale * (B @ A)  # (..., d_out, d_in)


def _update_shape(factors: LoraFactors) -> tuple[int, ...]:
    A, B, scaling = factors
    if A.shape[-2] != B.shape[-1]:
        raise ValueError(f"`A` {tuple(A.shape)} and `B` {tuple(B.shape)} disagree on the rank (A[-2] vs B[-1]).")
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2], torch.as_tensor(scaling).shape)
    return (*batch, B.shape[-2], A.shape[-1])


def _trace_of_product(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    return (X * Y.transpose(-1, -2)).sum(dim=(-2, -1))  # tr(X @ Y) without forming X @ Y; shape (...)


def lora_delta_mse_lowrank(student: LoraFactors, teacher: LoraFactors) -> torch.Tensor:
    """Mean squared difference of two LoRA updates, `||dS - dT||_F^2 / numel`, without forming any `d_out x d_in`.

    With `dS = s Bs As` and `dT = t Bt At`,
    `||dS - dT||^2 = s^2 tr((BsᵀBs)(AsAsᵀ)) - 2 s t tr((BsᵀBt)(AtAsᵀ)) + t^2 tr((BtᵀBt)(AtAtᵀ))`, where every
    product is at most `r x r` (cost `O(r^2 (d_in + d_out))` instead of `O(r d_in d_out)`). Ranks may differ
    between student and teacher; leading (batch) dimensions broadcast. The three terms cancel when the updates
    nearly coincide, so in float32 the result carries an absolute error of about `1e-7 * ||dS||^2 / numel`
    (clamped at zero); pass float64 factors where tiny distances matter.

    Args:
        student (`LoraFactors`): `(A (..., r_s, d_in), B (..., d_out, r_s), scaling)`.
        teacher (`LoraFactors`): `(A (..., r_t, d_in), B (..., d_out, r_t), scaling)`.

    Returns:
        `torch.Tensor`: Scalar mean over every element of the (broadcast) update, computed in float32 or wider.

    Example:

    ```python
    >>> import torch
    >>> from tagi_hf.training.losses import LoraFactors, lora_delta, lora_delta_mse_lowrank
    >>> s = LoraFactors(torch.randn(2, 4, 6), torch.randn(2, 5, 4), 2.0)  # batched student, rank 4
    >>> t = LoraFactors(torch.randn(3, 6), torch.randn(5, 3))  # one shared teacher, rank 3
    >>> dense = (lora_delta(*s) - lora_delta(*t)).pow(2).mean()
    >>> torch.allclose(lora_delta_mse_lowrank(s, t), dense, rtol=1e-4)
    True
    ```
    """
    student, teacher = LoraFactors(*student), LoraFactors(*teacher)
    shape = torch.broadcast_shapes(_update_shape(student), _update_shape(teacher))
    (As, Bs, s), (At, Bt, t) = student, teacher
    dtype = torch.promote_types(torch.promote_types(As.dtype, At.dtype), torch.float32)  # at least fp32
    As, Bs, At, Bt = (x.to(dtype) for x in (As, Bs, At, Bt))
    s, t = _as_scaling(s, As), _as_scaling(t, As)  # (...) or ()
    ss = _trace_of_product(Bs.transpose(-1, -2) @ Bs, As @ As.transpose(-1, -2))  # (...); (r_s, r_s) products
    st = _trace_of_product(Bs.transpose(-1, -2) @ Bt, At @ As.transpose(-1, -2))  # (...); (r_s, r_t) @ (r_t, r_s)
    tt = _trace_of_product(Bt.transpose(-1, -2) @ Bt, At @ At.transpose(-1, -2))  # (...); (r_t, r_t) products
    sq_norm = s**2 * ss - 2 * s * t * st + t**2 * tt  # (...): ||dS - dT||_F^2 per row
    sq_norm = sq_norm.expand(shape[:-2]).sum()  # rows broadcast like the dense updates would
    return sq_norm.clamp(min=0) / shape.numel()  # clamp: cancellation can dip a hair below zero


def _update_shape_of(name: str, value: torch.Tensor | LoraFactors) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return _update_shape(LoraFactors(*value))
    if value.dim() < 2:
        raise ValueError(f"Module `{name}`: a dense update needs shape (..., d_out, d_in), got {tuple(value.shape)}.")
    return tuple(value.shape)


def _updates_broadcast(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> bool:
    if s_shape[-2:] != t_shape[-2:]:
        return False
    try:
        torch.broadcast_shapes(s_shape, t_shape)
    except RuntimeError:  # leading (batch) dimensions that do not broadcast
        return False
    return True


def _module_mse(name: str, student: torch.Tensor | LoraFactors, teacher: torch.Tensor | LoraFactors) -> torch.Tensor:
    s_shape, t_shape = _update_shape_of(name, student), _update_shape_of(name, teacher)
    if not _updates_broadcast(s_shape, t_shape):
        raise ValueError(f"Module `{name}`: student update {s_shape} and teacher update {t_shape} do not match.")
    if isinstance(student, tuple) and isinstance(teacher, tuple):
        return lora_delta_mse_lowrank(student, teacher)
    s_dense = _upcast(lora_delta(*student) if isinstance(student, tuple) else student)  # (..., d_out, d_in)
    t_dense = _upcast(lora_delta(*teacher) if isinstance(teacher, tuple) else teacher)  # (..., d_out, d_in)
    return F.mse_loss(*torch.broadcast_tensors(s_dense, t_dense))


def _detach(value: torch.Tensor | LoraFactors) -> torch.Tensor | LoraFactors:
    if isinstance(value, tuple):
        A, B, scaling = value
        scaling = scaling.detach() if isinstance(scaling, torch.Tensor) else scaling
        return LoraFactors(A.detach(), B.detach(), scaling)
    return value.detach()


def adapter_alignment_loss(
    student: Mapping[str, torch.Tensor | LoraFactors],
    teacher: Mapping[str, torch.Tensor | LoraFactors],
    relative: bool = False,
) -> torch.Tensor:
    """`L_ins`: mean squared error between generated and teacher LoRA weight updates, averaged over modules.

    LoRA factors are not unique (`B A = (B M)(M^-1 A)` for any invertible `M`), so the updates
    `(alpha / r) B A` are compared, never the factors. Each module's value is either a dense update of shape
    `(d_out, d_in)` / `(batch, d_out, d_in)` or a [`LoraFactors`] tuple `(A, B, scaling)`; when both sides give
    factors the MSE is computed in low rank ([`lora_delta_mse_lowrank`]), so ranks may differ and batched student
    factors `(batch, r, d_in)` can meet per-row teacher factors `(batch, r_t, d_in)` or one shared teacher
    `(r_t, d_in)`. The teacher is detached.

    Args:
        student (`Mapping[str, torch.Tensor | LoraFactors]`): Generated updates or factors, keyed by module name.
        teacher (`Mapping[str, torch.Tensor | LoraFactors]`): Teacher updates or factors, with the same keys.

        relative (`bool`, defaults to `False`):
            Divide by the teacher updates' mean square, averaged over modules like the MSE (a scale-free relative
            error: 0 when the updates coincide, 1 for a zero student update). One normaliser for all modules, not
            one per module: a module the teacher barely changed would otherwise blow its term up.

    Returns:
        `torch.Tensor`: Scalar mean over modules of each module's element-wise MSE.

    Example:

    ```python
    >>> import torch
    >>> from tagi_hf.training.losses import adapter_alignment_loss
    >>> A, B, M = torch.randn(2, 4, 6), torch.randn(2, 5, 4), torch.randn(4, 4) + 4 * torch.eye(4)
    >>> student = {"q": (A, B, 0.5)}
    >>> teacher = {"q": (torch.linalg.solve(M, A), B @ M, 0.5)}  # same update, other factors
    >>> adapter_alignment_loss(student, teacher).item() < 1e-4
    True
    ```
    """
    missing = sorted(set(student) ^ set(teacher))
    if missing:
        side = "teacher" if missing[0] in student else "student"
        raise ValueError(f"Module `{missing[0]}` is missing from the {side} updates (mismatched keys: {missing}).")
    if not student:
        raise ValueError("`student` and `teacher` hold no modules to align.")
    losses, scales, counts = [], [], []
    for names in _stackable_groups(student, teacher):
        if len(names) == 1:
            target = _detach(teacher[names[0]])
            source = student[names[0]]
        else:  # modules of one shape in one low-rank computation: its mean over modules is the mean of their MSEs
            source = _stack([student[n] for n in names])
            target = _detach(_stack([teacher[n] for n in names]))
        losses.append(_module_mse(names[0], source, target))
        if relative:
            scales.append(_module_mse(names[0], _zero_like(target), target))
        counts.append(len(names))
    weights = torch.tensor(counts, dtype=losses[0].dtype, device=losses[0].device) / sum(counts)
    loss = (torch.stack(losses) * weights).sum()
    return loss / (torch.stack(scales) * weights).sum().clamp(min=1e-12) if relative else loss


def _stackable_groups(student: Mapping, teacher: Mapping) -> list[list[str]]:
    """Module names (sorted) grouped so that each group can be computed as one batch: LoRA factors on both sides with
    the same shapes and the same float scalings. Anything else is a group of its own."""
    groups: dict[tuple, list[str]] = {}
    for name in sorted(student):
        s, t = student[name], teacher[name]
        stackable = (
            isinstance(s, tuple) and isinstance(t, tuple) and all(isinstance(x[2], float | int) for x in (s, t))
        )
        key = (
            ("factors", *(tuple(x.shape) for x in (*s[:2], *t[:2])), s[2], t[2], s[0].dtype, t[0].dtype)
            if stackable
            else ("alone", name)
        )
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _stack(factors: list[LoraFactors]) -> LoraFactors:
    """LoRA factors of several modules of one shape as one batch (a new leading dimension; same float scaling)."""
    return LoraFactors(torch.stack([f[0] for f in factors]), torch.stack([f[1] for f in factors]), factors[0][2])


def _zero_like(value: torch.Tensor | LoraFactors) -> torch.Tensor | LoraFactors:
    if isinstance(value, tuple):
        return LoraFactors(value[0], value[1], 0.0)
    return torch.zeros_like(value)
