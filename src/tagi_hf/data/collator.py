"""Batch raw SNI-style rows into the tensors TAGI's student, hypernetwork and teacher read."""

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .prompts import TEACHER_BRIDGE, format_instruction, format_student_input, format_teacher_input, parse_setting

__all__ = ["TagiDataCollator"]


@dataclass
class TagiDataCollator:
    """
    Collate rows of [`load_sni`] (columns `task`, `definition`, `positive_examples`, `input`, `outputs`) for TAGI.

    Returns a dict with, per row, padded to the longest in the batch (`batch` rows):
    - `instruction_input_ids`, `instruction_attention_mask` `(batch, instruction_len)`: the instruction
      ([`format_instruction`] with the positive examples `setting` asks for), read by the hypernetwork;
    - `input_ids`, `attention_mask` `(batch, input_len)`: the student's input, the instance alone
      ([`format_student_input`]), no instruction text;
    - `teacher_input_ids`, `teacher_attention_mask` `(batch, teacher_len)`: instruction and instance
      ([`format_teacher_input`]), only when `teacher_inputs=True`;
    - `labels` `(batch, target_len)`: the first reference output, padding set to `label_pad_token_id`;
    - `task_keys`: the task names (a list of strings), for per-task teacher or adapter lookup.
    - `task_categories`: the task categories (a list of strings), for per-category teachers.

    A teacher input that exceeds `max_teacher_length` loses the end of its instruction, never the instance.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of the backbone; it should append `</s>` as T5's does.
        setting (`str`, *optional*, defaults to `"def"`):
            `"def"` or `"def+Kpos"` (see [`parse_setting`]).
        max_instruction_length (`int`, *optional*, defaults to 1024):
            Tokens kept of an instruction.
        max_input_length (`int`, *optional*, defaults to 512):
            Tokens kept of a student input.
        max_target_length (`int`, *optional*, defaults to 128):
            Tokens kept of a target.
        teacher_inputs (`bool`, *optional*, defaults to `True`):
            Whether to build the teacher's inputs.
        label_pad_token_id (`int`, *optional*, defaults to -100):
            Label value of padding, ignored by the loss.
        max_teacher_length (`int`, *optional*):
            Tokens kept of a teacher input; defaults to `max_instruction_length + max_input_length`.

    Example:

    ```python
    >>> from tagi_hf.data import TagiDataCollator, train_tokenizer
    >>> row = {"task": "t", "definition": "Reverse the words.", "positive_examples": [], "input": "a b",
    ...        "outputs": ["b a"]}
    >>> collator = TagiDataCollator(train_tokenizer(["a b c"], vocab_size=200))
    >>> batch = collator([row, row])
    >>> batch["input_ids"].shape[0], batch["task_keys"]
    (2, ['t', 't'])
    ```
    """

    tokenizer: PreTrainedTokenizerBase
    _: KW_ONLY
    setting: str = "def"
    max_instruction_length: int = 1024
    max_input_length: int = 512
    max_target_length: int = 128
    teacher_inputs: bool = True
    label_pad_token_id: int = -100
    max_teacher_length: int | None = None
    num_pos: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_pos = parse_setting(self.setting)
        for name in ("max_instruction_length", "max_input_length", "max_target_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.max_teacher_length is None:
            self.max_teacher_length = self.max_instruction_length + self.max_input_length
        if self.max_teacher_length < self.max_input_length:
            raise ValueError(f"`max_teacher_length` must be >= `max_input_length`, got {self.max_teacher_length}.")

    def instruction(self, row: Mapping[str, Any]) -> str:
        """The formatted instruction of a row for this collator's setting."""
        return format_instruction(row["definition"], row.get("positive_examples") or [], self.num_pos)

    def _encode(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")

    def _teacher_ids(self, instruction: str, input: str) -> list[int]:
        """Token ids of a teacher input, cutting the instruction (not the instance) when it is too long."""
        ids = self.tokenizer(format_teacher_input(instruction, input))["input_ids"]
        if len(ids) <= self.max_teacher_length:
            return ids
        tail_text = TEACHER_BRIDGE + format_student_input(input)
        tail = self.tokenizer(tail_text, truncation=True, max_length=self.max_input_length)["input_ids"]
        head = self.tokenizer(instruction.rstrip() + "\n\n", add_special_tokens=False)["input_ids"]
        return head[: self.max_teacher_length - len(tail)] + tail

    def _teacher(self, instructions: list[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [self._teacher_ids(instruction, row["input"]) for instruction, row in zip(instructions, rows)]
        padded = self.tokenizer.pad({"input_ids": ids}, padding="longest", return_tensors="pt")
        return {"teacher_input_ids": padded["input_ids"], "teacher_attention_mask": padded["attention_mask"]}

    def _labels(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        targets = [row["outputs"][0] if row["outputs"] else "" for row in rows]
        encoded = self._encode(targets, self.max_target_length)
        return encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, self.label_pad_token_id)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("`rows` must hold at least one row.")
        instructions = [self.instruction(row) for row in rows]
        instruction = self._encode(instructions, self.max_instruction_length)  # (batch, instruction_len)
        student = self._encode([format_student_input(row["input"]) for row in rows], self.max_input_length)
        batch = {
            "instruction_input_ids": instruction["input_ids"],
            "instruction_attention_mask": instruction["attention_mask"],
            "input_ids": student["input_ids"],  # (batch, input_len)
            "attention_mask": student["attention_mask"],
        }
        if self.teacher_inputs:
            batch.update(self._teacher(instructions, rows))  # (batch, teacher_len)
        batch["labels"] = self._labels(rows)  # (batch, target_len)
        batch["task_keys"] = [row["task"] for row in rows]
        batch["task_categories"] = [row.get("category", "") for row in rows]  # for per-category teachers
        if "teacher_topk_ids" in rows[0]:  # the teacher's distributions, cached once (tagi_hf.teacher_logits)
            batch.update(self._sparse_teacher(rows, batch["labels"]))
        return batch

    def _sparse_teacher(self, rows: Sequence[Mapping[str, Any]], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """`teacher_topk_ids` / `teacher_topk_logits` `(batch, target_len, k)`, `teacher_log_normalizer`
        `(batch, target_len)` at the label positions (zeros elsewhere), and `teacher_temperature` `(batch,)`."""
        k = len(rows[0]["teacher_topk_ids"][0]) if rows[0]["teacher_topk_ids"] else 1
        ids = torch.zeros(*labels.shape, k, dtype=torch.long)
        logits = torch.zeros(*labels.shape, k)
        normalizer = torch.zeros(labels.shape)
        for i, row in enumerate(rows):
            positions = (labels[i] != self.label_pad_token_id).nonzero().flatten()
            if len(row["teacher_topk_ids"]) != len(positions):
                raise ValueError(
                    f"Row {i} (task {row.get('task')!r}) has cached teacher logits for {len(row['teacher_topk_ids'])} "
                    f"label tokens but {len(positions)} labels: the cache was made with other target settings."
                )
            if len(positions):
                ids[i, positions] = torch.tensor(row["teacher_topk_ids"], dtype=torch.long)
                logits[i, positions] = torch.tensor(row["teacher_topk_logits"], dtype=torch.float32)
                normalizer[i, positions] = torch.tensor(row["teacher_log_normalizer"], dtype=torch.float32)
        temperature = torch.tensor([float(row["teacher_temperature"]) for row in rows])
        return {
            "teacher_topk_ids": ids,
            "teacher_topk_logits": logits,
            "teacher_log_normalizer": normalizer,
            "teacher_temperature": temperature,
        }
