"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures with the rouge-score package, against one or several references.

Texts are lower-cased and split on non-alphanumeric characters by
rouge-score's default tokenizer, with Porter stemming. With several
references an example gets, for each ROUGE type, the best F-measure over its
references (rouge-score's ``score_multi``). Split scores are means over
examples, in [0, 1].
"""

from __future__ import annotations

import numpy as np
from rouge_score import rouge_scorer

from hashee_cli.errors import HasheeError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_per_example(predictions: list[str], references: list[list[str]]) -> dict[str, np.ndarray]:
    """Return, for each ROUGE type, the F-measure of every prediction against its references, shape (N,)."""
    if len(predictions) != len(references):
        raise HasheeError(f"{len(predictions)} predictions but {len(references)} reference lists; they must match")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = {name: np.zeros(len(predictions)) for name in ROUGE_TYPES}
    for index, (prediction, targets) in enumerate(zip(predictions, references)):
        if not targets:
            raise HasheeError(f"example {index} has no reference summary")
        result = scorer.score_multi(targets, prediction)
        for name in ROUGE_TYPES:
            scores[name][index] = result[name].fmeasure
    return scores


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Return the mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over the examples."""
    per_example = rouge_per_example(predictions, references)
    return {name: float(values.mean()) if len(values) else float("nan") for name, values in per_example.items()}
