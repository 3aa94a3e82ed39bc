"""The TAGI recipe on the synthetic suite: its stages (suite, tokenizer, stand-in backbone, baseline, LoRA teachers,
stage 1, stage 2), each cached in its own folder, and the demo that chains them and shows the result.

Each stage writes its result directory atomically and records the settings it was built with; a finished stage is
reused when the settings match, so re-running a pipeline skips finished stages (resume) and `overwrite=True` starts
over. The training runs themselves are [`tagi_hf.training.run.train_tagi`].
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5ForConditionalGeneration
from transformers.utils import logging

from ..data import (
    PretrainingCollator,
    TagiDataCollator,
    load_sni,
    synthetic_corpus,
    train_tokenizer,
    write_synthetic_suite,
)
from ..data.prompts import format_instruction, format_teacher_input
from ..modeling.file_utils import atomic_directory, atomic_write_text
from ..modeling.modeling_tagi import TagiModel
from ..training import run
from ..training.arguments import TagiTrainingArguments

logger = logging.get_logger(__name__)


def __getattr__(name: str):
    if name == "train_tagi":  # moved to tagi_hf.training.run: the old name still resolves, with a warning
        warnings.warn(
            "`tagi_hf.recipes.synthetic.train_tagi` moved to `tagi_hf.training.run.train_tagi`; import it from there "
            "(the old name goes in tagi-hf 0.3.0).",
            FutureWarning,
            stacklevel=2,
        )
        return run.train_tagi
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class DemoSettings:
    """Quick settings of `tagi-hf demo` (minutes on 2 CPU cores). Every number here is a knob, not a result."""

    out: str = "runs/demo"
    seed: int = 0
    instances_per_task: int = 300  # fresh data per step: with 60, models memorised their instances
    eval_instances_per_task: int = 20
    vocab_size: int = 600
    d_model: int = 96
    num_layers: int = 2
    corpus_instance_fraction: float = 0.5  # share of train-task instances (vs random word lists) in the corpus
    standin_random_texts: int = 4000  # random word lists added to the formatted train instances (stand-in only)
    standin_boundary_probability: float = 0.9  # instance texts split at their output (see PrefixLMCollator)
    standin_definition_fraction: float = 1.0  # instance texts with their definition in context (1.0: T0-like)
    backbone_steps: int = 2400  # the stand-in does most of the learning; the baseline continues from it
    backbone_learning_rate: float = 2e-3
    baseline_steps: int = 300
    # In-context FT's peak rate (None: `learning_rate`). From a shipped stand-in, which is already instruction-tuned on
    # the train tasks, 300 steps at 1e-3 lowered its fit (92.3 -> 79.3 % EM), 1e-4 keeps it (91.1 %): probe log
    # benchmarks/results/probes/demo-from-standin.md, selection rows.
    baseline_learning_rate: float | None = 1e-4
    teacher_steps: int = 600  # optimiser steps of the joint run that trains every task's teacher
    stage1_steps: int = 150
    stage1_learning_rate: float = 1e-4  # at 1e-3 stage 1 diverged (loss 4.9 -> 6.3, gradient norms in the thousands)
    stage2_steps: int = 3000  # from the shipped stand-in: 1,200 -> 2,400 -> 3,000 steps gave 78.6 / 79.4 / 84.0 % fit
    batch_size: int = 32
    lora_rank: int = 8
    fusion: str = "cross_attention"
    lambda_kl: float = 1.0
    lambda_ins: float = 0.1
    kl_temperature: float = 1.0
    # Stage 2: >0 runs the logit teacher once per training example and keeps its top-k logits per label token
    # (training/teacher_logits.py) instead of running it at every step; 0 (default): the live teacher, as in the paper.
    teacher_logits_top_k: int = 0
    learning_rate: float = 1e-3
    # The generator (TagiConfig fields) and its stage-2 batches, chosen on the dev split by the probes logged in
    # benchmarks/results/probes/generator.md: a trainable encoder at the generator's rate, 16 tasks x 4 per batch.
    instruction_encoder: str = "separate"
    instruction_pooling: str = "attention"
    instruction_encoder_learning_rate: float = 1e-3  # with instruction_encoder="separate"
    examples_per_task: int = 4  # stage 2: task-balanced batches of this many examples per task (0: random)
    teacher_learning_rate: float = 5e-3
    fit_tasks: int = 60  # seeded sample of train tasks scored on unseen instances (0: every train task)
    # A shipped stand-in (a folder written by benchmarks/ship_checkpoints.py, e.g. model_cards/tagi-synthetic-standin):
    # the tokenizer and backbone stages copy it instead of training them, as a user starts from a pretrained T5.
    standin: str = ""
    overwrite: bool = False


STAGE_MARKERS = ("config.json", "teachers.json", "splits", "tokenizer_config.json")
"""A stage's folder is finished when it holds one of these (a model, a teacher bank, a suite, a tokenizer). Some
stages keep resumable work inside their folder while they run (the baseline's `checkpoints/`, the teachers written
one by one), so the folder existing is not enough."""


def stage_finished(path: Path) -> bool:
    """Whether `path` holds a finished stage output (see [`STAGE_MARKERS`])."""
    return any((path / marker).exists() for marker in STAGE_MARKERS)


SUITE_VERSION = "2026-12-07"
"""Revision of the synthetic suite the recipe writes (docs/synthetic-suite.md, Refinements): recorded in the data
stage, so that a suite written by an older generator is never reused."""

STAGE_COST = "stage_cost.json"
"""Written into a stage's folder when this run built it: its seconds (exclusive of the stages it triggered), when it
finished and on which machine. What the shipped checkpoints' cards state as their cost. A resumed stage counts only
the seconds of the run that finished it."""

STAGE_RECORD = "recipe_stage.json"
"""Written into a finished stage's folder: the settings it was built with, checked when the stage is reused."""


