"""Tests for tagi_hf.training.losses: analytic cases, masking, temperature, low-rank alignment and gradient flow."""

import math

import pytest
import torch
import torch.nn.functional as F

from tagi_hf.training.losses import (
    LoraFactors,
    adapter_alignment_loss,
    distillation_kl_loss,
    lora_delta,
    lora_delta_mse_lowrank,
    masked_token_mean,
    prediction_loss,
)

LABELS = torch.tensor([[1, 2, 3, -100], [4, -100, -100, -100]])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _dense_mse(student, teacher):
    return (lora_delta(*student) - lora_delta(*teacher)).pow(2).mean()


def _invertible(r, dtype=torch.float64):
    return torch.randn(r, r, dtype=dtype) + 3 * torch.eye(r, dtype=dtype)


# --- prediction loss ---------------------------------------------------------------------------------------------


def test_prediction_loss_matches_cross_entropy_and_uniform_case():
    logits = torch.randn(2, 4, 10)
    expected = F.cross_entropy(logits.reshape(-1, 10), LABELS.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(prediction_loss(logits, LABELS), expected)
    torch.testing.assert_close(prediction_loss(torch.zeros(2, 4, 10), LABELS), torch.tensor(math.log(10)))


def test_prediction_loss_ignores_padding_and_empty_batches():
    logits = torch.randn(2, 4, 10)
    changed = logits.clone()
    changed[LABELS == -100] = 50 * torch.randn(4, 10)
    torch.testing.assert_close(prediction_loss(changed, LABELS), prediction_loss(logits, LABELS))
    assert prediction_loss(logits, torch.full((2, 4), -100)).item() == 0.0
    with pytest.raises(ValueError, match="`logits`"):
        prediction_loss(torch.zeros(2, 3, 10), LABELS)


def test_masked_token_mean_counts_label_tokens_only():
    per_token = torch.tensor([[1.0, 2.0, 3.0, float("inf")], [10.0, float("inf"), 0.0, 0.0]])
    assert masked_token_mean(per_token, LABELS).item() == pytest.approx(16.0 / 4)


# --- distillation KL -----------------------------------------------------------------------------------------------


def test_kl_identical_logits_is_zero():
    logits = torch.randn(2, 4, 10)
    assert distillation_kl_loss(logits, logits.clone(), LABELS, temperature=2.0).abs().item() < 1e-6


def test_kl_at_temperature_equals_hand_computed_value():
    student, teacher, temperature = [1.0, 2.0, 3.0], [3.0, 1.0, 0.0], 2.0

    def softmax(xs):
        exps = [math.exp(x / temperature) for x in xs]
        return [e / sum(exps) for e in exps]

    p, q = softmax(teacher), softmax(student)
    expected = temperature**2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    loss = distillation_kl_loss(torch.tensor([[student]]), torch.tensor([[teacher]]), torch.tensor([[0]]), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0


def test_kl_is_teacher_to_student_direction():
    student, teacher = torch.randn(1, 1, 6), torch.randn(1, 1, 6)
    labels = torch.zeros(1, 1, dtype=torch.long)
    expected = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="sum")
    torch.testing.assert_close(distillation_kl_loss(student, teacher, labels), expected)


def test_kl_averages_over_label_tokens_only():
    student, teacher = torch.randn(2, 4, 10), torch.randn(2, 4, 10)
    per_position = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="none")
    expected = per_position.sum(-1)[LABELS != -100].mean()
    torch.testing.assert_close(distillation_kl_loss(student, teacher, LABELS), expected)
    changed_s, changed_t = student.clone(), teacher.clone()
    changed_s[LABELS == -100], changed_t[LABELS == -100] = 30 * torch.randn(4, 10), 30 * torch.randn(4, 10)
    torch.testing.assert_close(distillation_kl_loss(changed_s, changed_t, LABELS), expected)


def test_kl_gradient_reaches_student_only():
    student = torch.randn(2, 4, 10, requires_grad=True)
    teacher = torch.randn(2, 4, 10, requires_grad=True)
    distillation_kl_loss(student, teacher, LABELS, temperature=1.5).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert student.grad[LABELS == -100].abs().sum() == 0


def test_kl_validates_shapes_and_temperature():
    with pytest.raises(ValueError, match=r"\(2, 4, 10\).*\(2, 4, 12\)"):
        distillation_kl_loss(torch.zeros(2, 4, 10), torch.zeros(2, 4, 12), LABELS)
    with pytest.raises(ValueError, match="`temperature`"):
        distillation_kl_loss(torch.zeros(2, 4, 10), torch.zeros(2, 4, 10), LABELS, temperature=0.0)


# --- LoRA updates and alignment ------------------------------------------------------------------------------------


