"""The SmolLM2 recipe (`examples/smollm2/train_synthetic.py`) decodes through `evaluation.runner.predict` (issue 26):
its `evaluate` on a tiny random Llama and the tiny tokenizer (no SmolLM2 download, seconds)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from tagi_hf import TagiConfig, TagiForCausalLM
from tagi_hf.data import format_instruction, format_student_input, in_context_ids, load_sni
from tagi_hf.data.synthetic import write_synthetic_suite
from tiny import tiny_tokenizer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "smollm2" / "train_synthetic.py"

pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("smollm2_train_synthetic", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    text = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = TagiForCausalLM(TagiConfig(text_config=text, lora_rank=4, instruction_encoder="backbone")).eval()
    with torch.no_grad():  # B heads start at zero: give them values, so the adapter changes the outputs
        for param in model.generator.heads_b.parameters():
            param.normal_(0, 0.3)
    suite = write_synthetic_suite(tmp_path_factory.mktemp("suite"), seed=0, instances_per_task=4)
    rows = list(load_sni(suite, splits=("test",), max_test_instances_per_task=2)["test"])[:6]
    return model, tokenizer, rows


def _greedy(generate, tokenizer, ids: list[int], **kwargs) -> str:
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    out = generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id, **kwargs)
    return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip().split("\n")[0].strip()


def test_each_method_decodes_what_its_model_writes_for_its_prompt(recipe, setup):
    model, tokenizer, rows = setup
    scored = {method: recipe.evaluate(method, rows, tokenizer, model, max_new_tokens=5) for method in recipe.METHODS}
    assert {s["n"] for s in scored.values()} == {6} and scored["tagi"]["num_tasks"] == 3
    for i, row in enumerate(rows[:5]):  # the recipe keeps 5 examples
        student = tokenizer(format_student_input(row["input"]), truncation=True, max_length=96)["input_ids"]
        instruction = format_instruction(row["definition"])
        in_context = in_context_ids(tokenizer, instruction, row["input"], max_length=1024 + 96, max_input_length=96)
        adapter = model.generate_adapter(instruction, tokenizer)
        expected = {
            "no_adapter": _greedy(model.backbone.generate, tokenizer, student),
            "in_context_zero_shot": _greedy(model.backbone.generate, tokenizer, in_context),
            "tagi": _greedy(model.generate, tokenizer, student, adapter=adapter),
        }
        assert {m: scored[m]["examples"][i]["prediction"] for m in recipe.METHODS} == expected
    tagi, plain = ([e["prediction"] for e in scored[m]["examples"]] for m in ("tagi", "no_adapter"))
    assert tagi != plain  # the adapter changes what the LM writes
    tokens = {m: scored[m]["prompt_tokens_per_instance"] for m in recipe.METHODS}
    assert tokens["tagi"] == tokens["no_adapter"] < tokens["in_context_zero_shot"]
    assert tokens["no_adapter"] == sum(
        len(tokenizer(format_student_input(r["input"]), truncation=True, max_length=96)["input_ids"]) for r in rows
    ) / len(rows)
    assert scored["tagi"]["seconds_per_task_once"] > 0 and scored["no_adapter"]["seconds_per_task_once"] == 0
