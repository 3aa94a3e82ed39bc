import json

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

import tagi_hf.teachers.baseline as baseline_module
import tagi_hf.teachers.lora_teachers as teachers_module
from tagi_hf import GeneratedAdapter, TagiConfig, TagiModel
from tagi_hf.data import TagiDataCollator, load_sni, train_tokenizer, write_synthetic_suite
from tagi_hf.teachers import (
    TeacherBank,
    teacher_target_modules,
    train_lora_teachers,
)
from tagi_hf.teachers.baseline import train_multitask_baseline
from tiny import tiny_text_config

FAST = dict(max_steps=8, learning_rate=1e-2, max_input_length=64, max_target_length=32)


pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dataset:
    """32 synthetic instances: 2 tasks of category `Synthetic -> append`, 2 of `Synthetic -> remove`."""
    train = load_sni(write_synthetic_suite(tmp_path_factory.mktemp("suite"), seed=0, instances_per_task=8))["train"]
    by_category = {}
    for task, category in zip(train["task"], train["category"]):
        by_category.setdefault(category, [])
        if task not in by_category[category]:
            by_category[category].append(task)
    keep = set(by_category["Synthetic -> append"][:2] + by_category["Synthetic -> remove"][:2])
    return train.select([i for i, task in enumerate(train["task"]) if task in keep])


@pytest.fixture(scope="module")
def tokenizer(data) -> PreTrainedTokenizerFast:
    return train_tokenizer([f"{r['definition']} {r['input']} {r['outputs'][0]}" for r in data], vocab_size=300)


@pytest.fixture(scope="module")
def tasks(data) -> list[str]:
    return sorted(set(data["task"]))


def make_backbone(tokenizer, seed: int = 0, **overrides) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(tiny_text_config(vocab_size=len(tokenizer), **overrides)).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, tokenizer, tasks):
    """Teachers for the first two tasks, trained from an in-memory backbone; also the backbone's state before."""
    backbone = make_backbone(tokenizer)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    out = tmp_path_factory.mktemp("bank")
    bank = train_lora_teachers(
        backbone, tokenizer, data, out, rank=4, keys=tasks[:2], base_model_name_or_path="tiny-t5", **FAST
    )
    return bank, backbone, before


@torch.no_grad()
def seq2seq_loss(model, tokenizer, rows, source: str = "student") -> float:
    batch = TagiDataCollator(tokenizer)(list(rows))
    prefix = "teacher_" if source == "teacher" else ""
    inputs = {"input_ids": batch[f"{prefix}input_ids"], "attention_mask": batch[f"{prefix}attention_mask"]}
    return model.eval()(**inputs, labels=batch["labels"]).loss.item()


def rows_of(data, task):
    return data.select([i for i, t in enumerate(data["task"]) if t == task])


def test_teachers_reduce_the_loss_of_their_task(trained, data, tokenizer, tasks):
    bank, backbone, _ = trained
    assert bank.keys == tasks[:2] and bank.group_by == "task"
    for task in tasks[:2]:
        rows = rows_of(data, task)
        before = seq2seq_loss(backbone, tokenizer, rows)
        teacher = PeftModel.from_pretrained(make_backbone(tokenizer), bank.adapter_path(task))
        after = seq2seq_loss(teacher, tokenizer, rows)
        # A margin with room, not a value from one run: rounding moves these losses by far less than 1e-3 between
        # CPUs, and the drop is ~1.2 nat (seen on an Intel Xeon), over 10x the 0.1 asked.
        assert after < before - 0.1, (task, before, after)


def test_saved_adapter_is_a_peft_directory_matching_the_bank_factors(trained, data, tokenizer, tasks):
    bank, backbone, _ = trained
    path = bank.adapter_path(tasks[0])
    config = json.loads((path / "adapter_config.json").read_text())
    names = teacher_target_modules(backbone.config)
    assert len(names) == 2 * 2 + 2 * 4  # q, v of encoder self (2 layers), decoder self and cross (2 layers)
    assert config["base_model_name_or_path"] == "tiny-t5" and config["task_type"] == "SEQ_2_SEQ_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and sorted(config["target_modules"]) == sorted(names)
    weights = load_file(path / "adapter_model.safetensors")
    assert set(weights) == {f"base_model.model.{n}.lora_{s}.weight" for n in names for s in "AB"}

    batch = TagiDataCollator(tokenizer, teacher_inputs=False)(list(rows_of(data, tasks[0]))[:4])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        expected = PeftModel.from_pretrained(make_backbone(tokenizer), path).eval()(**inputs).logits
        factors = bank.lora_factors([tasks[0]], dtype=torch.float64)
        by_hand = make_backbone(tokenizer)
        for name, (A, B, scaling) in factors.items():  # W x + s B A x
            hook = lambda m, args, out, A=A[0].float(), B=B[0].float(), s=scaling: out + s * args[0] @ A.T @ B.T  # noqa: E731
            by_hand.get_submodule(name).register_forward_hook(hook)
        logits = by_hand(**inputs).logits
    assert factors[names[0]].A.dtype == torch.float64 and factors[names[0]].scaling == 2.0
    assert (logits - expected).abs().max() < 1e-5
    assert not torch.allclose(logits, make_backbone(tokenizer)(**inputs).logits, atol=1e-3)  # the teacher matters


