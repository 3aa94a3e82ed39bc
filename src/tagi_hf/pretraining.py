"""Stage 1 — hypernetwork pretraining (paper, Sec. 3.2.3, following HINT).

Each text is split at two random points into consecutive segments `a | b | c`: the generator reads `a` (as if it
were an instruction), the backbone reads `b`, and the target is `c`: `L = -log P(c | b; Hyper(a))`. The model is
the same [`TagiModel`]; stage 2 starts from the checkpoint this stage saves.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class PretrainingCollator:
    r"""
    Turns raw texts (rows with a `text` column) into `a | b | c` training examples.

    Args:
        tokenizer: the backbone's tokenizer.
        max_length (`int`, defaults to 512): texts are cut to this many tokens before splitting (paper: 1024).
        min_segment_length (`int`, defaults to 4): each of a, b, c gets at least this many tokens; shorter texts are
            skipped (a batch with no usable text raises `ValueError`).
        max_instruction_length / max_input_length / max_target_length: caps applied to a, b, c after splitting.
        seed (`int`): seeds the split points (deterministic for a given order of batches).

    Example:

    ```python
    >>> collator = PretrainingCollator(tokenizer, min_segment_length=2)  # doctest: +SKIP
    >>> batch = collator([{"text": "apple bird boat book cake car cat cloud"}])  # doctest: +SKIP
    >>> sorted(batch)  # doctest: +SKIP
    ['attention_mask', 'input_ids', 'instruction_attention_mask', 'instruction_input_ids', 'labels']
    ```
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 512
    min_segment_length: int = 4
    max_instruction_length: int = 1024
    max_input_length: int = 512
    max_target_length: int = 128
    seed: int = 0
    text_column: str = "text"
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if self.min_segment_length < 1:
            raise ValueError(f"`min_segment_length` must be >= 1, got {self.min_segment_length}.")
        self._rng = random.Random(self.seed)

    def split(self, ids: list[int]) -> tuple[list[int], list[int], list[int]] | None:
        """Two random cut points, each segment at least `min_segment_length` long; `None` if the text is too short."""
        m = self.min_segment_length
        if len(ids) < 3 * m:
            return None
        first = self._rng.randint(m, len(ids) - 2 * m)  # end of a
        second = self._rng.randint(first + m, len(ids) - m)  # end of b
        return ids[:first], ids[first:second], ids[second:]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [row[self.text_column] for row in rows]
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)
        splits = [s for s in (self.split(ids) for ids in encoded["input_ids"]) if s is not None]
        if not splits:
            raise ValueError(f"No text in the batch has the {3 * self.min_segment_length} tokens a split needs.")
        eos = [self.tokenizer.eos_token_id]
        a = self._pad([x[: self.max_instruction_length - 1] + eos for x, _, _ in splits])
        b = self._pad([x[: self.max_input_length - 1] + eos for _, x, _ in splits])
        c = self._pad([x[: self.max_target_length - 1] + eos for _, _, x in splits])
        return {
            "instruction_input_ids": a["input_ids"],  # (batch, len_a)
            "instruction_attention_mask": a["attention_mask"],
            "input_ids": b["input_ids"],  # (batch, len_b)
            "attention_mask": b["attention_mask"],
            "labels": c["input_ids"].masked_fill(c["attention_mask"] == 0, -100),  # (batch, len_c)
        }

    def _pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad({"input_ids": sequences}, padding="longest", return_tensors="pt")
