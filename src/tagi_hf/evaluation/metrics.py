"""Generation metrics of the Super-NaturalInstructions (SNI) / Tk-Instruct protocol.

Three numbers per instance, each the maximum over the instance's references and reported x100:

- `rougeL`: ROUGE-L F-measure from `rouge_score` with the Porter stemmer (its default tokenizer lower-cases and
  keeps only ASCII letters and digits), exactly as Tk-Instruct's `compute_metrics.py` scores English tasks.
- `exact_match`: equality after Tk-Instruct's `normalize_answer` (lower-case, drop punctuation, collapse
  whitespace; unlike SQuAD it does *not* drop articles).
- `exact_match_strict`: equality of the stripped strings, with no other normalisation. ROUGE's tokenizer and
  the SNI normalisation both ignore case and separators (`"CAT DOG"` vs `"cat dog"`, `"cat-dog"` vs
  `"cat dog"`), which hides formatting errors; this one does not.

Overall numbers are means over instances (as in Tk-Instruct); `per_task` and `per_category` are means over the
instances of each group. With the SNI test split (100 instances per task) the instance mean and the mean of task
means nearly coincide, but they differ when tasks have fewer instances.

The same scoring ships as an `evaluate` module (`evaluation/sni_rouge/sni_rouge.py`) that loads offline from the
installed package with [`load_metric`].
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

METRIC_NAMES = ("rougeL", "exact_match", "exact_match_strict")
# Directory of the `evaluate` module; `evaluate.load` accepts a directory holding a script of the same name.
SNI_ROUGE_PATH = Path(__file__).parent / "sni_rouge"

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@lru_cache(maxsize=1)
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def normalize_answer(text: str, remove_articles: bool = False) -> str:
    """Normalise an answer as Tk-Instruct does before exact match.

    Lower-cases, removes ASCII punctuation and collapses whitespace. Tk-Instruct adapted SQuAD's function
    "without removing the articles"; pass `remove_articles=True` for the SQuAD variant.

    Args:
        text (`str`): The answer to normalise.
        remove_articles (`bool`, *optional*, defaults to `False`): Also drop the words "a", "an" and "the".

    Returns:
        `str`: The normalised answer.

    Example:

    ```python
    >>> from tagi_hf.evaluation.metrics import normalize_answer
    >>> normalize_answer("  The  Cat-Dog! ")
    'the catdog'
    >>> normalize_answer("The cat", remove_articles=True)
    'cat'
    ```
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    if remove_articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def score_instance(prediction: str, references: list[str]) -> dict[str, float]:
    """Score one prediction against its references: each metric is the maximum over references, x100.

    Args:
        prediction (`str`): The generated text.
        references (`list[str]`): The acceptable answers (at least one).

    Returns:
        `dict[str, float]`: `rougeL`, `exact_match` and `exact_match_strict`, each in [0, 100].

    Example:

    ```python
    >>> from tagi_hf.evaluation.metrics import score_instance
    >>> score_instance("CAT DOG", ["cat dog", "bird"])
    {'rougeL': 100.0, 'exact_match': 100.0, 'exact_match_strict': 0.0}
    ```
    """
    if len(references) == 0:
        raise ValueError("`references` must hold at least one reference per prediction.")
    scorer = _rouge_scorer()
    rouge = max(scorer.score(target=ref, prediction=prediction)["rougeL"].fmeasure for ref in references)
    norm_pred = normalize_answer(prediction)
    em = max(float(norm_pred == normalize_answer(ref)) for ref in references)
    strict = max(float(prediction.strip() == ref.strip()) for ref in references)
    return {"rougeL": 100.0 * rouge, "exact_match": 100.0 * em, "exact_match_strict": 100.0 * strict}


def _mean_scores(scores: list[dict[str, float]]) -> dict[str, float | int]:
    means: dict[str, float | int] = {name: sum(s[name] for s in scores) / len(scores) for name in METRIC_NAMES}
    means["n"] = len(scores)
    return means


def _grouped(scores: list[dict[str, float]], groups: list[str]) -> dict[str, dict[str, float | int]]:
    by_group: dict[str, list[dict[str, float]]] = defaultdict(list)
    for score, group in zip(scores, groups):
        by_group[group].append(score)
    return {group: _mean_scores(group_scores) for group, group_scores in sorted(by_group.items())}


def _check_lengths(n: int, **columns: list[Any] | None) -> None:
    for name, column in columns.items():
        if column is not None and len(column) != n:
            raise ValueError(f"`{name}` has {len(column)} entries but `predictions` has {n}.")


def compute_metrics(
    predictions: list[str],
    references: list[list[str]],
    tasks: list[str] | None = None,
    categories: list[str] | None = None,
) -> dict[str, Any]:
    """Compute the SNI / Tk-Instruct metrics, overall and per task / category.

    Overall values are means over instances; group values are means over the instances of each group.

    Args:
        predictions (`list[str]`): Generated texts, one per instance.
        references (`list[list[str]]`): Acceptable answers per instance (at least one each).
        tasks (`list[str]`, *optional*): Task name per instance; adds `per_task`.
        categories (`list[str]`, *optional*): Task category per instance; adds `per_category`.

    Returns:
        `dict`: `rougeL`, `exact_match`, `exact_match_strict` (floats in [0, 100]), `n` (number of instances) and,
        when the groups are given, `per_task` / `per_category` mapping each group to the same four keys.

    Example:

    ```python
    >>> from tagi_hf.evaluation.metrics import compute_metrics
    >>> out = compute_metrics(["yes", "cat dog"], [["Yes"], ["cat-dog"]], tasks=["t1", "t2"])
    >>> out["exact_match"], out["exact_match_strict"], out["per_task"]["t2"]["rougeL"]
    (50.0, 0.0, 100.0)
    ```
    """
    if len(predictions) == 0:
        raise ValueError("`predictions` is empty: there is nothing to score.")
    _check_lengths(len(predictions), references=references, tasks=tasks, categories=categories)
    scores = [score_instance(pred, list(refs)) for pred, refs in zip(predictions, references)]
    result: dict[str, Any] = _mean_scores(scores)
    if tasks is not None:
        result["per_task"] = _grouped(scores, list(tasks))
    if categories is not None:
        result["per_category"] = _grouped(scores, list(categories))
    return result


def load_metric(**kwargs: Any) -> Any:
    """Load the packaged `sni_rouge` metric as an `evaluate` module, by path (works offline).

    Args:
        kwargs: Passed to `evaluate.load` (e.g. `keep_in_memory=True`, `experiment_id=...`).

    Returns:
        `evaluate.EvaluationModule`: Its `compute(predictions=..., references=..., tasks=..., categories=...)`
        returns what [`compute_metrics`] returns; a reference may also be a single string.

    Example:

    ```python
    >>> from tagi_hf.evaluation.metrics import load_metric
    >>> metric = load_metric(keep_in_memory=True)
    >>> metric.compute(predictions=["the cat"], references=[["The cat."]])["exact_match"]
    100.0
    ```
    """
    import evaluate  # deferred: importing `evaluate` is slow and only this helper needs it

    return evaluate.load(str(SNI_ROUGE_PATH), **kwargs)
