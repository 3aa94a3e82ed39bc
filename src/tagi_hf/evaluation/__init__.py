"""Evaluation: Super-NaturalInstructions metrics, `tagi-hf evaluate`'s runner, rank classification, fit checks."""

from .metrics import compute_metrics, load_metric
from .runner import evaluate_model, load_for_evaluation, predict, prompt_ids

__all__ = ["compute_metrics", "evaluate_model", "load_for_evaluation", "load_metric", "predict", "prompt_ids"]
