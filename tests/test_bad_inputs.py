"""Bad inputs not covered elsewhere; each error names the problem. Covered already (not repeated here):
empty instruction, lora_rank <= 0 and unknown fusion, tokenizer larger than the embedding, adapters of another
d_model or layer count (test_modeling_tagi.py); SNI files with invalid JSON or missing keys, split naming a missing
task (test_data_sni.py); a missing teacher, a teacher of another backbone (test_teachers.py); push without a token
(test_hub.py); `evaluate --max-instances-per-task` <= 0 (test_cli.py)."""

import pytest
import torch
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from tagi_hf import GeneratedAdapter, TagiModel
from tagi_hf.cli.main import main
from tagi_hf.data import TagiDataCollator
from tagi_hf.teachers import TeacherBank
from tiny import tiny_model, tiny_tokenizer

LONG = ("apple " * 20000)[:100_000]  # 100,000 characters, 16,667 words


# ------------------------------------------------------------------------------------------ a huge instruction
def test_a_100k_character_instruction_is_truncated_with_a_warning_and_bounded_work():
    model = tiny_model("cross_attention")  # max_instruction_length: the default, 1024 tokens
    lengths = []
    record = lambda module, args, kwargs: lengths.append(tuple(kwargs["input_ids"].shape))  # noqa: E731
    model.instruction_encoder.register_forward_pre_hook(record, with_kwargs=True)  # what reads the instruction
    logging.set_verbosity_warning()
    with CaptureLogger(logging.get_logger("tagi_hf.modeling.instructions")) as captured:
        adapters = model.generate_adapter([LONG, "sort the words"], tokenizer=tiny_tokenizer())
    assert "longer than `max_instruction_length`=1024 tokens are truncated" in captured.out
    assert lengths == [(2, 1024)]  # the encoder (quadratic in length) never sees more than the limit
    assert adapters[0].instruction_states.shape == (1024, 32) and adapters[0].instruction == LONG
    assert all(torch.isfinite(a).all() and torch.isfinite(b).all() for a, b in adapters[0].lora_factors.values())


def test_a_100k_character_instruction_is_truncated_in_training_batches():
    row = {"task": "t", "definition": LONG, "positive_examples": [], "input": "cat dog", "outputs": ["dog cat"]}
    batch = TagiDataCollator(tiny_tokenizer(), max_instruction_length=1024, max_input_length=16)([row])
    assert batch["instruction_input_ids"].shape == (1, 1024)
    assert batch["teacher_input_ids"].shape[1] <= 1024 + 16
    assert batch["teacher_input_ids"][0, -1].item() == tiny_tokenizer().eos_token_id  # the instance was kept


# ------------------------------------------------------------------------------------ damaged safetensors files
def _damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00garbage" * 8)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_adapter_files_are_named(tmp_path, how):
    adapter = tiny_model("cross_attention").generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    for name in ("adapter_model.safetensors", "tagi_instruction_states.safetensors"):
        adapter.save_pretrained(tmp_path / name)
        _damage(tmp_path / name / name, how)
        with pytest.raises(ValueError, match=rf"`{tmp_path / name / name}` is not a valid safetensors file"):
            GeneratedAdapter.from_pretrained(tmp_path / name)


def test_damaged_teacher_file_is_named(tmp_path):
    adapter = tiny_model("none").generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    adapter.save_pretrained(tmp_path / "t")
    (tmp_path / "teachers.json").write_text('{"group_by": "task", "teachers": {"t": "t"}}')
    _damage(tmp_path / "t" / "adapter_model.safetensors", "truncated")
    with pytest.raises(ValueError, match=r"t/adapter_model.safetensors` is not a valid safetensors file"):
        TeacherBank.from_directory(tmp_path).lora_factors(["t"])


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_model_weights_are_named(tmp_path, how, capsys):
    model = tiny_model("none")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    _damage(tmp_path / "model" / "model.safetensors", how)
    message = rf"`{tmp_path / 'model'}` \(model\*.safetensors\) are not a valid safetensors file"
    with pytest.raises(ValueError, match=message):
        TagiModel.from_pretrained(tmp_path / "model")
    capsys.readouterr()  # progress bars of the save above
    code = main(["generate-adapter", "--model", str(tmp_path / "model"), "--instruction", "x", "--out", "y"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "model*.safetensors" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------- CLI limits
@pytest.mark.parametrize("command", ["train", "train-teachers", "train-baseline"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_train_instances_per_task_must_be_positive(tmp_path, capsys, command, value):
    start = ["--backbone", str(tmp_path)]
    argv = [command, *start, "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--max-train-instances-per-task", value]) == 2
    err = capsys.readouterr().err
    assert "--max-train-instances-per-task" in err and f"must be an integer >= 1, got {value}" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text", ["", "   "])
def test_generate_adapter_refuses_an_empty_instruction(tmp_path, capsys, text):
    model = tiny_model("none")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    argv = [
        "generate-adapter",
        "--model",
        str(tmp_path / "model"),
        "--instruction",
        text,
        "--out",
        str(tmp_path / "a"),
    ]
    code = main(argv)
    assert code == 2 and "empty" in capsys.readouterr().err
