"""Crashes and bad numbers: resume after SIGKILL, incomplete checkpoints, atomic saves, non-finite losses."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import T5ForConditionalGeneration, TrainerCallback

import tagi_hf.modeling.adapter as adapter_module
from tagi_hf import TagiModel
from tagi_hf.data import TagiDataCollator, train_tokenizer, write_synthetic_suite
from tagi_hf.recipes.standin import standin_config
from tagi_hf.teachers import TeacherBank, train_lora_teachers
from tagi_hf.teachers.bank import TEACHER_INFO
from tagi_hf.training.arguments import TagiTrainingArguments
from tagi_hf.training.checkpoints import (
    RESUME_IF_ANY,
    is_complete_checkpoint,
    last_complete_checkpoint,
    resolve_resume_checkpoint,
)
from tagi_hf.training.run import train_tagi
from tagi_hf.training.trainer import TagiTrainer
from tiny import tiny_model, tiny_text_config, tiny_tokenizer

WORDS = "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat".split()
TASKS = {"rev": "reverse the order of words", "sort": "sort in alphabetical order", "first": "keep only first 2 words"}


def _rows(per_task: int = 8) -> list[dict]:
    rows = []
    for t, (task, definition) in enumerate(TASKS.items()):
        for i in range(per_task):
            words = [WORDS[(3 * i + 7 * t + k) % len(WORDS)] for k in range(3 + i % 3)]
            out = {"rev": words[::-1], "sort": sorted(words), "first": words[:2]}[task]
            rows.append({"id": f"{task}-{i}", "task": task, "category": task, "definition": definition,
                         "positive_examples": [], "input": " ".join(words), "outputs": [" ".join(out)]})  # fmt: skip
    return rows


def _args(out: Path, **kwargs) -> TagiTrainingArguments:
    defaults = dict(output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=4,
                    logging_steps=1, save_strategy="steps", save_steps=2, use_cpu=True, seed=0, data_seed=0,
                    disable_tqdm=True, lambda_kl=0.0, lambda_ins=0.0, report_to=[])  # fmt: skip
    return TagiTrainingArguments(**{**defaults, **kwargs})


def _trainer(out: Path, callbacks=(), **kwargs) -> TagiTrainer:
    model = tiny_model("cross_attention").train()
    return TagiTrainer(
        model=model,
        args=_args(out, **kwargs),
        train_dataset=Dataset.from_list(_rows()),
        data_collator=TagiDataCollator(tiny_tokenizer(), teacher_inputs=False),
        callbacks=list(callbacks),
    )


def _trainable(model: TagiModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------ which checkpoint
def test_only_checkpoints_with_a_readable_trainer_state_count(tmp_path):
    for step, state in [(2, "{}"), (4, '{"global_st'), (6, None)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert is_complete_checkpoint(tmp_path / "checkpoint-2")
    assert not is_complete_checkpoint(tmp_path / "checkpoint-4")  # cut short while writing the state
    assert not is_complete_checkpoint(tmp_path / "checkpoint-6")  # cut short before it
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert last_complete_checkpoint(tmp_path, before=2) is None
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-6"), "unused") == str(tmp_path / "checkpoint-2")
    assert resolve_resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert resolve_resume_checkpoint(RESUME_IF_ANY, str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    assert resolve_resume_checkpoint(False, str(tmp_path)) is None
    missing = str(tmp_path / "checkpoint-99")  # not there at all: passed on, for Trainer's own error
    assert resolve_resume_checkpoint(missing, str(tmp_path)) == missing
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resolve_resume_checkpoint(True, str(tmp_path / "checkpoint-x"))
    # "if-any" (what train_tagi passes): a fresh start where there is nothing complete to resume from.
    assert resolve_resume_checkpoint(RESUME_IF_ANY, str(tmp_path / "checkpoint-x")) is None
    assert resolve_resume_checkpoint(RESUME_IF_ANY, str(tmp_path / "not-there")) is None
    (tmp_path / "only-cut-short" / "checkpoint-3").mkdir(parents=True)
    assert resolve_resume_checkpoint(RESUME_IF_ANY, str(tmp_path / "only-cut-short")) is None
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resolve_resume_checkpoint(True, str(tmp_path / "only-cut-short"))


@pytest.mark.usefixtures("single_thread")  # bit for bit, as in test_trainer's resume test
def test_resuming_from_an_incomplete_checkpoint_falls_back_to_the_last_complete_one(tmp_path):
    full = _trainer(tmp_path / "full")
    full.train()
    crashed = _trainer(tmp_path / "crashed")
    crashed.train()
    # A kill while checkpoint-4 was being written: its trainer_state.json (written last) is missing.
    (tmp_path / "crashed" / "checkpoint-4" / "trainer_state.json").unlink()
    resumed = _trainer(tmp_path / "crashed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "crashed" / "checkpoint-4"))  # what get_last_checkpoint says
    assert resumed.state.global_step == 4
    expected = _trainable(full.model)
    for name, value in _trainable(resumed.model).items():
        assert torch.equal(value, expected[name]), name


# ------------------------------------------------------------------------------------------ non-finite loss
class Poison(TrainerCallback):
    """Sets a frozen backbone weight to `value` when step `step` begins (after the previous step's checkpoint)."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                model.backbone.shared.weight[:, 0] = self.value


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_loss_stops_at_its_step_and_the_last_checkpoint_stays_good(tmp_path, value):
    trainer = _trainer(tmp_path, callbacks=[Poison(3, value)], max_steps=6, save_steps=2)
    with pytest.raises(FloatingPointError, match=r"Non-finite training loss at step 3 \(loss_pred=nan") as error:
        trainer.train()
    assert str(tmp_path) in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # nothing saved after the bad step
    loaded = TagiModel.from_pretrained(tmp_path / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in loaded.parameters())
    # The bad step changed no trainable weight: they are still those of the checkpoint.
    saved = _trainable(loaded)
    for name, current in _trainable(trainer.model).items():
        assert torch.equal(current, saved[name]), name


# ------------------------------------------------------------------------------------------ atomic final saves
def test_train_tagi_final_save_is_all_or_nothing(tmp_path, monkeypatch):
    tokenizer = tiny_tokenizer()
    out = tmp_path / "tagi"
    model = tiny_model("none")
    train_tagi(model, tokenizer, Dataset.from_list(_rows(2)), out, _args(tmp_path / "work", max_steps=2))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "training_log.json"} <= set(before)

    def crash(*args, **kwargs):  # the model is already written when the tokenizer fails
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", crash)
    for target in (out, tmp_path / "fresh"):
        with pytest.raises(OSError, match="disk full"):
            args = _args(tmp_path / f"work-{target.name}", max_steps=2)
            train_tagi(tiny_model("none"), tokenizer, Dataset.from_list(_rows(2)), target, args)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous result, untouched
    assert not (tmp_path / "fresh").exists()  # no directory that would load as a model without its tokenizer
    assert _leftovers(tmp_path) == []
    # The work directory kept the checkpoints: rerunning resumes (at the end already) and only saves.
    monkeypatch.undo()
    train_tagi(tiny_model("none"), tokenizer, Dataset.from_list(_rows(2)), tmp_path / "fresh",
               _args(tmp_path / "work-fresh", max_steps=2))  # fmt: skip
    assert TagiModel.from_pretrained(tmp_path / "fresh").config.fusion == "none"


