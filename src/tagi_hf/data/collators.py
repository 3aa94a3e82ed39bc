"""Every collator: raw rows or texts in, the tensors a TAGI model, its teachers or a plain T5 read out.

- [`TagiDataCollator`]: SNI-style rows -> instruction (for the generator), student input, teacher input, labels.
- [`Seq2SeqCollator`]: a `TagiDataCollator` batch cut to what a plain T5 reads (student's or teacher's source).
- [`PretrainingCollator`]: stage 1 (paper, Sec. 3.2.3, following HINT): each text split at two random points into
  `a | b | c`; the generator reads `a` (as if it were an instruction), the backbone `b`, and the target is `c`:
  `L = -log P(c | b; Hyper(a))`.
- [`PrefixLMCollator`]: a prefix-LM split (T5-LM-adapt's objective) for the stand-in backbone's pretraining.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..modeling.configuration_tagi import TagiConfig
from ..modeling.instructions import tokenize_instructions
from .prompts import TEACHER_BRIDGE, format_instruction, format_student_input, format_teacher_input, parse_setting

__all__ = [
    "IGNORE_INDEX",
    "in_context_ids",
    "PrefixLMCollator",
    "PretrainingCollator",
    "Seq2SeqCollator",
    "TagiCausalDataCollator",
    "TagiDataCollator",
    "collator_for",
]

IGNORE_INDEX = -100  # label padding: every loss and score in the package skips it


def in_context_ids(tokenizer, instruction: str, input: str, *, max_length: int, max_input_length: int) -> list[int]:
    """Token ids of an instance with its instruction in context ([`format_teacher_input`]): the one truncation rule
    for in-context inputs (training the baseline, the L_kl teacher, evaluating in context). When the whole is longer
    than `max_length`, the instruction is cut, never the instance (itself capped at `max_input_length` tokens)."""
    ids = tokenizer(format_teacher_input(instruction, input))["input_ids"]
    if len(ids) <= max_length:
        return ids
    tail_text = TEACHER_BRIDGE + format_student_input(input)
    tail = tokenizer(tail_text, truncation=True, max_length=max_input_length)["input_ids"]
    head = tokenizer(instruction.rstrip() + "\n\n", add_special_tokens=False)["input_ids"]
    return head[: max_length - len(tail)] + tail


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
    label_pad_token_id: int = IGNORE_INDEX
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

    def _teacher(self, instructions: list[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = dict(max_length=self.max_teacher_length, max_input_length=self.max_input_length)
        ids = [
            in_context_ids(self.tokenizer, instruction, row["input"], **lengths)
            for instruction, row in zip(instructions, rows)
        ]
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
        # (batch, instruction_len), cut by the model's own policy (`truncate_instruction_ids`)
        instruction_ids, instruction_mask = tokenize_instructions(
            self.tokenizer, instructions, self.max_instruction_length
        )
        student = self._encode([format_student_input(row["input"]) for row in rows], self.max_input_length)
        batch = {
            "instruction_input_ids": instruction_ids,
            "instruction_attention_mask": instruction_mask,
            "input_ids": student["input_ids"],  # (batch, input_len)
            "attention_mask": student["attention_mask"],
        }
        if self.teacher_inputs:
            batch.update(self._teacher(instructions, rows))  # (batch, teacher_len)
        batch["labels"] = self._labels(rows)  # (batch, target_len)
        batch["task_keys"] = [row["task"] for row in rows]
        batch["task_categories"] = [row.get("category", "") for row in rows]  # for per-category teachers
        if "teacher_topk_ids" in rows[0]:  # the teacher's distributions, cached once (tagi_hf.training.teacher_logits)
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


@dataclass
class TagiCausalDataCollator(TagiDataCollator):
    """
    [`TagiDataCollator`] for a decoder-only backbone ([`TagiForCausalLM`]): the model reads prompt and output as one
    sequence and learns only the output.

    Returns, per row, right-padded:
    - `instruction_input_ids`, `instruction_attention_mask`: the instruction, as for T5;
    - `input_ids`, `attention_mask`: the student's prompt ([`format_student_input`], no instruction) followed by the
      first reference output and EOS; `labels`: the same ids with `label_pad_token_id` everywhere but the output;
    - `teacher_input_ids`, `teacher_attention_mask`, `teacher_labels` (with `teacher_inputs=True`): the instruction in
      context ([`in_context_ids`]) followed by the same output tokens, so the teacher's output positions line up
      one to one with the student's;
    - `task_keys`, `task_categories`.
    """

    def _output_ids(self, row: Mapping[str, Any]) -> list[int]:
        text = row["outputs"][0] if row["outputs"] else ""
        ids = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"][: self.max_target_length - 1]
        return ids + [self.tokenizer.eos_token_id]

    def _sequences(self, prompts: list[list[int]], outputs: list[list[int]], prefix: str) -> dict[str, torch.Tensor]:
        ids = [p + o for p, o in zip(prompts, outputs)]
        padded = self.tokenizer.pad({"input_ids": ids}, padding="longest", return_tensors="pt")
        labels = torch.full_like(padded["input_ids"], self.label_pad_token_id)
        for i, (prompt, output) in enumerate(zip(prompts, outputs)):
            labels[i, len(prompt) : len(prompt) + len(output)] = torch.tensor(output)
        if self.tokenizer.padding_side == "left":
            raise ValueError("TagiCausalDataCollator pads on the right: set `tokenizer.padding_side = 'right'`.")
        return {
            f"{prefix}input_ids": padded["input_ids"],
            f"{prefix}attention_mask": padded["attention_mask"],
            f"{prefix}labels": labels,
        }

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("`rows` must hold at least one row.")
        if self.tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token: the output would never end.")
        instructions = [self.instruction(row) for row in rows]
        instruction_ids, instruction_mask = tokenize_instructions(
            self.tokenizer, instructions, self.max_instruction_length
        )
        outputs = [self._output_ids(row) for row in rows]
        prompts = [
            self.tokenizer(format_student_input(row["input"]), truncation=True, max_length=self.max_input_length)[
                "input_ids"
            ]
            for row in rows
        ]
        batch = {"instruction_input_ids": instruction_ids, "instruction_attention_mask": instruction_mask}
        batch.update(self._sequences(prompts, outputs, ""))
        if self.teacher_inputs:
            lengths = dict(max_length=self.max_teacher_length, max_input_length=self.max_input_length)
            teacher = [
                in_context_ids(self.tokenizer, t, row["input"], **lengths) for t, row in zip(instructions, rows)
            ]
            batch.update(self._sequences(teacher, outputs, "teacher_"))
        batch["task_keys"] = [row["task"] for row in rows]
        batch["task_categories"] = [row.get("category", "") for row in rows]
        return batch


def collator_for(tokenizer: PreTrainedTokenizerBase, config, **kwargs) -> TagiDataCollator:
    """The collator a backbone reads: [`TagiDataCollator`] for T5, [`TagiCausalDataCollator`] for a decoder-only LM
    (`config`: the backbone's or a `TagiConfig`)."""
    cls = TagiDataCollator if TagiConfig.is_encoder_decoder_config(config) else TagiCausalDataCollator
    return cls(tokenizer, **kwargs)


@dataclass
class Seq2SeqCollator:
    """Keeps what a plain T5 forward reads from a [`TagiDataCollator`] batch: the student's or the teacher's source."""

    collator: TagiDataCollator
    source: str = "student"  # "student": instance alone; "teacher": instruction + instance

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(rows)
        prefix = "teacher_" if self.source == "teacher" else ""
        return {
            "input_ids": batch[f"{prefix}input_ids"],  # (batch, src_len)
            "attention_mask": batch[f"{prefix}attention_mask"],  # (batch, src_len)
            # T5: the decoder's targets; a decoder-only LM: its own sequence, labelled on the output only
            "labels": batch.get(f"{prefix}labels", batch["labels"]),
        }


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
            "labels": c["input_ids"].masked_fill(c["attention_mask"] == 0, IGNORE_INDEX),  # (batch, len_c)
        }

    def _pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad({"input_ids": sequences}, padding="longest", return_tensors="pt")


