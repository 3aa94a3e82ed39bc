import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import T5ForConditionalGeneration, TrainerCallback

from tagi_hf import TagiModel
from tagi_hf.data import PretrainingCollator, TagiDataCollator
from tagi_hf.training.arguments import TagiTrainingArguments
from tagi_hf.training.losses import LoraFactors
from tagi_hf.training.trainer import TagiTrainer
from tiny import tiny_model, tiny_tokenizer

WORDS = "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat".split()
TASKS = {
    "t_rev": "reverse the order of words",
    "t_sort": "sort in alphabetical order",
    "t_first": "keep only first 2 words",
}


def _rows(n_per_task: int = 8, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for task, definition in TASKS.items():
        for i in range(n_per_task):
            words = [
                WORDS[j]
                for j in torch.randint(0, len(WORDS), (int(torch.randint(3, 6, (1,), generator=g)),), generator=g)
            ]
            out = {"t_rev": words[::-1], "t_sort": sorted(words), "t_first": words[:2]}[task]
            rows.append(
                {
                    "id": f"{task}-{i}",
                    "task": task,
                    "category": "cat_" + task[-1],
                    "definition": definition,
                    "positive_examples": [],
                    "input": " ".join(words),
                    "outputs": [" ".join(out)],
                }
            )
    return rows


class FakeBank:
    """A duck-typed teacher bank: one fixed random LoRA per task."""

    group_by = "task"

    def __init__(self, model: TagiModel, rank: int = 2):
        g = torch.Generator().manual_seed(7)
        self.factors = {
            task: {
                name: LoraFactors(
                    torch.randn(rank, m.in_features, generator=g) * 0.1,
                    torch.randn(m.out_features, rank, generator=g) * 0.1,
                    2.0,
                )
                for name, m in model._lora_modules.items()
            }
            for task in TASKS
        }
        self.checked = False

    def key_for(self, task, category):
        return task

    def check_compatible(self, backbone):
        self.checked = True

    def lora_factors(self, keys, device=None, dtype=None):
        names = self.factors[keys[0]]
        return {
            n: LoraFactors(
                torch.stack([self.factors[k][n].A for k in keys]).to(device, dtype),
                torch.stack([self.factors[k][n].B for k in keys]).to(device, dtype),
                2.0,
            )
            for n in names
        }


def _args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        lambda_kl=0.5,
        lambda_ins=0.5,
    )
    defaults.update(kwargs)
    return TagiTrainingArguments(**defaults)


def _trainer(tmp_path, model=None, **kwargs):
    model = model or tiny_model("cross_attention")
    model.train()
    teacher = T5ForConditionalGeneration(model.config.text_config).to(model.dtype).eval()
    args = _args(tmp_path, **kwargs)
    return TagiTrainer(
        model=model,
        args=args,
        teacher_model=teacher,
        teacher_bank=FakeBank(model),
        train_dataset=Dataset.from_list(_rows()),
        eval_dataset=Dataset.from_list(_rows(2, seed=1)),
        data_collator=TagiDataCollator(tiny_tokenizer(), max_input_length=16, max_target_length=8),
    )


def test_all_loss_terms_are_logged_and_training_moves_only_generator_and_fusion(tmp_path):
    trainer = _trainer(tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        assert {"loss_pred", "loss_kl", "loss_ins"} <= set(entry)
        expected = entry["loss_pred"] + 0.5 * entry["loss_kl"] + 0.5 * entry["loss_ins"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-3)
    for name, param in trainer.model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (not name.startswith("backbone.")), name
    assert trainer.teacher_bank.checked


def test_zero_weight_disables_a_term_and_its_teacher(tmp_path):
    model = tiny_model("none")
    args = _args(tmp_path, lambda_kl=0.0, lambda_ins=0.0, max_steps=2)
    trainer = TagiTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_rows()),
        data_collator=TagiDataCollator(tiny_tokenizer(), max_input_length=16, max_target_length=8),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all("loss_kl" not in e and "loss_ins" not in e for e in logs)
    assert all(e["loss"] == pytest.approx(e["loss_pred"], rel=1e-4) for e in logs)