def _stage(
    path: Path, build: Callable[[Path], object], timings: dict[str, float] | None = None, record: dict | None = None
) -> Path:
    """Builds `path` unless it holds a finished stage ([`stage_finished`]); an interrupted stage is built again
    (resuming from its checkpoints where it has any). Records the seconds spent. With `record` (the settings the stage
    depends on), a finished stage built with other settings is refused instead of silently reused."""
    if stage_finished(path):
        _check_record(path, record)
        logger.warning(f"Stage output {path} exists: skipping (pass overwrite to redo).")
        return path
    if path.exists():
        logger.warning(f"Stage output {path} is unfinished (interrupted run): building it again, resuming if it can.")
    start, nested_before = time.perf_counter(), sum((timings or {}).values())
    build(path)
    # exclusive of the stages this one triggered (they record their own)
    seconds = round(time.perf_counter() - start - (sum((timings or {}).values()) - nested_before), 1)
    if timings is not None:
        timings[path.name] = seconds
    cost = {"seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _machine()}
    atomic_write_text(path / STAGE_COST, json.dumps(cost, indent=2) + "\n")
    if record is not None:
        atomic_write_text(path / STAGE_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def _check_record(path: Path, record: dict | None) -> None:
    saved_file = path / STAGE_RECORD
    if record is None:
        return
    if not saved_file.exists():
        logger.warning(f"Stage output {path} has no {STAGE_RECORD} (built by an older version): reused unchecked.")
        return
    saved = json.loads(saved_file.read_text())
    differing = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
    if differing:
        details = ", ".join(f"{k}: built with {saved.get(k)!r}, now {record.get(k)!r}" for k in differing)
        raise ValueError(
            f"Stage output {path} was built with other settings ({details}). Use another output folder, or pass "
            "overwrite to rebuild every stage."
        )


def _stage_args(s: DemoSettings, work: Path, steps: int, **kwargs) -> TagiTrainingArguments:
    return TagiTrainingArguments(
        output_dir=str(work),
        max_steps=steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        warmup_steps=max(1, steps // 50),
        lr_scheduler_type="linear",
        logging_steps=max(1, steps // 10),
        save_strategy="steps",
        save_steps=max(1, steps // 4),
        save_total_limit=1,
        seed=s.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        kl_temperature=s.kl_temperature,
        **kwargs,
    )


BACKBONE_SETTINGS = (
    "seed instances_per_task vocab_size d_model num_layers corpus_instance_fraction standin_random_texts "
    "standin_boundary_probability standin_definition_fraction backbone_steps backbone_learning_rate batch_size"
).split()
"""The [`DemoSettings`] fields the backbone depends on: part of every stage's record."""
STANDIN_FIELDS = (
    "vocab_size d_model num_layers corpus_instance_fraction standin_random_texts standin_boundary_probability "
    "standin_definition_fraction backbone_steps backbone_learning_rate"
).split()
"""The [`DemoSettings`] fields a shipped stand-in fixes (`DemoSettings.standin`): taken from its `shipped.json`."""
SHIPPED_META = "shipped.json"
STAGE2_SETTINGS = (
    "stage1_steps stage1_learning_rate stage2_steps lora_rank kl_temperature examples_per_task baseline_steps "
    "teacher_steps teacher_learning_rate"
).split()
"""The further [`DemoSettings`] fields a stage-2 model depends on (its variant's own choices are added)."""


class SyntheticRecipe:
    """The stages of the TAGI recipe on the synthetic suite, each cached in its own directory under `s.out`.

    `run_demo` chains them once; the quality benchmark reuses them to train every method and ablation on the same
    data, backbone and teachers.
    """

    def __init__(self, s: DemoSettings):
        self.standin = _shipped_standin(s) if s.standin else None
        if self.standin is not None:
            s = replace(s, **{k: self.standin["settings"][k] for k in STANDIN_FIELDS})
        self.s = s
        self.timings: dict[str, float] = {}  # seconds per stage built by this recipe (not by an earlier run)
        self.out = Path(s.out)
        if s.overwrite and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # Extra instances per task stay unseen in training: twice `eval_instances_per_task`, the fit rows that are
        # reported and, disjoint from them, the selection rows that probes choose settings on ([`fit_rows`]). With a
        # shipped stand-in the suite has the stand-in's shape, so that the unseen rows are rows it never saw either
        # (the recipe's train rows are then the first `instances_per_task` of the stand-in's).
        shape = self.standin["settings"] if self.standin is not None else asdict(s)
        self.train_cut, unseen = shape["instances_per_task"], 2 * shape["eval_instances_per_task"]
        data_record = {"suite": SUITE_VERSION, "seed": s.seed, "instances_per_task": self.train_cut + unseen}
        if stage_finished(self.out / "data") and not (self.out / "data" / STAGE_RECORD).exists():
            raise ValueError(
                f"{self.out / 'data'} holds a synthetic suite written before the suite's {SUITE_VERSION} revision "
                "(docs/synthetic-suite.md, Refinements): use another output folder, or pass overwrite."
            )
        self.fit_rows_per_task = unseen // 2  # the selection rows start after them, whatever comes
        self.data_dir = self._stage(
            self.out / "data",
            lambda p: write_synthetic_suite(p, seed=s.seed, instances_per_task=data_record["instances_per_task"]),
            data_record,
        )
        self.train = load_sni(
            self.data_dir, max_train_instances_per_task=s.instances_per_task, seed=s.seed, splits=("train",)
        )["train"]
        self.corpus = demo_corpus(s)
        if self.standin is None:
            build_tokenizer = lambda p: _save_tokenizer(p, self.train, self.corpus, s.vocab_size)  # noqa: E731
        else:
            build_tokenizer = lambda p: _copy_tokenizer(p, s.standin)  # noqa: E731
        tok_dir = self._stage(self.out / "tokenizer", build_tokenizer, self._standin_record())
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)

    def _stage(self, path: Path, build: Callable[[Path], object], record: dict | None = None) -> Path:
        return _stage(path, build, self.timings, record)

    def _standin_record(self) -> dict | None:
        """What identifies a shipped stand-in in the stage records (None without one: records as before)."""
        if self.standin is None:
            return None
        return {"standin": str(self.s.standin), "standin_commit": self.standin["commit"]}

    def _record(self, fields: tuple[str, ...], **extra) -> dict:
        """The settings a stage depends on (checked when it is reused), its backbone's included."""
        return {k: getattr(self.s, k) for k in (*BACKBONE_SETTINGS, *fields)} | (self._standin_record() or {}) | extra

    def _work(self, name: str, record: dict) -> Path:
        """The checkpoint folder of stage `name`: checkpoints left there by a run with other settings are removed
        (resuming them would load weights of another model), matching ones are resumed."""
        work = self.out / f".work-{name}"
        saved = work / STAGE_RECORD
        if work.exists() and saved.exists() and json.loads(saved.read_text()) != record:
            logger.warning(f"{work} holds checkpoints of a run with other settings: removed.")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return work

    def backbone(self) -> Path:
        from .standin import instance_texts, pretrain_standin, standin_config

        s = self.s
        if self.standin is not None:
            return self._stage(self.out / "backbone", lambda p: _copy_standin(p, s.standin), self._record(()))
        config = standin_config(len(self.tokenizer), d_model=s.d_model, num_layers=s.num_layers)
        random_texts = synthetic_corpus(s.seed, s.standin_random_texts, instance_fraction=0.0)
        texts = instance_texts(self.train, s.seed, definition_fraction=s.standin_definition_fraction)
        return self._stage(
            self.out / "backbone",
            lambda p: pretrain_standin(
                texts + random_texts,
                self.tokenizer,
                p,
                config=config,
                max_steps=s.backbone_steps,
                batch_size=s.batch_size,
                learning_rate=s.backbone_learning_rate,
                seed=s.seed,
                boundary_probability=s.standin_boundary_probability,
            ),
            self._record(()),
        )

    def baseline(self, setting: str = "def", seed: int | None = None) -> Path:
        """The instruction-in-context multi-task model (Tk-Instruct role), also the logit teacher (the one of the
        settings' seed). `seed`: another training seed (same backbone and data), in a folder of its own."""
        from ..teachers.baseline import train_multitask_baseline

        s, name = self.s, "baseline" if setting == "def" else f"baseline-{setting}"
        train_seed = s.seed if seed is None else seed
        name += "" if train_seed == s.seed else f"-seed{train_seed}"
        extra = {} if train_seed == s.seed else {"train_seed": train_seed}  # records of the settings' seed unchanged
        own_rate = s.baseline_learning_rate is not None
        if own_rate:  # recorded only when set: earlier stages keep their records
            extra["baseline_learning_rate"] = s.baseline_learning_rate
        return self._stage(
            self.out / name,
            lambda p: train_multitask_baseline(
                str(self.backbone()),
                self.tokenizer,
                self.train,
                p,
                setting=setting,
                max_steps=s.baseline_steps,
                learning_rate=s.baseline_learning_rate if own_rate else s.learning_rate,
                per_device_train_batch_size=s.batch_size,
                seed=train_seed,
            ),
            # its own rate when set (stage 2's `learning_rate` then does not concern it)
            self._record(
                ("baseline_steps",) if own_rate else ("baseline_steps", "learning_rate"), setting=setting, **extra
            ),
        )

    def teachers(self) -> Path:
        from ..teachers.joint import train_lora_teachers_jointly

        s = self.s  # 323 small tasks: one joint run trains every task's teacher (see teachers/joint.py)
        return self._stage(
            self.out / "teachers",
            lambda p: train_lora_teachers_jointly(
                str(self.backbone()),
                self.tokenizer,
                self.train,
                p,
                rank=s.lora_rank,
                max_steps=s.teacher_steps,
                learning_rate=s.teacher_learning_rate,
                batch_size=s.batch_size,
                seed=s.seed,
            ),
            self._record(("teacher_steps", "teacher_learning_rate", "lora_rank")),
        )

    def fresh_tagi(self, fusion: str, generator: dict | None = None) -> TagiModel:
        """A TAGI model around the stand-in; `generator`: TagiConfig fields (default: the settings' generator)."""
        r = self.s.lora_rank
        generator = self.generator() if generator is None else generator
        return TagiModel.from_backbone(str(self.backbone()), lora_rank=r, lora_alpha=2 * r, fusion=fusion, **generator)

    def generator(self) -> dict:
        """The settings' generator as TagiConfig fields."""
        return {"instruction_encoder": self.s.instruction_encoder, "instruction_pooling": self.s.instruction_pooling}

    def stage1_name(self, fusion: str | None = None, generator: dict | None = None) -> str:
        """The folder name of the stage-1 model for `fusion` and `generator` (defaults: the settings')."""
        fusion, generator = fusion or self.s.fusion, self.generator() if generator is None else generator
        name = "tagi-stage1" if fusion == self.s.fusion else f"tagi-stage1-{fusion}"
        return name + ("" if generator == self.generator() else "-" + "-".join(generator.values()))

    def stage1(self, fusion: str, generator: dict | None = None) -> Path:
        s, generator = self.s, self.generator() if generator is None else generator
        name = self.stage1_name(fusion, generator)
        record = self._record(
            ("stage1_steps", "stage1_learning_rate", "lora_rank", "corpus_instance_fraction"),
            fusion=fusion,
            instruction_encoder_trains=False,
            **generator,
        )

        def model() -> TagiModel:
            # A separate instruction encoder stays frozen in stage 1 (a copy of the backbone's, as the paper's
            # generator reads it) and trains from stage 2 on: trained on the a|b|c corpus at the generator's rate
            # it diverged (gradient norm 2,363 by step 90 of 300, loss rising).
            tagi = self.fresh_tagi(fusion, generator)
            tagi.set_trainable(instruction_encoder=False)
            return tagi

        return self._stage(
            self.out / name,
            lambda p: run.train_tagi(
                model(),
                self.tokenizer,
                Dataset.from_dict({"text": self.corpus}),
                p,
                _stage_args(
                    replace(s, learning_rate=s.stage1_learning_rate),
                    self._work(name, record),
                    s.stage1_steps,
                    lambda_kl=0.0,
                    lambda_ins=0.0,
                ),
                data_collator=PretrainingCollator(self.tokenizer, min_segment_length=3, seed=s.seed),
            ),
            record,
        )

    def tagi(
        self,
        name: str = "tagi",
        *,
        setting: str = "def",
        fusion: str | None = None,
        stage1: bool = True,
        lambda_kl: float | None = None,
        lambda_ins: float | None = None,
        learning_rate: float | None = None,
        generator: dict | None = None,
        seed: int | None = None,
    ) -> Path:
        """Stage 2 for one variant (defaults: the full method of the settings; `generator`: TagiConfig fields of
        another generator, e.g. the paper's frozen encoder with mean pooling; `seed`: stage 2's training seed, batch
        order and dropout, when not the settings' seed: the stages before it stay those of the settings' seed)."""
        s = self.s if learning_rate is None else replace(self.s, learning_rate=learning_rate)
        fusion = fusion or s.fusion
        kl = s.lambda_kl if lambda_kl is None else lambda_kl
        ins = s.lambda_ins if lambda_ins is None else lambda_ins
        generator = self.generator() if generator is None else generator
        separate = generator["instruction_encoder"] == "separate"
        encoder_lr = s.instruction_encoder_learning_rate if separate else None
        record = self._record(
            STAGE2_SETTINGS,
            setting=setting,
            fusion=fusion,
            stage1=stage1,
            lambda_kl=kl,
            lambda_ins=ins,
            learning_rate=s.learning_rate,
            instruction_encoder_learning_rate=encoder_lr,
            **generator,
        )
        if seed is not None and seed != self.s.seed:  # recorded only when used: the settings' seed keeps its records
            record["stage2_seed"] = seed
        if kl > 0 and s.baseline_learning_rate is not None:  # its logit teacher's rate, likewise
            record["baseline_learning_rate"] = s.baseline_learning_rate
        cached_k = s.teacher_logits_top_k if kl > 0 else 0
        if cached_k:  # recorded only when used, so stages built with the live teacher keep their records
            record["teacher_logits_top_k"] = cached_k

        def build(path: Path) -> None:
            if stage1:
                model = TagiModel.from_pretrained(self.stage1(fusion, generator))
            else:
                model = self.fresh_tagi(fusion, generator)
            collator = TagiDataCollator(self.tokenizer, setting=setting)
            teacher = T5ForConditionalGeneration.from_pretrained(self.baseline(setting)) if kl > 0 else None
            train, teacher = teacher_or_cache(
                teacher,
                self.train,
                collator,
                self.out / f"teacher-logits-{setting}",
                top_k=cached_k,
                temperature=s.kl_temperature,
            )
            run.train_tagi(
                model,
                self.tokenizer,
                train,
                path,
                _stage_args(
                    s if seed is None else replace(s, seed=seed),
                    self._work(name, record),
                    s.stage2_steps,
                    lambda_kl=kl,
                    lambda_ins=ins,
                    instruction_encoder_learning_rate=encoder_lr,
                    examples_per_task=s.examples_per_task,
                ),
                data_collator=collator,
                teacher_model=teacher,
                teacher_bank=TeacherBank.from_directory(self.teachers()) if ins > 0 else None,
            )

        from ..teachers.lora_teachers import TeacherBank
        from ..training.teacher_logits import teacher_or_cache

        return self._stage(self.out / name, build, record)

    def evaluate(
        self, model_dir: Path, *, setting: str = "def", instruction_mode: str = "own", split: str = "test"
    ) -> dict:
        """Scores on the held-out `split` ("test", or "dev" where settings are chosen), with `ran_to_limit`."""
        from ..evaluation.fit import count_ran_to_limit
        from ..evaluation.runner import evaluate_model

        tag, max_new_tokens = f"{model_dir.name}-{setting}-{instruction_mode}", 32
        tag = tag if split == "test" else f"{tag}-{split}"
        predictions = self.out / "eval" / f"predictions-{tag}.jsonl"
        metrics = evaluate_model(
            str(model_dir),
            str(self.data_dir),
            split=split,
            setting=setting,
            instruction_mode=instruction_mode,
            max_instances_per_task=self.s.eval_instances_per_task,
            batch_size=64,
            max_new_tokens=max_new_tokens,
            output=str(self.out / "eval" / f"metrics-{tag}.json"),
            predictions_file=str(predictions),
            show_progress=False,
        )
        texts = [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()]
        return metrics | {"ran_to_limit": count_ran_to_limit(texts, self.tokenizer, max_new_tokens)}

    def heldout_rows(self, split: str = "test") -> list[dict]:
        """The rows of a held-out split ("test" or "dev") that [`evaluate`] scores: `eval_instances_per_task` each."""
        rows = load_sni(self.data_dir, splits=(split,), max_test_instances_per_task=self.s.eval_instances_per_task)
        return list(rows[split])

    def fit_rows(self, sample: str = "fit") -> list[dict]:
        """Unseen instances of train tasks, `eval_instances_per_task` of each of `fit_tasks` seeded tasks.

        `sample="fit"`: the reported fit rows (the first unseen instances of a task sample drawn with seed 0);
        `sample="selection"`: the rows that probes choose settings on, disjoint from the fit rows (the unseen
        instances after the fit rows' `eval_instances_per_task` of the settings the recipe was built with, of a task
        sample drawn with seed 1), so that no reported row was used to choose a setting."""
        from ..evaluation.fit import unseen_train_rows

        if sample not in ("fit", "selection"):
            raise ValueError(f"`sample` must be 'fit' or 'selection', got {sample!r}.")
        s, selection = self.s, sample == "selection"
        return unseen_train_rows(
            self.data_dir,
            max_train_instances_per_task=self.train_cut,
            seed=s.seed,
            per_task=s.eval_instances_per_task,
            num_tasks=s.fit_tasks or None,
            sample_seed=int(selection),
            offset=self.fit_rows_per_task * selection,
        )

    def evaluate_fit(
        self,
        model_dir: Path | None,
        *,
        setting: str = "def",
        max_new_tokens: int = 32,
        instruction_mode: str = "own",
        sample: str = "fit",
    ) -> dict:
        """How well a saved model (TAGI or T5) fits the train tasks: scores on their unseen instances ([`fit_rows`]),
        with each task's own instruction or a control (`instruction_mode`, see [`task_instructions`]).
        `model_dir=None` scores the LoRA teachers, each on its own task. `sample`: the reported fit rows, or the
        selection rows for choosing settings ([`fit_rows`]). See [`summarise_predictions`]."""
        from ..evaluation.fit import predict_with_teachers, summarise_predictions
        from ..evaluation.runner import load_for_evaluation, predict
        from ..teachers.lora_teachers import TeacherBank

        rows = self.fit_rows(sample)
        if model_dir is None:
            base = T5ForConditionalGeneration.from_pretrained(self.backbone())
            bank = TeacherBank.from_directory(self.teachers())
            records = predict_with_teachers(base, bank, self.tokenizer, rows, max_new_tokens=max_new_tokens)
        else:
            model, _, kind = load_for_evaluation(model_dir)
            records = predict(
                model,
                self.tokenizer,
                rows,
                kind=kind,
                setting=setting,
                batch_size=64,
                max_new_tokens=max_new_tokens,
                instruction_mode=instruction_mode,
                show_progress=False,
            )
        return summarise_predictions(records, self.tokenizer, max_new_tokens)


DEMO_TARGETS = {"fit_exact_match": 80.0, "fit_drop_other_instruction": 50.0, "showcase_right": 4}
"""What `tagi-hf demo` aims at (issue 25): TAGI's exact match on unseen instances of train tasks, how much another
task's instruction lowers it (points), and how many of the showcase's 5 inputs its adapter gets right."""
COPY_ROW = "copy the input"
OTHER_INSTRUCTION_ROW = "TAGI, another task's instruction"


def run_demo(s: DemoSettings) -> dict:
    """synth -> tokenizer -> stand-in backbone -> baseline (logit teacher) -> LoRA teachers -> stage 1 -> stage 2 ->
    evaluation on held-out tasks and on unseen instances of train tasks (beside copying the input, and TAGI given
    another task's instruction) -> an adapter for a held-out instruction, saved, reloaded and run -> the targets."""
    from ..evaluation.fit import copy_input_records, summarise_predictions

    start = time.perf_counter()
    recipe = SyntheticRecipe(s)
    methods = {"baseline (instruction in context)": recipe.baseline(), "TAGI": recipe.tagi()}
    results = {name: _headline(recipe.evaluate(path)) for name, path in methods.items()}
    results[OTHER_INSTRUCTION_ROW] = _headline(recipe.evaluate(methods["TAGI"], instruction_mode="shuffled"))
    copying = lambda rows: summarise_predictions(copy_input_records(rows), recipe.tokenizer, 32)  # noqa: E731
    results[COPY_ROW] = _headline(copying(recipe.heldout_rows()))
    # Fit first: scores on unseen instances of the train tasks, for every model and for the LoRA teachers.
    fit = {name: recipe.evaluate_fit(path) for name, path in methods.items()}
    fit[OTHER_INSTRUCTION_ROW] = recipe.evaluate_fit(methods["TAGI"], instruction_mode="shuffled")
    fit["LoRA teachers (own task each)"] = recipe.evaluate_fit(None)
    fit[COPY_ROW] = copying(recipe.fit_rows())
    summary = {"settings": asdict(s), "results": results, "train_tasks_unseen_instances": fit}
    summary["adapter_demo"] = _adapter_demo(methods["TAGI"], recipe.out / "adapter-demo")
    summary["targets"] = demo_targets(summary)
    summary["stage_seconds"] = recipe.timings  # stages built by this run (a re-run skips finished stages)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["machine"] = _machine()
    atomic_write_text(recipe.out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary


def demo_targets(summary: dict) -> dict:
    """Each of [`DEMO_TARGETS`] with its measured value and whether it is met."""
    fit = summary["train_tasks_unseen_instances"]
    own = fit["TAGI"]["exact_match"]
    drop = own - fit[OTHER_INSTRUCTION_ROW]["exact_match"]
    right = sum(r["output"] == r["expected"] for r in summary["adapter_demo"]["examples"])
    measured = {"fit_exact_match": own, "fit_drop_other_instruction": drop, "showcase_right": right}
    return {k: {"target": t, "measured": measured[k], "met": measured[k] >= t} for k, t in DEMO_TARGETS.items()}


def _machine() -> dict:
    import os
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), None)
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
        "torch": torch.__version__,
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        return []


def demo_corpus(s: DemoSettings) -> list[str]:
    """The demo's synthetic corpus: the tokenizer's texts and stage 1's (a | b | c) pretraining text."""
    return synthetic_corpus(s.seed, 20000, instance_fraction=s.corpus_instance_fraction)


def train_demo_tokenizer(train: Dataset, corpus: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """The demo's tokenizer, trained on the corpus and the train split's texts (the cost benchmark uses it too)."""
    texts = [*corpus, *train["definition"], *train["input"], *(o for outs in train["outputs"] for o in outs)]
    # The prompt templates too ("Definition:", "Positive Example", "Now complete ..."): short sequences, fast steps.
    texts += [
        format_teacher_input(format_instruction(r["definition"], r["positive_examples"], 2), r["input"])
        for r in train.select(range(0, len(train), 50))
    ]
    return train_tokenizer(texts, vocab_size=vocab_size)


def standin_provenance(s: DemoSettings) -> dict:
    """What a shipped stand-in's `shipped.json` must say of how it was trained, for [`DemoSettings.standin`] to
    reuse it: the suite revision and the [`DemoSettings`] fields of its backbone (with its eval rows per task)."""
    return {
        "suite": SUITE_VERSION,
        "settings": {k: getattr(s, k) for k in (*BACKBONE_SETTINGS, "eval_instances_per_task")},
    }


def _shipped_standin(s: DemoSettings) -> dict:
    """The `shipped.json` of the stand-in `s.standin`, checked against the settings: the same suite revision and seed
    (else the recipe's train tasks are not the ones it was trained on), and no more train or eval rows per task than
    it had (the recipe's unseen rows must be unseen by the stand-in too)."""
    meta_file = Path(s.standin) / SHIPPED_META
    if not meta_file.is_file():
        raise ValueError(
            f"`standin={s.standin}` is not a shipped stand-in: no {SHIPPED_META} (written by "
            "benchmarks/ship_checkpoints.py)."
        )
    meta = json.loads(meta_file.read_text())
    shipped = meta["settings"]
    problems = []
    if meta.get("suite") != SUITE_VERSION:
        problems.append(f"it was trained on suite revision {meta.get('suite')!r}, the recipe writes {SUITE_VERSION!r}")
    if shipped["seed"] != s.seed:
        problems.append(f"it was trained on the suite of seed {shipped['seed']}, the settings ask for seed {s.seed}")
    for key in ("instances_per_task", "eval_instances_per_task"):
        if getattr(s, key) > shipped[key]:
            problems.append(f"`{key}` {getattr(s, key)} is above the stand-in's {shipped[key]}")
    if problems:
        raise ValueError(f"The stand-in {s.standin} does not fit these settings: " + "; ".join(problems) + ".")
    return meta


def _copy_tokenizer(path: Path, standin: str) -> None:
    with atomic_directory(path) as tmp:
        AutoTokenizer.from_pretrained(standin).save_pretrained(tmp)


def _copy_standin(path: Path, standin: str) -> None:
    """The shipped stand-in as the backbone stage, in float32 for training whatever dtype it ships in."""
    with atomic_directory(path) as tmp:
        T5ForConditionalGeneration.from_pretrained(standin, dtype=torch.float32).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(standin).save_pretrained(tmp)


def _save_tokenizer(path: Path, train: Dataset, corpus: list[str], vocab_size: int) -> None:
    with atomic_directory(path) as tmp:
        train_demo_tokenizer(train, corpus, vocab_size).save_pretrained(tmp)


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("rougeL", "exact_match", "exact_match_strict", "n", "ran_to_limit")}


DEMO_TASK = "synth_upper_then_drop_first_1"
# A dev task of the suite (seed 0): never trained on, so only the instruction tells the generator what to do. Chosen on
# the dev split (the best dev task of the probe models p1 and p3 in benchmarks/results/probes/demo-from-standin.md),
# never on test; its inputs below were written before any model saw them.
DEMO_OPS = (("upper",), ("drop_first", 1))
DEMO_INSTRUCTION = (
    "In this task you are given a list of words separated by spaces. Write every word in capital letters. Then "
    "remove the first 1 words."
)
# The instruction changes every input (an unchanged input would be scored right by a model that copies its input).
DEMO_INPUTS = ("cat dog sun", "apple moon boat fish", "bird cup tree", "key star map rain ship", "hat lion cake")


def _adapter_demo(model_dir: Path, adapter_dir: Path) -> dict:
    """Generates an adapter for an instruction outside the train split (the dev task [`DEMO_TASK`]), saves it,
    reloads it and runs it on 5 inputs; records each prediction beside its expected output, and the exact match."""
    from ..data.prompts import format_instruction, format_student_input
    from ..data.synthetic import chain_output
    from ..modeling.adapter import GeneratedAdapter

    model = TagiModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.generate_adapter(format_instruction(DEMO_INSTRUCTION), tokenizer=tokenizer).save_pretrained(adapter_dir)
    adapter = GeneratedAdapter.from_pretrained(adapter_dir)
    enc = tokenizer([format_student_input(x) for x in DEMO_INPUTS], padding=True, return_tensors="pt")
    ids = model.generate(**enc, adapter=adapter, max_new_tokens=24)
    outputs = tokenizer.batch_decode(ids, skip_special_tokens=True)
    expected = [chain_output(DEMO_OPS, x) for x in DEMO_INPUTS]
    rows = [{"input": i, "output": o.strip(), "expected": e} for i, o, e in zip(DEMO_INPUTS, outputs, expected)]
    exact = 100.0 * sum(r["output"] == r["expected"] for r in rows) / len(rows)
    return {"instruction": DEMO_INSTRUCTION, "adapter_dir": str(adapter_dir), "examples": rows, "exact_match": exact}


def format_demo_table(summary: dict) -> str:
    """The demo's results as a Markdown table (ROUGE-L, EM, strict EM on the held-out test tasks)."""
    lines = ["| method | ROUGE-L | EM | strict EM | n |", "|---|---|---|---|---|"]
    for name, m in summary["results"].items():
        lines.append(
            f"| {name} | {m['rougeL']:.1f} | {m['exact_match']:.1f} | {m['exact_match_strict']:.1f} | {m['n']} |"
        )
    fit = summary.get("train_tasks_unseen_instances", {})
    if fit:
        lines += [
            "",
            "Fit: unseen instances of train tasks",
            "| model | ROUGE-L | EM | ran to limit | n |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {m['rougeL']:.1f} | {m['exact_match']:.1f} | {m['ran_to_limit']} | {m['n']} |"
            for name, m in fit.items()
        ]
    demo = summary["adapter_demo"]
    lines += [
        "",
        f"Generated adapter for a held-out instruction (a dev task, never trained on): {demo['instruction']}",
        "| input | prediction | expected |",
        "|---|---|---|",
    ]
    lines += [f"| {r['input']} | {r['output']} | {r['expected']} |" for r in demo["examples"]]
    right = sum(r["output"] == r["expected"] for r in demo["examples"])
    lines += [f"Right on {right} of {len(demo['examples'])} (copying the input: 0: the instruction changes each)."]
    targets = summary.get("targets", {})
    if targets:
        names = {
            "fit_exact_match": "TAGI, EM on unseen instances of train tasks",
            "fit_drop_other_instruction": "drop of that EM with another task's instruction (points)",
            "showcase_right": "showcase inputs right (of 5)",
        }
        lines += ["", "Targets", "| target | measured | met |", "|---|---|---|"]
        lines += [
            f"| {names.get(k, k)} >= {t['target']:g} | {t['measured']:.1f} | {'yes' if t['met'] else 'no'} |"
            for k, t in targets.items()
        ]
    if "seconds" in summary:
        machine = summary["machine"]
        lines += [
            "",
            f"Ran in {summary['seconds'] / 60:.1f} min on {machine['cpu_cores']} CPU cores ({machine['device']}).",
        ]
    return "\n".join(lines)
