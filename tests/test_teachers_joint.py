import json

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import T5ForConditionalGeneration

from tagi_hf.data import TagiDataCollator, train_tokenizer
from tagi_hf.standin import standin_config
from tagi_hf.teachers_joint import train_lora_teachers_jointly

WORDS = "apple bird boat book cake car cat cloud coin cup desk dog".split()


def _rows():
    g = torch.Generator().manual_seed(0)
    rows = []
    for task, fn in {"rev": lambda w: w[::-1], "first": lambda w: w[:1], "dup": lambda w: w + w}.items():
        for i in range(12):
            words = [WORDS[j] for j in torch.randint(0, len(WORDS), (3,), generator=g)]
            rows.append(
                {
                    "id": f"{task}-{i}",
                    "task": task,
                    "category": "c",
                    "definition": task,
                    "positive_examples": [],
                    "input": " ".join(words),
                    "outputs": [" ".join(fn(words))],
                }
            )
    return rows


def _task_loss(model, tokenizer, rows):
    batch = TagiDataCollator(tokenizer, teacher_inputs=False)(rows)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def test_joint_teachers_learn_their_tasks_and_load_with_peft(tmp_path):
    rows = _rows()
    tokenizer = train_tokenizer([r["input"] + " " + r["outputs"][0] for r in rows] * 5, vocab_size=120)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(standin_config(len(tokenizer), d_model=32, num_layers=2)).eval()
    t5.save_pretrained(tmp_path / "t5")
    before = {k: v.clone() for k, v in t5.state_dict().items()}
    bank = train_lora_teachers_jointly(t5, tokenizer, Dataset.from_list(rows), tmp_path / "teachers", rank=4,
                                       max_steps=30, learning_rate=5e-2, batch_size=12)  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in t5.state_dict().items())  # the caller's backbone untouched
    assert sorted(bank.keys) == ["dup", "first", "rev"]
    index = json.loads((tmp_path / "teachers" / "teachers.json").read_text())
    assert index["group_by"] == "task"
    for task in bank.keys:
        task_rows = [r for r in rows if r["task"] == task]
        base = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
        plain = _task_loss(base, tokenizer, task_rows)
        peft = PeftModel.from_pretrained(base, tmp_path / "teachers" / task).eval()
        assert _task_loss(peft, tokenizer, task_rows) < plain - 0.3, task
    factors = bank.lora_factors(["rev", "dup"])
    a, b, scaling = factors["encoder.block.0.layer.0.SelfAttention.q"]
    assert a.shape == (2, 4, 32) and b.shape == (2, 32, 4) and scaling == 2.0
