"""Data for TAGI: the Super-NaturalInstructions loader, the synthetic suite, prompt formats, tokenizer, collators."""

from .collators import (
    IGNORE_INDEX,
    PrefixLMCollator,
    PretrainingCollator,
    Seq2SeqCollator,
    TagiCausalDataCollator,
    TagiDataCollator,
    collator_for,
    in_context_ids,
)
from .prompts import format_instruction, format_student_input, format_teacher_input, parse_setting
from .sampling import TaskBalancedSampler
from .sni import SNI_FEATURES, load_sni
from .synthetic import HELD_OUT_CHAINS, HELD_OUT_WORDS, build_synthetic_tasks, synthetic_corpus, write_synthetic_suite
from .synthetic_ops import OPERATIONS, WORDS, SyntheticOp, SyntheticTask, apply_chain, chain_output, validate_chain
from .tokenizer import train_tokenizer

__all__ = [
    "HELD_OUT_CHAINS",
    "IGNORE_INDEX",
    "PrefixLMCollator",
    "PretrainingCollator",
    "Seq2SeqCollator",
    "HELD_OUT_WORDS",
    "OPERATIONS",
    "SNI_FEATURES",
    "WORDS",
    "SyntheticOp",
    "SyntheticTask",
    "TagiCausalDataCollator",
    "TagiDataCollator",
    "TaskBalancedSampler",
    "apply_chain",
    "build_synthetic_tasks",
    "collator_for",
    "chain_output",
    "format_instruction",
    "format_student_input",
    "format_teacher_input",
    "in_context_ids",
    "load_sni",
    "parse_setting",
    "synthetic_corpus",
    "train_tokenizer",
    "validate_chain",
    "write_synthetic_suite",
]