def test_train_tagi_resumes_from_the_newest_complete_checkpoint_or_starts_fresh(tmp_path):
    tokenizer, data = tiny_tokenizer(), Dataset.from_list(_rows(2))
    train_tagi(tiny_model("none"), tokenizer, data, tmp_path / "first", _args(tmp_path / "work", max_steps=2))
    first = json.loads((tmp_path / "first" / "training_log.json").read_text())
    assert [entry["step"] for entry in first if "loss" in entry] == [1, 2]  # fresh: no checkpoint to resume from
    # A longer run in the same work folder continues from checkpoint-2: only steps 3 and 4 are trained.
    train_tagi(tiny_model("none"), tokenizer, data, tmp_path / "longer", _args(tmp_path / "work", max_steps=4))
    longer = json.loads((tmp_path / "longer" / "training_log.json").read_text())
    assert [entry["step"] for entry in longer if "loss" in entry] == [1, 2, 3, 4]  # the log carries on
    assert [e["loss"] for e in longer if "loss" in e][:2] == [e["loss"] for e in first if "loss" in e]
    # resume=False starts over even though checkpoints are there.
    train_tagi(
        tiny_model("none"), tokenizer, data, tmp_path / "over", _args(tmp_path / "work", max_steps=4), resume=False
    )
    over = json.loads((tmp_path / "over" / "training_log.json").read_text())
    assert [entry["step"] for entry in over if "loss" in entry] == [1, 2, 3, 4]


def test_a_teacher_cut_short_while_saving_is_absent_and_retrained(tmp_path, monkeypatch):
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    backbone = T5ForConditionalGeneration(tiny_text_config(vocab_size=len(tokenizer)))
    data = Dataset.from_list(_rows(4))
    kwargs = dict(rank=2, max_steps=1, max_input_length=16, max_target_length=8, per_device_train_batch_size=4)
    write_text, calls = Path.write_text, []

    def crash_on_second_info(self, *args, **kw):
        if self.name == TEACHER_INFO:
            calls.append(self)
            if len(calls) == 2:  # the second teacher's last file: its PEFT weights are already on disk
                raise OSError("disk full")
        return write_text(self, *args, **kw)

    monkeypatch.setattr(Path, "write_text", crash_on_second_info)
    with pytest.raises(OSError, match="disk full"):
        train_lora_teachers(backbone, tokenizer, data, tmp_path / "bank", **kwargs)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == ["first", "teachers.json"]  # no half teacher
    assert TeacherBank.from_directory(tmp_path / "bank").keys == ["first"]
    bank = train_lora_teachers(backbone, tokenizer, data, tmp_path / "bank", **kwargs)  # picks up where it stopped
    assert bank.keys == ["first", "rev", "sort"]
    assert all(bank.teacher(key).rank == 2 for key in bank.keys)