def test_backbone_is_unchanged_by_training_teachers(trained):
    _, backbone, before = trained
    after = backbone.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(type(m).__module__.startswith("peft") for m in backbone.modules())  # no LoRA layer left
    assert not hasattr(backbone, "peft_config") and all(p.requires_grad for p in backbone.parameters())


def test_teachers_do_not_contaminate_each_other(trained, tmp_path, data, tokenizer, tasks):
    bank, _, _ = trained  # trained tasks[0] first, then tasks[1] on the same working backbone
    alone = train_lora_teachers(make_backbone(tokenizer), tokenizer, data, tmp_path, rank=4, keys=[tasks[1]], **FAST)
    shared, single = bank.lora_factors([tasks[1]]), alone.lora_factors([tasks[1]])
    assert all(torch.equal(shared[n].A, single[n].A) and torch.equal(shared[n].B, single[n].B) for n in shared)


def test_group_by_category_trains_one_teacher_per_category(tmp_path, data, tokenizer):
    (tmp_path / "backbone").mkdir()
    make_backbone(tokenizer).save_pretrained(tmp_path / "backbone")
    backbone = str(tmp_path / "backbone")
    bank = train_lora_teachers(backbone, tokenizer, data, tmp_path / "bank", group_by="category", max_steps=1)
    assert bank.keys == ["Synthetic -> append", "Synthetic -> remove"] and bank.group_by == "category"
    assert bank.key_for("synth_append_boat", "Synthetic -> append") == "Synthetic -> append"
    index = json.loads((tmp_path / "bank" / "teachers.json").read_text())
    assert index["group_by"] == "category" and index["base_model_name_or_path"] == backbone
    for key in bank.keys:
        path = bank.adapter_path(key)
        assert path.parent == tmp_path / "bank" and not set(path.name) & set(" >")
        info = json.loads((path / "tagi_teacher.json").read_text())
        assert info["key"] == key and info["num_instances"] == 16
        assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == backbone
    assert GeneratedAdapter.from_pretrained(bank.adapter_path(bank.keys[0])).rank == 8  # defaults: r 8, alpha 16


def test_rerunning_skips_teachers_already_saved(tmp_path, data, tokenizer, tasks, monkeypatch):
    calls = []
    train = teachers_module.train_seq2seq
    monkeypatch.setattr(
        teachers_module, "train_seq2seq", lambda *a, **k: calls.append(a[2]["task"][0]) or train(*a, **k)
    )
    backbone = make_backbone(tokenizer)
    train_lora_teachers(backbone, tokenizer, data, tmp_path, keys=tasks[:1], max_steps=1)
    weights = tmp_path / tasks[0] / "adapter_model.safetensors"
    mtime = weights.stat().st_mtime_ns
    bank = train_lora_teachers(backbone, tokenizer, data, tmp_path, keys=tasks[:2], max_steps=1)
    assert calls == tasks[:2] and weights.stat().st_mtime_ns == mtime and bank.keys == tasks[:2]
    with pytest.raises(ValueError, match="group_by='task'"):
        train_lora_teachers(backbone, tokenizer, data, tmp_path, group_by="category", max_steps=1)
    with pytest.raises(ValueError, match="task `nope`"):
        train_lora_teachers(backbone, tokenizer, data, tmp_path, keys=["nope"], max_steps=1)


def write_bank(path, teachers: dict[str, GeneratedAdapter], group_by: str = "task") -> TeacherBank:
    for key, adapter in teachers.items():
        adapter.save_pretrained(path / key)
    index = {"group_by": group_by, "base_model_name_or_path": None, "teachers": {k: k for k in teachers}}
    (path / "teachers.json").write_text(json.dumps(index))
    return TeacherBank.from_directory(path)


def random_adapter(names: list[str], rank: int, alpha: float, d_in: int = 32, d_out: int = 32) -> GeneratedAdapter:
    factors = {name: (torch.randn(rank, d_in), torch.randn(d_out, rank)) for name in names}
    return GeneratedAdapter(lora_factors=factors, lora_alpha=alpha)