@dataclass
class PrefixLMCollator:
    """Splits each text at a random token: the prefix is the input, the rest the target (T5-LM-adapt's objective).

    A text containing `boundary` (by default the prompts' `"\nOutput: "`) is split right after it with probability
    `boundary_probability`: the prefix is then the prompt and the target the instance's output.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 128
    seed: int = 0
    boundary: str = "\nOutput: "
    boundary_probability: float = 0.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [r["text"] for r in rows]
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)
        encoded = encoded["input_ids"]
        eos = [self.tokenizer.eos_token_id]
        sources, targets = [], []
        for text, ids in zip(texts, encoded):
            if self.boundary_probability and self.boundary in text and self._rng.random() < self.boundary_probability:
                # Prompt and output tokenized apart, exactly as `TagiDataCollator` tokenizes them.
                cut = text.index(self.boundary) + len(self.boundary)
                prompt, output = self.tokenizer([text[:cut], text[cut:]], add_special_tokens=False)["input_ids"]
                sources.append(prompt[: self.max_length - 1] + eos)
                targets.append(output[: self.max_length - 1] + eos)
            else:
                cut = self._rng.randint(1, max(1, len(ids) - 1))
                sources.append(ids[:cut] + eos)
                targets.append(ids[cut:] + eos)
        source, target = self._pad(sources), self._pad(targets)
        labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, IGNORE_INDEX)
        return {"input_ids": source["input_ids"], "attention_mask": source["attention_mask"], "labels": labels}

    def _pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad({"input_ids": sequences}, padding="longest", return_tensors="pt")