def test_missing_teachers_are_refused(tmp_path):
    model = tiny_model("none")
    with pytest.raises(ValueError, match="`lambda_ins` > 0 needs a `teacher_bank`"):
        TagiTrainer(model=model, args=_args(tmp_path), train_dataset=Dataset.from_list(_rows()))
    trainer = TagiTrainer(
        model=model,
        args=_args(tmp_path, lambda_ins=0.0),
        train_dataset=Dataset.from_list(_rows()),
        data_collator=TagiDataCollator(tiny_tokenizer()),
    )
    with pytest.raises(ValueError, match="`lambda_kl` > 0 needs a `teacher_model`"):
        trainer.train()


PAPER_GENERATOR = dict(instruction_encoder="backbone", instruction_pooling="mean")


@pytest.mark.parametrize("generator", ["paper", "default"])
@pytest.mark.parametrize(("lambda_kl", "lambda_ins"), [(0.0, 0.0), (0.5, 0.5)])
def test_gradient_accumulation_is_exact(tmp_path, lambda_kl, lambda_ins, generator):
    grads = []
    for batch_size, steps in ((8, 1), (2, 4)):
        trainer = _trainer(
            tmp_path,
            model=tiny_model("cross_attention", **(PAPER_GENERATOR if generator == "paper" else {})).double(),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=steps,
            max_steps=1,
            learning_rate=0.0,
            lambda_kl=lambda_kl,
            lambda_ins=lambda_ins,
            max_grad_norm=0.0,
        )
        trainer.teacher_model.double()
        trainer.train_dataset = Dataset.from_list(_rows()[:8])  # one optimiser step sees the same 8 rows
        captured = {}

        def capture(optimizer, *args, captured=captured, trainer=trainer, **kwargs):
            captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

        trainer.create_optimizer_and_scheduler(num_training_steps=1)
        trainer.optimizer.register_step_pre_hook(capture)
        trainer.train()
        grads.append(captured)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    # A trainable instruction encoder is a T5 encoder, whose T5LayerNorm computes in float32 even in a float64 model:
    # rows sharing an instruction sum their gradients before that rounding, so micro-batches differ at float32 level.
    rtol, atol = (1e-9, 1e-12) if generator == "paper" else (1e-5, 1e-6)  # a wrong scale is off by >= 25 %
    for name in grads[0]:
        tolerance = (rtol, atol) if name.startswith("instruction_encoder.") else (1e-9, 1e-12)
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=tolerance[0], atol=tolerance[1])


