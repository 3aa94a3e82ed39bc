"""Inference for evaluation: a saved model (TAGI or plain T5) on an SNI-layout split, or by rank classification.

The protocol (see `docs/method.md`, Evaluation protocol): first N instances of every test task, greedy decoding,
at most 128 new tokens, ROUGE-L and exact match per task, per category and overall.

- A TAGI model reads each task's instruction once: [`predict`] generates every task's adapter in one batched
  [`~TagiModel.generate_adapter`] call, then decodes the task's instances with that adapter and the input alone.
- A plain T5 (the instruction-in-context baseline) reads instruction and input together ([`format_teacher_input`]).

Instruction modes, for controls (`instruction_modes.py`): `"own"` (the task's instruction), `"generic"` (a definition
naming no operation), `"shuffled"` (another task's instruction) and `"empty"` (none: T5 reads the input alone in the
student format, TAGI uses the adapter generated from the empty text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.utils import logging

from ..data import IGNORE_INDEX, format_student_input, in_context_ids, load_sni, parse_setting
from ..modeling import GeneratedAdapter, TagiConfig, TagiPreTrainedModel, tagi_class_for
from ..modeling.configuration_tagi import DECODER_ONLY_TYPES, ENCODER_DECODER_TYPES
from ..modeling.file_utils import atomic_write_text
from ..modeling.instructions import check_tokenizer
from ..teachers.seq2seq import load_backbone
from .instruction_modes import INSTRUCTION_MODES, task_instructions
from .metrics import compute_metrics
from .rank_classification import ScoreFn, load_rank_classification_jsonl, option_nll, rank_classification

logger = logging.get_logger(__name__)

MODEL_KINDS = (
    "tagi",
    "t5",
    "causal_lm",
)  # a TAGI model, or a plain T5 / decoder-only LM with the instruction in context
IN_CONTEXT_INSTRUCTION_LENGTH = 1024
"""Instruction tokens an in-context T5 input may hold on top of `max_source_length` (the collator's default)."""

Row = Mapping[str, Any]


# ------------------------------------------------------------------------------------------------------- loading
def load_for_evaluation(
    path: str | Path, *, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, Any, str]:
    """
    Load a saved model and its tokenizer from one directory, in eval mode.

    Args:
        path (`str` or `Path`): a directory holding a saved [`TagiModel`] (config `model_type` `"tagi"`) or a plain
            `T5ForConditionalGeneration` (`"t5"`) or decoder-only LM (`"causal_lm"`: Llama, Qwen2, Mistral), and the
            tokenizer (`AutoTokenizer`). A TAGI model is a [`TagiModel`] or [`TagiForCausalLM`] after its backbone.
        device (`str` or `torch.device`, *optional*): defaults to `"cuda"` when available, else `"cpu"`.

    Returns:
        `tuple`: `(model, tokenizer, kind)` with `kind` `"tagi"`, `"t5"` or `"causal_lm"`.

    Example: `model, tokenizer, kind = load_for_evaluation("runs/demo/tagi")`.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"`{path}` is not a saved model directory: it has no config.json.")
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in ("tagi", *ENCODER_DECODER_TYPES, *DECODER_ONLY_TYPES):
        raise ValueError(
            f"`{path}` holds a model of type {config.model_type!r}; expected 'tagi', 't5' or one of "
            f"{DECODER_ONLY_TYPES}."
        )
    if config.model_type == "tagi":
        model, kind = tagi_class_for(config).from_pretrained(path), "tagi"
    else:
        model = load_backbone(path)[0]
        kind = "t5" if TagiConfig.is_encoder_decoder_config(config) else "causal_lm"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, _vocab_size(model))
    return model.to(device).eval(), tokenizer, kind


def _vocab_size(model: PreTrainedModel) -> int:
    return model.config.text_config.vocab_size if model.config.model_type == "tagi" else model.config.vocab_size


# -------------------------------------------------------------------------------------------------------- checks
def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(choices)}; got {value!r}.")


# -------------------------------------------------------------------------------------------------- tokenization
def _student_batch(tokenizer, inputs: Sequence[str], max_source_length: int, device) -> dict[str, torch.Tensor]:
    texts = [format_student_input(text) for text in inputs]
    encoded = tokenizer(texts, truncation=True, max_length=max_source_length, padding="longest", return_tensors="pt")
    return {k: encoded[k].to(device) for k in ("input_ids", "attention_mask")}


def prompt_ids(tokenizer, instruction: str, input: str, *, max_source_length: int = 512) -> list[int]:
    """The token ids [`predict`] feeds a model for one instance (before padding), e.g. to count prompt tokens.

    A plain model reads the instruction in context; when too long, the instruction is cut to
    [`IN_CONTEXT_INSTRUCTION_LENGTH`] tokens, never the instance (as in [`TagiDataCollator`], which trains the
    baseline). No instruction (`""`: a TAGI model, which reads its instruction through the adapter, or the `empty`
    mode): the instance input alone in the student format.
    """
    if not instruction:  # exactly the ids `_student_batch` gives a TAGI student, before padding
        return tokenizer(format_student_input(input), truncation=True, max_length=max_source_length)["input_ids"]
    limit = IN_CONTEXT_INSTRUCTION_LENGTH + max_source_length
    return in_context_ids(tokenizer, instruction, input, max_length=limit, max_input_length=max_source_length)


def _teacher_batch(
    tokenizer, instructions: Sequence[str], inputs: Sequence[str], max_source_length: int, device
) -> dict[str, torch.Tensor]:
    ids = [prompt_ids(tokenizer, i, x, max_source_length=max_source_length) for i, x in zip(instructions, inputs)]
    padded = tokenizer.pad({"input_ids": ids}, padding="longest", return_tensors="pt")
    return {k: padded[k].to(device) for k in ("input_ids", "attention_mask")}


# ------------------------------------------------------------------------------------------------------ predict
def predict(
    model: PreTrainedModel,
    tokenizer,
    dataset: Sequence[Row],
    *,
    kind: str,
    setting: str = "def",
    batch_size: int = 16,
    max_new_tokens: int = 128,
    num_beams: int = 1,
    instruction_mode: str = "own",
    seed: int = 0,
    max_source_length: int = 512,
    show_progress: bool = True,
    adapters: Mapping[str, GeneratedAdapter] | None = None,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """
    Generate a prediction for every row of an SNI-layout split ([`load_sni`] columns), greedy by default.

    Args:
        model, tokenizer, kind: as returned by [`load_for_evaluation`] (`kind` `"tagi"` or `"t5"`).
        dataset (`datasets.Dataset` or a sequence of row dicts): rows with `id`, `task`, `category`, `definition`,
            `positive_examples`, `input` and `outputs`.
        setting (`str`): `"def"` or `"def+Kpos"`, the instruction format.
        batch_size (`int`): instances per `generate` call (and instructions per generator batch).
        instruction_mode (`str`): `"own"`, `"generic"`, `"shuffled"` or `"empty"` (see [`task_instructions`]);
            `seed` seeds the shuffle.
        max_source_length (`int`): tokens kept of the instance input; an in-context T5 input holds up to
            [`IN_CONTEXT_INSTRUCTION_LENGTH`] more tokens of instruction, cut first when too long.
        adapters (`dict[str, GeneratedAdapter]`, *optional*): TAGI only: each task's adapter, made by the caller
            (e.g. timed, or saved); by default they are generated here from the tasks' instructions.
        generate_kwargs (`dict`, *optional*): more arguments for `generate`, over the defaults (e.g. a decoder-only
            LM's `pad_token_id` / `eos_token_id` when its generation config lacks them).

    Returns:
        `list[dict]`: one dict per row, in dataset order: `id`, `task`, `category`, `prediction`, `references`.

    Example: `predict(*load_for_evaluation("runs/demo/tagi"), load_sni(suite)["test"], ...)` (see the CLI).
    """
    _check_choice("kind", kind, MODEL_KINDS)
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1, got {value}.")
    rows = list(dataset)
    instructions = task_instructions(rows, setting=setting, instruction_mode=instruction_mode, seed=seed)
    by_task = _indices_by_task(rows)
    if adapters is not None:
        if kind != "tagi":
            raise ValueError(f"`adapters` are for a TAGI model (kind 'tagi'), got kind {kind!r}.")
        missing = [task for task in by_task if task not in adapters]
        if missing:
            raise ValueError(f"`adapters` has no adapter for {len(missing)} task(s) of the dataset: {missing[:4]}.")
    elif kind == "tagi":
        adapters = _task_adapters(model, tokenizer, instructions, batch_size)
    predictions: list[str] = [""] * len(rows)
    generation = {
        "max_new_tokens": max_new_tokens,
        "num_beams": num_beams,
        "do_sample": False,
        **(generate_kwargs or {}),
    }
    with tqdm(total=len(rows), desc="Generating", unit="inst", disable=not show_progress) as bar:
        for task, indices in by_task.items():
            # TAGI: the task's adapter and fusion state are computed once and reused by every batch of the task.
            state = model.prepare_task_state(adapter=adapters[task]) if kind == "tagi" else None
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                inputs = [rows[i]["input"] for i in chunk]
                texts = _generate(model, tokenizer, instructions[task], inputs, state, max_source_length, generation)
                for i, text in zip(chunk, texts):
                    predictions[i] = text
                bar.update(len(chunk))
    return [_prediction_record(row, text) for row, text in zip(rows, predictions)]


def _indices_by_task(rows: Sequence[Row]) -> dict[str, list[int]]:
    """Row indices of each task, tasks in order of first appearance."""
    by_task: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_task.setdefault(row["task"], []).append(index)
    return by_task


def _generate(model, tokenizer, instruction: str, inputs: list[str], state, max_source_length: int, generation: dict):
    """Decoded, stripped outputs of one batch: TAGI with the task's state (input alone), a plain model with the
    instruction in context. A decoder-only model gets left-padded prompts; its answer is the first line it writes
    after the prompt."""
    decoder_only = not TagiConfig.is_encoder_decoder_config(model.config)
    side, tokenizer.padding_side = tokenizer.padding_side, "left" if decoder_only else tokenizer.padding_side
    try:
        if state is not None:
            batch = _student_batch(tokenizer, inputs, max_source_length, model.device)
            output = model.generate(**batch, task_state=state, **generation)
        else:
            batch = _teacher_batch(tokenizer, [instruction] * len(inputs), inputs, max_source_length, model.device)
            output = model.generate(**batch, **generation)
    finally:
        tokenizer.padding_side = side
    if decoder_only:
        texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [text.strip().split("\n")[0].strip() for text in texts]
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


def _task_adapters(model: TagiPreTrainedModel, tokenizer, instructions: Mapping[str, str], batch_size: int) -> dict:
    """`{task: adapter}`, generated in one batched call; tasks sharing an instruction share its adapter. The `empty`
    mode's `""` is generated as is (EOS alone); no other mode yields an empty instruction."""
    unique = list(dict.fromkeys(instructions.values()))
    adapters = dict(zip(unique, model.generate_adapter(unique, tokenizer, batch_size=batch_size, allow_empty=True)))
    return {task: adapters[text] for task, text in instructions.items()}


def _prediction_record(row: Row, prediction: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "task": row["task"],
        "category": row.get("category", ""),
        "prediction": prediction,
        "references": list(row["outputs"]),
    }


# ----------------------------------------------------------------------------------------------------- evaluate
def evaluate_model(
    model_path: str | Path,
    data_dir: str | Path,
    *,
    split: str = "test",
    setting: str = "def",
    max_instances_per_task: int = 100,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    num_beams: int = 1,
    instruction_mode: str = "own",
    output: str | Path | None = None,
    predictions_file: str | Path | None = None,
    seed: int = 0,
    max_source_length: int = 512,
    device: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """
    Evaluate a saved model (TAGI or T5) on a split of an SNI-layout folder, the SNI protocol by default.

    Loads the first `max_instances_per_task` instances of every task of `split` ([`load_sni`]), runs [`predict`],
    scores with [`compute_metrics`]. Writes `output` (metrics JSON) and `predictions_file` (JSONL: `id`, `task`,
    `category`, `prediction`, `references` per line) atomically when given.

    Returns:
        `dict`: `rougeL`, `exact_match`, `exact_match_strict`, `n`, `per_task` and `per_category` (each
        `{name: {rougeL, exact_match, exact_match_strict, n}}`), and the run's description: `model`, `kind`,
        `data_dir`, `split`, `setting`, `instruction_mode`, `num_tasks`, `max_instances_per_task`, `num_beams`,
        `max_new_tokens`, `seed`.

    Example: `evaluate_model("runs/demo/tagi", "synthetic-suite", output="metrics.json")["rougeL"]`.
    """
    if max_instances_per_task < 1:
        raise ValueError(
            f"`max_instances_per_task` (--max-instances-per-task) must be >= 1, got {max_instances_per_task}."
        )
    parse_setting(setting)
    _check_choice("instruction_mode", instruction_mode, INSTRUCTION_MODES)
    limits = dict(
        max_train_instances_per_task=max_instances_per_task, max_test_instances_per_task=max_instances_per_task
    )
    rows = load_sni(data_dir, splits=(split,), **limits)[split]
    if len(rows) == 0:
        raise ValueError(f"The split {split!r} of `{data_dir}` holds no instances.")
    model, tokenizer, kind = load_for_evaluation(model_path, device=device)
    records = predict(
        model,
        tokenizer,
        rows,
        kind=kind,
        setting=setting,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        instruction_mode=instruction_mode,
        seed=seed,
        max_source_length=max_source_length,
        show_progress=show_progress,
    )
    columns = {key: [r[key] for r in records] for key in ("prediction", "references", "task", "category")}
    metrics = compute_metrics(columns["prediction"], columns["references"], columns["task"], columns["category"])
    result = {
        **metrics,
        "model": str(model_path),
        "kind": kind,
        "data_dir": str(data_dir),
        "split": split,
        "setting": setting,
        "instruction_mode": instruction_mode,
        "num_tasks": len(metrics["per_task"]),
        "max_instances_per_task": max_instances_per_task,
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    logger.info(f"{model_path} on {split} ({setting}, {instruction_mode}): rougeL {result['rougeL']:.2f}.")
    if predictions_file is not None:
        atomic_write_text(predictions_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if output is not None:
        _write_json(output, result)
    return result


def _write_json(path: str | Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------- rank classification
def make_score_fn(
    model: PreTrainedModel, tokenizer, kind: str, batch_size: int = 16, max_source_length: int = 512
) -> ScoreFn:
    """
    The `score_fn(instructions, inputs, options) -> (batch,)` of [`rank_classification`] for a loaded model: the
    average per-token NLL of each option ([`option_nll`]).

    TAGI: one adapter per distinct instruction (cached across calls, generated `batch_size` at a time), passed as a
    per-row list, the input alone as source. T5: instruction and input in context.
    """
    _check_choice("kind", kind, MODEL_KINDS)
    if not TagiConfig.is_encoder_decoder_config(model.config):
        raise ValueError("Rank classification is written for T5-based models; decoder-only models: use `predict`.")
    cache: dict[str, Any] = {}

    def adapters_for(instructions: list[str]) -> list:
        missing = [text for text in dict.fromkeys(instructions) if text not in cache]
        if missing:
            cache.update(zip(missing, model.generate_adapter(missing, tokenizer, batch_size=batch_size)))
        return [cache[text] for text in instructions]

    @torch.no_grad()
    def score_fn(instructions: list[str], inputs: list[str], options: list[str]) -> torch.Tensor:
        if kind == "tagi":
            batch = _student_batch(tokenizer, inputs, max_source_length, model.device)
            batch["adapter"] = adapters_for(instructions)
        else:
            batch = _teacher_batch(tokenizer, instructions, inputs, max_source_length, model.device)
        labels = tokenizer(list(options), padding="longest", return_tensors="pt")
        labels = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, IGNORE_INDEX).to(model.device)
        logits = model(**batch, labels=labels).logits  # (batch, option_len, vocab)
        return option_nll(logits, labels)  # (batch,)

    return score_fn


def rank_classify_model(
    model_path: str | Path,
    jsonl_path: str | Path,
    *,
    batch_size: int = 16,
    output: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """
    Rank classification (P3 / T0 protocol) of a saved model on a JSONL file ([`load_rank_classification_jsonl`]).

    Returns (and writes to `output`, atomically, when given) the result of [`rank_classification`] plus `model`,
    `kind` and `file`.

    Example: `rank_classify_model("runs/demo/tagi", "heldout.jsonl", batch_size=32)["accuracy"]`.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    examples = load_rank_classification_jsonl(jsonl_path)
    model, tokenizer, kind = load_for_evaluation(model_path, device=device)
    result = rank_classification(make_score_fn(model, tokenizer, kind, batch_size), examples, batch_size=batch_size)
    result.update(model=str(model_path), kind=kind, file=str(jsonl_path))
    if output is not None:
        _write_json(output, result)
    return result