def test_lora_delta_batched_matches_per_row():
    A, B, scaling = torch.randn(3, 4, 6), torch.randn(3, 5, 4), torch.tensor([0.5, 1.0, 2.0])
    delta = lora_delta(A, B, scaling)
    assert delta.shape == (3, 5, 6)
    for i in range(3):
        torch.testing.assert_close(delta[i], scaling[i] * B[i] @ A[i])
    with pytest.raises(ValueError, match="rank"):
        lora_delta(torch.randn(4, 6), torch.randn(5, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("student_shapes", "teacher_shapes", "scalings"),
    [
        (((8, 16), (12, 8)), ((8, 16), (12, 8)), (2.0, 2.0)),  # unbatched, same rank
        (((3, 8, 16), (3, 12, 8)), ((3, 4, 16), (3, 12, 4)), (0.5, 2.0)),  # per-row teachers, other rank
        (((3, 8, 16), (3, 12, 8)), ((4, 16), (12, 4)), (1.0, 0.25)),  # one teacher shared by the batch
        (((3, 8, 16), (3, 12, 8)), ((3, 2, 16), (3, 12, 2)), ("row", "row")),  # per-row scaling tensors
    ],
)
def test_lowrank_mse_equals_dense(dtype, student_shapes, teacher_shapes, scalings):
    scalings = [torch.rand(3, dtype=dtype) + 0.5 if s == "row" else s for s in scalings]
    student = LoraFactors(*(torch.randn(shape, dtype=dtype) for shape in student_shapes), scalings[0])
    teacher = LoraFactors(*(torch.randn(shape, dtype=dtype) for shape in teacher_shapes), scalings[1])
    lowrank, dense = lora_delta_mse_lowrank(student, teacher), _dense_mse(student, teacher)
    assert lowrank.dtype == dtype
    assert abs(lowrank.item() - dense.item()) <= 1e-5 * max(1.0, dense.item())


@pytest.mark.parametrize("batched", [False, True])
def test_alignment_zero_for_same_update_with_other_factors(batched):
    lead = (3,) if batched else ()
    A, B, M = (
        torch.randn(*lead, 8, 16, dtype=torch.float64),
        torch.randn(*lead, 12, 8, dtype=torch.float64),
        _invertible(8),
    )
    teacher = {"q": (A, B, 0.5), "v": (A, B, 0.5)}
    student = {"q": (torch.linalg.solve(M, A), B @ M, 0.5), "v": (2 * A, B, 0.25)}  # (M^-1 A, B M); scaling moved
    assert _dense_mse(student["q"], teacher["q"]).item() < 1e-20
    assert adapter_alignment_loss(student, teacher).item() < 1e-10


def test_alignment_is_mean_over_modules_of_update_mse():
    s_q, t_q = (torch.randn(2, 4, 6), torch.randn(2, 5, 4), 2.0), (torch.randn(2, 3, 6), torch.randn(2, 5, 3), 1.0)
    s_v, t_v = (torch.randn(2, 4, 7), torch.randn(2, 9, 4), 2.0), torch.randn(9, 7)  # dense teacher, broadcast
    loss = adapter_alignment_loss({"q": s_q, "v": s_v}, {"q": t_q, "v": t_v})
    expected_v = (lora_delta(*s_v) - t_v).pow(2).mean()
    torch.testing.assert_close(loss, (_dense_mse(s_q, t_q) + expected_v) / 2, rtol=1e-5, atol=1e-6)
    dense_loss = adapter_alignment_loss({"q": lora_delta(*s_q)}, {"q": lora_delta(*t_q)})
    torch.testing.assert_close(dense_loss, adapter_alignment_loss({"q": s_q}, {"q": t_q}), rtol=1e-5, atol=1e-6)


def test_alignment_per_row_teachers_average_rows():
    student = (torch.randn(2, 4, 6), torch.randn(2, 5, 4), 1.0)
    teachers = [(torch.randn(3, 6), torch.randn(5, 3), 1.0), (torch.randn(3, 6), torch.randn(5, 3), 1.0)]
    stacked = (torch.stack([t[0] for t in teachers]), torch.stack([t[1] for t in teachers]), 1.0)
    rows = [adapter_alignment_loss({"m": (student[0][i], student[1][i], 1.0)}, {"m": teachers[i]}) for i in range(2)]
    torch.testing.assert_close(adapter_alignment_loss({"m": student}, {"m": stacked}), sum(rows) / 2)


def test_alignment_gradient_reaches_student_only():
    sA, sB = torch.randn(2, 4, 6, requires_grad=True), torch.randn(2, 5, 4, requires_grad=True)
    tA, tB = torch.randn(2, 3, 6, requires_grad=True), torch.randn(2, 5, 3, requires_grad=True)
    adapter_alignment_loss({"m": (sA, sB, 2.0)}, {"m": (tA, tB, 1.0)}).backward()
    assert tA.grad is None and tB.grad is None
    assert sA.grad.abs().sum() > 0 and sB.grad.abs().sum() > 0
    # the gradient of the low-rank form equals the gradient of the dense form
    dA, dB = sA.detach().clone().requires_grad_(), sB.detach().clone().requires_grad_()
    _dense_mse((dA, dB, 2.0), (tA.detach(), tB.detach(), 1.0)).backward()
    torch.testing.assert_close(sA.grad, dA.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sB.grad, dB.grad, rtol=1e-4, atol=1e-6)


def test_alignment_errors_name_module_and_shapes():
    factors = (torch.randn(4, 6), torch.randn(5, 4), 1.0)
    with pytest.raises(ValueError, match="`enc.v`.*teacher"):
        adapter_alignment_loss({"enc.q": factors, "enc.v": factors}, {"enc.q": factors})
    with pytest.raises(ValueError, match="`dec.q`.*student"):
        adapter_alignment_loss({"enc.q": factors}, {"enc.q": factors, "dec.q": factors})
    wrong = (torch.randn(4, 7), torch.randn(5, 4), 1.0)
    with pytest.raises(ValueError, match=r"`enc.q`.*\(5, 6\).*\(5, 7\)"):
        adapter_alignment_loss({"enc.q": factors}, {"enc.q": wrong})
    batched = (torch.randn(3, 4, 6), torch.randn(3, 5, 4), 1.0)
    with pytest.raises(ValueError, match=r"`enc.q`.*\(3, 5, 6\).*\(2, 5, 6\)"):
        adapter_alignment_loss({"enc.q": batched}, {"enc.q": torch.randn(2, 5, 6)})
    with pytest.raises(ValueError, match="no modules"):
        adapter_alignment_loss({}, {})


def test_relative_alignment_is_scale_free_and_one_for_a_zero_student():
    teacher = {"q": torch.randn(5, 6), "v": torch.randn(9, 7)}
    student = {"q": torch.randn(5, 6), "v": torch.randn(9, 7)}
    zero = {k: torch.zeros_like(v) for k, v in teacher.items()}
    torch.testing.assert_close(adapter_alignment_loss(zero, teacher, relative=True), torch.tensor(1.0))
    assert adapter_alignment_loss(teacher, teacher, relative=True).item() == 0.0
    scaled = adapter_alignment_loss({k: 10 * v for k, v in student.items()}, {k: 10 * v for k, v in teacher.items()},
                                    relative=True)  # fmt: skip
    torch.testing.assert_close(scaled, adapter_alignment_loss(student, teacher, relative=True))
    # One normaliser (the teachers' mean square over modules), not one per module.
    expected = adapter_alignment_loss(student, teacher) / adapter_alignment_loss(zero, teacher)
    torch.testing.assert_close(adapter_alignment_loss(student, teacher, relative=True), expected)


def test_relative_alignment_stays_bounded_when_a_teacher_module_barely_moved():
    """A teacher update of ~1e-8 in one module must not blow the loss up (it would, normalised per module)."""
    teacher = {"q": torch.randn(5, 6), "v": 1e-8 * torch.randn(9, 7)}
    student = {"q": teacher["q"].clone(), "v": 0.1 * torch.randn(9, 7)}
    loss = adapter_alignment_loss(student, teacher, relative=True)
    assert 0 < loss.item() < 0.1


@pytest.mark.parametrize("relative", [False, True])
def test_alignment_of_same_shaped_modules_in_one_batch_equals_the_per_module_mean(relative):
    from tagi_hf.training.losses import LoraFactors, _module_mse, adapter_alignment_loss

    gen = torch.Generator().manual_seed(3)
    shapes = {"a.q": (6, 5), "a.v": (6, 5), "b.q": (6, 5), "b.o": (5, 7)}  # (d_out, d_in): one group of three
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    student = {n: LoraFactors(rand(3, 2, d_in), rand(3, d_out, 2), 0.5) for n, (d_out, d_in) in shapes.items()}
    teacher = {n: LoraFactors(rand(3, 4, d_in), rand(3, d_out, 4), 2.0) for n, (d_out, d_in) in shapes.items()}
    teacher["b.q"] = rand(3, 6, 5)  # a dense update: computed on its own
    losses = torch.stack([_module_mse(n, student[n], teacher[n]) for n in sorted(shapes)])
    expected = losses.mean()
    if relative:
        zero = {
            n: (LoraFactors(t[0], t[1], 0.0) if isinstance(t, tuple) else torch.zeros_like(t))
            for n, t in teacher.items()
        }
        expected = expected / torch.stack([_module_mse(n, zero[n], teacher[n]) for n in sorted(shapes)]).mean()
    torch.testing.assert_close(
        adapter_alignment_loss(student, teacher, relative=relative), expected, rtol=1e-12, atol=0
    )
