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
        if not isinstance(text, str) or not (allow_empty or text.strip()):
            raise ValueError(f"`instructions[{i}]` is empty or whitespace; an instruction must describe the task.")


def tokenize_instructions(
    tokenizer,
    instructions: Sequence[str],
    max_length: int,
    device: torch.device | str = "cpu",
    *,
    allow_empty: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenizes and right-pads instructions; longer ones are cut to `max_length` tokens (keeping EOS), with one
    warning. Empty ones are refused unless `allow_empty` (`""` is then EOS alone). Returns `input_ids` and
    `attention_mask`, both `(batch, len)`."""
    validate_instructions(instructions, allow_empty=allow_empty)
    encoded = tokenizer(list(instructions), add_special_tokens=True)["input_ids"]
    if any(len(ids) > max_length for ids in encoded):
        logger.warning_once(f"Instructions longer than `max_instruction_length`={max_length} tokens are truncated.")
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        encoded = [ids if len(ids) <= max_length else ids[: max_length - len(eos)] + eos for ids in encoded]
    longest = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.tensor([ids + [pad] * (longest - len(ids)) for ids in encoded], device=device)
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in encoded], device=device)
    return input_ids, attention_mask
