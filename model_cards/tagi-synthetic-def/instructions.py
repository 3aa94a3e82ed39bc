"""Turning instruction text into token ids for the generator: validation, truncation, tokenizer checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


def check_tokenizer(tokenizer, vocab_size: int) -> None:
    """Raises `ValueError` when the tokenizer can produce ids the backbone's embedding does not have."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"The `tokenizer` has {len(tokenizer)} tokens but the backbone's embedding has only {vocab_size} rows: "
            "they do not belong together."
        )


def validate_instructions(instructions: Sequence[str], *, allow_empty: bool = False) -> None:
    """Empty or whitespace-only instructions carry no task: refuse them with the offending position, unless
    `allow_empty` (the no-instruction control of evaluation, `--instruction-mode empty`)."""
    if len(instructions) == 0:
        raise ValueError("`instructions` is empty.")
    for i, text in enumerate(instructions):
        check_instruction(text, i, allow_empty=allow_empty)


def check_instruction(text: str, index: int, *, allow_empty: bool = False) -> None:
    """Refuses one instruction that is not a string or (unless `allow_empty`) is empty or whitespace, naming its
    position `index` (in a list, or in a stream read lazily)."""
    if not isinstance(text, str) or not (allow_empty or text.strip()):
        raise ValueError(f"`instructions[{index}]` is empty or whitespace; an instruction must describe the task.")


def truncate_instruction_ids(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_length: int, eos_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one truncation policy for instructions, wherever they are tokenized (the collator, `generate_adapter`) or
    arrive (the model's forward): a right-padded row longer than `max_length` keeps its first `max_length - 1` tokens
    and ends with EOS (`max_length` tokens when there is no EOS), as a tokenizer's own truncation does. Warns once."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if input_ids.shape[1] <= max_length:
        return input_ids, attention_mask
    lengths = attention_mask.sum(1)
    too_long = lengths > max_length
    input_ids, attention_mask = input_ids[:, :max_length].clone(), attention_mask[:, :max_length]
    if bool(too_long.any()):
        logger.warning_once(f"Instructions longer than `max_instruction_length`={max_length} tokens are truncated.")
        if eos_token_id is not None:
            input_ids[too_long, -1] = eos_token_id
    return input_ids, attention_mask


def tokenize_instructions(
    tokenizer,
    instructions: Sequence[str],
    max_length: int,
    device: torch.device | str = "cpu",
    *,
    allow_empty: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenizes and right-pads instructions, cut by [`truncate_instruction_ids`]. Empty ones are refused unless
    `allow_empty` (`""` is then EOS alone). Returns `input_ids` and `attention_mask`, both `(batch, len)`."""
    validate_instructions(instructions, allow_empty=allow_empty)
    encoded = tokenizer(list(instructions), add_special_tokens=True)["input_ids"]
    longest = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.tensor([ids + [pad] * (longest - len(ids)) for ids in encoded])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in encoded])
    input_ids, attention_mask = truncate_instruction_ids(input_ids, attention_mask, max_length, tokenizer.eos_token_id)
    return input_ids.to(device), attention_mask.to(device)