def test_predict_with_generate_and_eval_loss(tmp_path):
    # float64: greedy tokens of a padded batch of 3 are compared with one row alone, whose sums run in another order;
    # in float32 that can flip a near tie between two tokens.
    model = tiny_model("cross_attention").double()
    trainer = _trainer(
        tmp_path, model, predict_with_generate=True, generation_max_length=8, per_device_eval_batch_size=3, max_steps=1
    )
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0
    output = trainer.predict(trainer.eval_dataset, max_new_tokens=5)
    assert output.predictions.shape[0] == 6
    model = trainer.model.eval()
    batch = trainer.data_collator(trainer.eval_dataset.select([0]).to_list())
    expected = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        instruction_input_ids=batch["instruction_input_ids"],
        instruction_attention_mask=batch["instruction_attention_mask"],
        max_new_tokens=5,
    )
    width = expected.shape[1]
    assert torch.equal(torch.as_tensor(output.predictions[0, :width]), expected[0])


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.mark.usefixtures("single_thread")
def test_checkpoint_resume_continues_to_the_same_weights(tmp_path):
    """Bit for bit: on one thread every sum runs in one order, and resuming copies the saved weights and optimizer
    state into the parameters and into fresh memory (`load_state_dict`, `torch.load`), so steps 3-4 repeat the
    uninterrupted run's computation on the same memory layout."""
    full = _trainer(tmp_path / "full", max_steps=4, save_strategy="steps", save_steps=2)
    full.train()
    resumed = _trainer(tmp_path / "part", max_steps=4, save_strategy="steps", save_steps=2)
    resumed.add_callback(StopAt(2))  # an interruption right after the first checkpoint
    resumed.train()
    checkpoint = tmp_path / "part" / "out" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists()
    again = _trainer(tmp_path / "part", max_steps=4, save_strategy="steps", save_steps=2)
    again.train(resume_from_checkpoint=str(checkpoint))
    for (name, p), (_, q) in zip(full.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(q, p), name
    loaded = TagiModel.from_pretrained(tmp_path / "part" / "out" / "checkpoint-4")
    assert loaded.trainable_parameters_report()["backbone"] == 0
    state = json.loads((tmp_path / "part" / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_pretraining_collator_splits_consecutive_segments():
    tok = tiny_tokenizer()
    text = " ".join(WORDS)
    collator = PretrainingCollator(tok, min_segment_length=3, seed=1)
    batch = collator([{"text": text}, {"text": "apple bird"}])  # the short text is skipped
    assert batch["input_ids"].shape[0] == 1
    a = batch["instruction_input_ids"][0][batch["instruction_attention_mask"][0] == 1][:-1]
    b = batch["input_ids"][0][batch["attention_mask"][0] == 1][:-1]
    c = batch["labels"][0][batch["labels"][0] != -100][:-1]
    assert torch.equal(torch.cat([a, b, c]), torch.tensor(tok(text, add_special_tokens=False)["input_ids"]))
    assert min(len(a), len(b), len(c)) >= 3
    with pytest.raises(ValueError, match="No text in the batch has the 9 tokens"):
        collator([{"text": "apple bird"}])
    with pytest.raises(ValueError, match="`min_segment_length` must be >= 1"):
        PretrainingCollator(tok, min_segment_length=0)


def test_stage1_pretraining_runs_with_the_same_model_class(tmp_path):
    model = tiny_model("cross_attention", perturb=False)
    texts = [{"text": " ".join(WORDS[i:] + WORDS[:i])} for i in range(16)]
    held_out = PretrainingCollator(tiny_tokenizer(), min_segment_length=3, seed=5)(texts)  # a fixed batch, same kind
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    with torch.no_grad():
        start = model(**held_out).loss.item()
    args = _args(tmp_path, lambda_kl=0.0, lambda_ins=0.0, max_steps=3, learning_rate=1e-3)
    trainer = TagiTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(texts),
        data_collator=PretrainingCollator(tiny_tokenizer(), min_segment_length=3),
    )
    trainer.train()
    assert trainer.model is model  # stage 1 trains the TagiModel itself
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 3
    for entry in logged:  # L_pred only: no teacher terms
        assert math.isfinite(entry["loss_pred"]) and entry["loss"] == pytest.approx(entry["loss_pred"], rel=1e-6)
        assert "loss_kl" not in entry and "loss_ins" not in entry
    with torch.no_grad():
        end = model.eval()(**held_out).loss.item()
    assert end < start - 0.2  # measured 4.74 -> 4.04 on this batch
    for name, param in model.named_parameters():
        if param.requires_grad:  # the generator, the fusion and the instruction encoder learned
            assert not torch.equal(param, before[name]), name
        else:  # the frozen backbone did not move
            assert name.startswith("backbone.") and torch.equal(param, before[name]), name
    assert model.trainable_parameters_report()["backbone"] == 0


def test_the_teacher_is_prepared_for_evaluation_as_accelerate_expects(tmp_path, monkeypatch):
    """One process: moved to the device, frozen, in eval mode. Under FSDP: `prepare_model(evaluation_mode=True)`
    (sharded like the student, never DDP-wrapped), not a bare `.to(device)`."""
    trainer = _trainer(tmp_path)
    teacher = trainer.teacher_model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert next(teacher.parameters()).device == trainer.args.device
    calls = []
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    monkeypatch.setattr(trainer.accelerator, "prepare_model", lambda m, **k: calls.append(k) or m)
    fresh = T5ForConditionalGeneration(teacher.config).train()
    prepared = trainer._prepare_teacher(fresh)
    assert calls == [{"evaluation_mode": True}]
    assert prepared is fresh and not prepared.training and not any(p.requires_grad for p in prepared.parameters())
