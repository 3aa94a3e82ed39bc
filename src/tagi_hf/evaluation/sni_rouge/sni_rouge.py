"""`evaluate` module for the Super-NaturalInstructions / Tk-Instruct generation metrics.

Shipped inside `tagi_hf` so that it loads by path with no network access:
`evaluate.load(".../tagi_hf/evaluation/sni_rouge")`, or `tagi_hf.evaluation.load_metric()`. The scoring itself lives
in `tagi_hf.evaluation.metrics.compute_metrics`; this file only adapts it to the `evaluate.Metric` interface.
"""

import datasets
import evaluate

from tagi_hf.evaluation.metrics import compute_metrics

_CITATION = """\
@inproceedings{wang2022super,
  title={Super-NaturalInstructions: Generalization via Declarative Instructions on 1600+ NLP Tasks},
  author={Wang, Yizhong and Mishra, Swaroop and Alipoormolabashi, Pegah and others},
  booktitle={EMNLP},
  year={2022}
}
"""

_DESCRIPTION = """\
ROUGE-L F-measure (rouge_score, Porter stemmer), exact match after Tk-Instruct's answer normalisation
(lower-case, no punctuation, collapsed whitespace) and strict exact match (stripped strings only), each the
maximum over references and x100. Overall values are means over instances; optional per-task and per-category
means over the instances of each group.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): Generated texts.
    references (`list[list[str]]` or `list[str]`): Acceptable answers per prediction.
    tasks (`list[str]`, *optional*): Task name per prediction; adds `per_task`.
    categories (`list[str]`, *optional*): Category per prediction; adds `per_category`.
Returns:
    `rougeL`, `exact_match`, `exact_match_strict`, `n`, and optionally `per_task` / `per_category`.
Examples:
    >>> metric = evaluate.load("path/to/sni_rouge")
    >>> metric.compute(predictions=["CAT DOG"], references=[["cat dog"]])["exact_match_strict"]
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SniRouge(evaluate.Metric):
    """SNI / Tk-Instruct ROUGE-L and exact-match metrics."""

    def _info(self) -> evaluate.MetricInfo:
        string = datasets.Value("string")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": string, "references": datasets.Sequence(string)}),
                datasets.Features({"predictions": string, "references": string}),
            ],
            codebase_urls=["https://github.com/yizhongw/Tk-Instruct/blob/main/src/compute_metrics.py"],
            reference_urls=["https://arxiv.org/abs/2204.07705"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[list[str]] | list[str],
        tasks: list[str] | None = None,
        categories: list[str] | None = None,
    ) -> dict:
        references = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
        return compute_metrics(predictions, references, tasks=tasks, categories=categories)
