"""Rank classification, the P3 / T0 held-out evaluation protocol.

Each example offers a fixed set of answer options. The model scores every option by its average per-token negative
log-likelihood given the instruction and input; the option with the lowest score is the prediction. Accuracy is
computed per prompt (template), averaged over the prompts of each dataset, then averaged over datasets (x100).

The model-specific part is injected: [`rank_classification`] takes a `score_fn(instructions, inputs, options)`
returning one average NLL per row, which a caller builds from any model with [`option_nll`].

JSONL format ([`load_rank_classification_jsonl`]), one object per line:

```json
{"instruction": "Is the review positive?", "input": "Great film.", "options": ["yes", "no"], "answer": "yes",
 "dataset": "imdb", "prompt": "is_positive"}
```

`answer` is either the correct option string (it must be one of `options`) or its 0-based index into `options`.
`dataset` and `prompt` are optional and default to `"default"`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers.utils import logging

from ..data import IGNORE_INDEX

logger = logging.get_logger(__name__)

REQUIRED_KEYS = ("instruction", "input", "options", "answer")
ScoreFn = Callable[[list[str], list[str], list[str]], torch.Tensor]


@dataclass(frozen=True)
class RankClassificationExample:
    """One multiple-choice example.

    Args:
        instruction (`str`): The task instruction (read by the hypernetwork, or prepended by a baseline).
        input (`str`): The instance input.
        options (`tuple[str, ...]`): The answer options, at least two.
        answer_index (`int`): Index of the correct option in `options`.
        dataset (`str`, *optional*, defaults to `"default"`): Dataset name, for per-dataset averaging.
        prompt (`str`, *optional*, defaults to `"default"`): Prompt (template) name, for per-prompt accuracy.

    Example:

    ```python
    >>> from tagi_hf.evaluation.rank_classification import RankClassificationExample
    >>> record = {"instruction": "i", "input": "x", "options": ["a", "b"], "answer": "b"}
    >>> ex = RankClassificationExample.from_dict(record)
    >>> ex.answer_index, ex.dataset
    (1, 'default')
    ```
    """

    instruction: str
    input: str
    options: tuple[str, ...]
    answer_index: int
    dataset: str = "default"
    prompt: str = "default"

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str = "record") -> RankClassificationExample:
        """Validate a JSON object and build an example; errors start with `where` (e.g. `"line 3"`)."""
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
        for key in REQUIRED_KEYS:
            if key not in record:
                raise ValueError(f"{where}: missing key `{key}` (required: {', '.join(REQUIRED_KEYS)}).")
        options = record["options"]
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise ValueError(f"{where}: `options` must be a list of at least two strings, got {options!r}.")
        return cls(
            instruction=str(record["instruction"]),
            input=str(record["input"]),
            options=tuple(options),
            answer_index=_answer_index(record["answer"], options, where),
            dataset=str(record.get("dataset", "default")),
            prompt=str(record.get("prompt", "default")),
        )


def _answer_index(answer: Any, options: list[str], where: str) -> int:
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise ValueError(f"{where}: `answer` must be an option string or an integer index, got {answer!r}.")
    if isinstance(answer, int):
        if not 0 <= answer < len(options):
            raise ValueError(f"{where}: `answer` index {answer} is out of range for {len(options)} options.")
        return answer
    if answer not in options:
        raise ValueError(f"{where}: `answer` {answer!r} is not one of `options` {options!r}.")
    return options.index(answer)


def load_rank_classification_jsonl(path: str | Path) -> list[RankClassificationExample]:
    """Read and validate a rank-classification JSONL file (format in the module docstring). Blank lines are skipped.

    Args:
        path (`str` or `Path`): The JSONL file.

    Returns:
        `list[RankClassificationExample]`: The examples, in file order.

    Raises:
        `ValueError`: On invalid JSON or a bad record, naming the (1-based) line number and the key.

    Example:

    ```python
    >>> import json, tempfile
    >>> from tagi_hf.evaluation.rank_classification import load_rank_classification_jsonl
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write(json.dumps({"instruction": "i", "input": "x", "options": ["a", "b"], "answer": 0}) + "\\n")
    >>> load_rank_classification_jsonl(f.name)[0].options
    ('a', 'b')
    ```
    """
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {line_number}: invalid JSON ({error.msg}).") from error
            examples.append(RankClassificationExample.from_dict(record, where=f"{path}: line {line_number}"))
    return examples


def option_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average per-token negative log-likelihood of each row's label tokens, ignoring positions labelled -100.

    Args:
        logits (`torch.Tensor` of shape `(batch, tgt_len, vocab)`): Decoder logits (upcast to float32 here).
        labels (`torch.Tensor` of shape `(batch, tgt_len)`): Target ids, -100 where padded.

    Returns:
        `torch.Tensor` of shape `(batch,)`: Mean NLL per row.

    Example:

    ```python
    >>> import math, torch
    >>> from tagi_hf.evaluation.rank_classification import option_nll
    >>> nll = option_nll(torch.zeros(2, 3, 8), torch.tensor([[1, 2, -100], [3, -100, -100]]))
    >>> torch.allclose(nll, torch.full((2,), math.log(8)))
    True
    ```
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"`logits` {tuple(logits.shape)} and `labels` {tuple(labels.shape)} disagree on (batch, tgt_len)."
        )
    mask = labels != IGNORE_INDEX  # (batch, tgt_len)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("`labels` has a row with no target tokens (all -100): an empty option cannot be scored.")
    token_nll = F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (batch, tgt_len), 0 where ignored
    return token_nll.sum(dim=1) / mask.sum(dim=1)  # (batch,)


def _score_all(score_fn: ScoreFn, examples: Sequence[RankClassificationExample], batch_size: int) -> list[float]:
    rows = [(ex.instruction, ex.input, option) for ex in examples for option in ex.options]
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        instructions, inputs, options = (list(column) for column in zip(*rows[start : start + batch_size]))
        batch_scores = score_fn(instructions, inputs, options)  # (batch,)
        if tuple(batch_scores.shape) != (len(options),):
            raise ValueError(f"`score_fn` returned shape {tuple(batch_scores.shape)}, expected ({len(options)},).")
        scores.extend(batch_scores.detach().float().cpu().tolist())
    return scores


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _accuracy_per_prompt(
    examples: Sequence[RankClassificationExample], predictions: list[int]
) -> dict[str, dict[str, float]]:
    hits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for ex, prediction in zip(examples, predictions):
        hits[ex.dataset][ex.prompt].append(float(prediction == ex.answer_index))
    return {ds: {p: 100.0 * _mean(h) for p, h in sorted(prompts.items())} for ds, prompts in sorted(hits.items())}


def rank_classification(
    score_fn: ScoreFn, examples: Sequence[RankClassificationExample], batch_size: int = 32
) -> dict[str, Any]:
    """Evaluate by rank classification: predict the option with the lowest average NLL.

    Every (example, option) pair becomes one row; rows are scored `batch_size` at a time. Ties go to the first
    option. Accuracy is averaged per prompt, then over the prompts of each dataset, then over datasets.

    Args:
        score_fn (`Callable[[list[str], list[str], list[str]], torch.Tensor]`): Given instructions, inputs and
            options (one row each), returns a tensor of shape `(batch,)` holding each option's average per-token
            NLL (e.g. from [`option_nll`]).
        examples (`Sequence[RankClassificationExample]`): The examples to score.
        batch_size (`int`, *optional*, defaults to 32): Rows per `score_fn` call.

    Returns:
        `dict`: `accuracy` (mean over datasets, x100), `per_dataset` {dataset: accuracy}, `per_prompt`
        {dataset: {prompt: accuracy}}, `n` (number of examples), `predictions` (chosen option index per example).

    Example:

    ```python
    >>> import torch
    >>> from tagi_hf.evaluation.rank_classification import RankClassificationExample, rank_classification
    >>> ex = RankClassificationExample("i", "x", ("yes", "no"), answer_index=1)
    >>> score_fn = lambda instructions, inputs, options: torch.tensor([float(len(o)) for o in options])
    >>> rank_classification(score_fn, [ex])["accuracy"]  # "no" is shorter, so it has the lower score
    100.0
    ```
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if len(examples) == 0:
        raise ValueError("`examples` is empty: there is nothing to evaluate.")
    scores = iter(_score_all(score_fn, examples, batch_size))
    option_scores = [[next(scores) for _ in ex.options] for ex in examples]
    predictions = [row.index(min(row)) for row in option_scores]  # list.index: ties go to the first option
    per_prompt = _accuracy_per_prompt(examples, predictions)
    per_dataset = {ds: _mean(list(prompts.values())) for ds, prompts in per_prompt.items()}
    logger.info("Rank classification on %d examples from %d datasets.", len(examples), len(per_dataset))
    return {
        "accuracy": _mean(list(per_dataset.values())),
        "per_dataset": per_dataset,
        "per_prompt": per_prompt,
        "n": len(examples),
        "predictions": predictions,
    }