def test_lora_factors_stack_rows_and_pad_ranks(tmp_path):
    names = ["encoder.block.0.layer.0.SelfAttention.q", "decoder.block.0.layer.1.EncDecAttention.v"]
    bank = write_bank(tmp_path, {"a": random_adapter(names, 4, 8.0), "b": random_adapter(names, 2, 8.0)})
    factors = bank.lora_factors(["a", "b", "a"], dtype=torch.float64)
    A, B, scaling = factors[names[1]]
    assert A.shape == (3, 4, 32) and B.shape == (3, 32, 4) and A.dtype == torch.float64
    assert torch.equal(scaling, torch.tensor([2.0, 4.0, 2.0], dtype=torch.float64))  # alpha / r per row
    for row, key in enumerate(["a", "b", "a"]):
        expected = bank.teacher(key).delta(names[1]).double()
        assert torch.allclose(scaling[row] * B[row] @ A[row], expected, atol=1e-5)  # delta is float32
    assert bank.teacher("a") is bank.teacher("a")  # cached
    assert list(bank.lora_factors(["a"], modules=names[:1])) == names[:1]


def test_bank_errors_name_the_problem(tmp_path, tokenizer):
    backbone = make_backbone(tokenizer)
    names = teacher_target_modules(backbone.config)
    bank = write_bank(tmp_path, {"t": random_adapter(names, 4, 8.0)})
    bank.check_compatible(backbone)
    tagi = TagiModel(TagiConfig(text_config=tiny_text_config(vocab_size=len(tokenizer)), fusion="none"))
    bank.check_compatible(tagi)

    with pytest.raises(ValueError, match=rf"No teacher adapter for task `nope` in the teacher bank `{tmp_path}`"):
        bank.lora_factors(["t", "nope"])
    with pytest.raises(ValueError, match=r"`decoder.block.0.layer.1.EncDecAttention.v`.*\(32, 32\).*\(64, 32\)"):
        bank.check_compatible({"decoder.block.0.layer.1.EncDecAttention.v": (64, 32)})
    wider = make_backbone(tokenizer, d_model=48)
    with pytest.raises(ValueError, match=r"another backbone"):
        bank.check_compatible(wider)
    with pytest.raises(ValueError, match=r"no adapter for module `encoder.block.0.layer.0.SelfAttention.k`"):
        bank.check_compatible({"encoder.block.0.layer.0.SelfAttention.k": (32, 32)})
    four_layers = TagiModel(TagiConfig(text_config=tiny_text_config(num_layers=4), fusion="none"))
    with pytest.raises(ValueError, match=r"no adapter for module `encoder.block.2.layer.0.SelfAttention.q`"):
        bank.check_compatible(four_layers)
    with pytest.raises(ValueError, match="teachers.json"):
        TeacherBank.from_directory(tmp_path / "t")


def test_multitask_baseline_trains_saves_reloads_and_resumes(tmp_path, data, tokenizer, monkeypatch):
    backbone = make_backbone(tokenizer)
    out = tmp_path / "baseline"
    kwargs = dict(max_steps=4, learning_rate=3e-3, max_source_length=128, max_target_length=32, save_steps=2)

    def crash(*args, **kwargs):  # training finished, the final save fails: the checkpoints stay
        raise RuntimeError("crash")

    monkeypatch.setattr(baseline_module, "save_final_model", crash)
    with pytest.raises(RuntimeError):
        train_multitask_baseline(backbone, tokenizer, data, out, **kwargs)
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and not (out / "config.json").exists()
    monkeypatch.undo()

    resumed_from = []
    train = baseline_module.train_seq2seq
    monkeypatch.setattr(
        baseline_module,
        "train_seq2seq",
        lambda *a, **k: resumed_from.append(k["resume_from_checkpoint"]) or train(*a, **k),
    )
    kwargs["max_steps"] = 12
    assert train_multitask_baseline(backbone, tokenizer, data, out, **kwargs) == out
    assert resumed_from == [str(out / "checkpoints" / "checkpoint-4")] and not (out / "checkpoints").exists()
    reloaded = T5ForConditionalGeneration.from_pretrained(out)
    assert len(PreTrainedTokenizerFast.from_pretrained(out)) == len(tokenizer)
    before = seq2seq_loss(backbone, tokenizer, data, source="teacher")
    # A margin with room: rounding moves the loss by far less than 1e-3 between CPUs; the drop is ~1.4 nat (seen on
    # an Intel Xeon), almost 3x the 0.5 asked.
    assert seq2seq_loss(reloaded, tokenizer, data, source="teacher") < before - 0.5
    train_multitask_baseline(backbone, tokenizer, data, out, **kwargs)  # already trained: nothing to do
    assert len(resumed_from) == 1