def test_a_first_adapter_save_that_fails_leaves_no_directory(tmp_path, monkeypatch):
    adapter = tiny_model("cross_attention").generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    save_file = adapter_module.save_file

    def crash_on_states(tensors, path, **kwargs):  # the LoRA weights are written, the instruction states are not
        if Path(path).name == adapter_module.INSTRUCTION_STATES:
            raise OSError("disk full")
        return save_file(tensors, path, **kwargs)

    monkeypatch.setattr(adapter_module, "save_file", crash_on_states)
    with pytest.raises(OSError, match="disk full"):
        adapter.save_pretrained(tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_load_adapters_ignores_a_temporary_folder_left_by_a_kill(tmp_path):
    from tagi_hf.hub import load_adapters

    adapter = tiny_model("none").generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    adapter.save_pretrained(tmp_path / "out" / "adapter-000")
    adapter.save_pretrained(tmp_path / "out" / ".adapter-001.tmp-x1y2")  # as atomic_directory leaves it on SIGKILL
    (tmp_path / "out" / ".adapter-001.tmp-x1y2" / "tagi_adapter.json").unlink()  # killed before its last file
    assert list(load_adapters(tmp_path / "out")) == ["adapter-000"]


# ------------------------------------------------------------------------------------------ SIGKILL and resume
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("crash"))


def build_workspace(root: Path) -> Path:
    """A tiny T5 with its tokenizer (`t5`), a stage-1-like TagiModel around it (`s1`) and a 3-task SNI folder (as
    tests/test_cli_train.py builds them)."""
    suite = write_synthetic_suite(root / "sni", seed=0, instances_per_task=8)
    tasks = ["synth_reverse", "synth_sort", "synth_first_2"]
    (suite / "splits" / "default" / "train_tasks.txt").write_text("\n".join(tasks) + "\n")
    texts = [json.loads((suite / "tasks" / f"{t}.json").read_text())["Definition"] for t in tasks] + WORDS
    tokenizer = train_tokenizer(texts * 3, vocab_size=200)
    torch.manual_seed(0)
    T5ForConditionalGeneration(standin_config(len(tokenizer), d_model=32, num_layers=2)).save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    torch.manual_seed(0)
    TagiModel.from_backbone(str(root / "t5"), lora_rank=2, lora_alpha=4).save_pretrained(root / "s1")
    tokenizer.save_pretrained(root / "s1")
    return root


def _train_command(workspace: Path, out: Path) -> list[str]:
    flags = {"--model": workspace / "s1", "--data-dir": workspace / "sni", "--out": out, "--lambda-kl": 0,
             "--lambda-ins": 0, "--max-steps": 150, "--save-steps": 10, "--batch-size": 4,
             "--max-train-instances-per-task": 8, "--logging-steps": 1, "--seed": 3}  # fmt: skip
    return [sys.executable, "-m", "tagi_hf.cli.main", "train", *(str(x) for kv in flags.items() for x in kv)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_rerun_gives_the_uninterrupted_weights(workspace, tmp_path):
    """Tolerance: none. Resuming restores weights, optimizer, scheduler, RNG states and the data position, and on
    one CPU thread, with the same files loaded the same way (the same memory layout), the arithmetic is the same, so
    the final weights are bitwise those of a run never interrupted."""
    reference = subprocess.run(_train_command(workspace, tmp_path / "ref"), env=_env(), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out, work = tmp_path / "run", tmp_path / "run.work"
    with (tmp_path / "killed.log").open("w") as log:
        process = subprocess.Popen(_train_command(workspace, out), env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not (work / "checkpoint-20" / "trainer_state.json").exists():
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL and not out.exists()
    newest = last_complete_checkpoint(work)
    assert newest is not None and int(newest.rsplit("-", 1)[1]) < 150
    # As if the kill had also hit while the newest checkpoint was being written: resume must skip it.
    Path(newest, "trainer_state.json").unlink()
    resumed_from = last_complete_checkpoint(work)
    steps_left = 150 - int(resumed_from.rsplit("-", 1)[1])

    rerun = subprocess.run(_train_command(workspace, out), env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "is incomplete" in rerun.stderr
    assert (rerun.stdout + rerun.stderr).count("'loss_pred'") == steps_left  # it resumed, it did not start over
    expected, got = load_file(tmp_path / "ref" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    """Temporary names come from mkstemp/mkdtemp (0600/0700); the final outputs must be readable like plain writes."""
    import os

    from tagi_hf.modeling.file_utils import atomic_directory, atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
