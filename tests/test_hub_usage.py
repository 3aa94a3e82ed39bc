"""Hub paths a user relies on beyond test_hub.py, against the fake Hub on 127.0.0.1: a decoder-only generator pushed
and pulled with `AutoModelForCausalLM`, `load_adapters(revision=...)`, and `tagi-hf generate-adapter --push-to-hub`
with `--private` and `--base-model`.

Loaded-vs-in-memory logits are compared within 1e-5: the loaded weights are memory-mapped from safetensors at other
alignments than fresh tensors, and some CPU kernels round differently on them (issue 23).
"""

import dataclasses
import json

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, T5ForConditionalGeneration

from tagi_hf import GeneratedAdapter, TagiForCausalLM
from tagi_hf.cli.main import main
from tagi_hf.data import format_instruction
from tagi_hf.hub import load_adapters, push_adapters_to_hub, push_model_to_hub
from test_causal_lm import inputs, tiny_causal
from tiny import tiny_model, tiny_tokenizer

BASE, REPO = "test-user/tiny-t5", "test-user/adapters"


pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


def test_a_causal_generator_pushed_loads_with_auto_model_for_causal_lm(hub_env):
    repo = "test-user/tagi-llama"
    model = tiny_causal(fusion="cross_attention")
    push_model_to_hub(model, repo, tokenizer=tiny_tokenizer())
    [commit] = hub_env.commits(repo)
    assert {"config.json", "model.safetensors", "modeling_tagi_causal.py", "tokenizer.json"} <= set(commit.added)
    card = ModelCard.load(hf_hub_download(repo, "README.md"))
    assert card.data.library_name == "transformers" and f'AutoModelForCausalLM.from_pretrained("{repo}")' in card.text

    batch = inputs()
    tokenizer = AutoTokenizer.from_pretrained(repo)
    with torch.no_grad():
        expected = model(**batch).logits
        adapter = model.generate_adapter("sort the words", tokenizer=tokenizer)
        with_adapter = model(input_ids=batch["input_ids"], adapter=adapter).logits
    for loader in (AutoModelForCausalLM, TagiForCausalLM):
        loaded = loader.from_pretrained(repo)
        assert type(loaded) is TagiForCausalLM and not loaded.training
        assert loaded.trainable_parameters_report()["backbone"] == 0
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=1e-5)
            pulled_adapter = loaded.generate_adapter("sort the words", tokenizer=tokenizer)
            torch.testing.assert_close(
                loaded(input_ids=batch["input_ids"], adapter=pulled_adapter).logits, with_adapter, rtol=0, atol=1e-5
            )
    assert not hub_env.calls("unhandled")


def test_load_adapters_reads_the_revision_asked_for(hub_env, tmp_path):
    model = tiny_model("none")
    adapters = model.generate_adapter(["reverse the order of words", "sort in alphabetical order"], tiny_tokenizer())
    adapters = [dataclasses.replace(a, base_model_name_or_path=BASE) for a in adapters]
    push_adapters_to_hub(adapters[:1], REPO, names=["first"])
    push_adapters_to_hub(adapters[1:], REPO, names=["second"], revision="dev")  # a branch made from main
    push_adapters_to_hub(adapters[::-1], REPO, names=["b", "a"])  # main moves on
    first_commit = hub_env.commits(REPO)[0].oid

    def instructions(pulled):
        return {name: adapter.instruction for name, adapter in pulled.items()}

    assert instructions(load_adapters(REPO)) == {"b": adapters[1].instruction, "a": adapters[0].instruction}
    assert instructions(load_adapters(REPO, revision="dev")) == {"second": adapters[1].instruction}
    assert instructions(load_adapters(REPO, revision=first_commit)) == {"first": adapters[0].instruction}
    [old] = load_adapters(REPO, revision=first_commit).values()
    with pytest.raises(ValueError, match="names a version of a Hub repo, but .* is a local directory"):
        load_adapters(tmp_path, revision="dev")
    for name, (lora_a, lora_b) in adapters[0].lora_factors.items():
        assert torch.equal(old.lora_factors[name][0], lora_a) and torch.equal(old.lora_factors[name][1], lora_b)


@pytest.fixture
def saved_generator(tmp_path):
    """A tiny TagiModel saved with its tokenizer, built from a local backbone (no Hub id recorded), and its backbone
    pushed to the fake Hub as BASE."""
    model = tiny_model("cross_attention")
    model.config.base_model_name_or_path = str(tmp_path)  # a local path: not something others can load
    model.save_pretrained(tmp_path / "tagi")
    tiny_tokenizer().save_pretrained(tmp_path / "tagi")
    return model


def test_generate_adapter_pushes_a_private_repo_with_the_base_model_given(hub_env, saved_generator, tmp_path, capsys):
    argv = ["generate-adapter", "--model", str(tmp_path / "tagi"), "--instruction", "Sort the words."]
    repo = "test-user/sort-adapter"
    assert main([*argv, "--out", str(tmp_path / "refused"), "--push-to-hub", repo]) == 2  # no --base-model
    err = capsys.readouterr().err
    assert "Cannot push the generated adapters: its `base_model_name_or_path` is" in err and "`--base-model" in err
    assert not (tmp_path / "refused").exists() and not hub_env.calls("create_repo", "commit")

    saved_generator.backbone.push_to_hub(BASE)
    out = tmp_path / "adapter"
    assert main([*argv, "--out", str(out), "--push-to-hub", repo, "--private", "--base-model", BASE]) == 0
    assert f"Pushed {out} to {repo}" in capsys.readouterr().out
    assert hub_env.repo(repo).private and len(hub_env.commits(repo)) == 1
    pushed = hub_env.files(repo)
    assert json.loads(pushed["adapter_config.json"])["base_model_name_or_path"] == BASE
    assert pushed["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    assert pushed["tagi_instruction_states.safetensors"] == (out / "tagi_instruction_states.safetensors").read_bytes()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tmp_path)
    card = ModelCard.load(hf_hub_download(repo, "README.md"))
    assert card.data.base_model == BASE and card.data.library_name == "peft"

    local = GeneratedAdapter.from_pretrained(out)
    base = T5ForConditionalGeneration.from_pretrained(BASE).eval()
    peft = PeftModel.from_pretrained(base, repo).eval()
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(3, 96, (2, 4), generator=torch.Generator().manual_seed(1))
    expected = local.to_peft_model(T5ForConditionalGeneration.from_pretrained(BASE).eval())
    with torch.no_grad():
        torch.testing.assert_close(
            peft(input_ids=ids, labels=labels).logits, expected(input_ids=ids, labels=labels).logits, rtol=0, atol=1e-5
        )


def test_generate_adapter_pushes_a_jsonl_file_of_instructions_with_examples(hub_env, saved_generator, tmp_path):
    saved_generator.backbone.push_to_hub(BASE)
    entries = [
        {"definition": "Sort the words.", "positive_examples": [{"input": "dog cat", "output": "cat dog"}]},
        {"definition": "Reverse the words.", "positive_examples": [{"input": "a b", "output": "b a", "x": 1}]},
    ]
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    out = tmp_path / "adapters"
    argv = ["generate-adapter", "--model", str(tmp_path / "tagi"), "--instruction-file", str(path), "--out", str(out)]
    assert main([*argv, "--setting", "def+1pos", "--push-to-hub", REPO, "--base-model", BASE]) == 0
    assert not hub_env.repo(REPO).private  # public unless --private
    pulled = load_adapters(REPO)
    assert list(pulled) == ["adapter-000", "adapter-001"]
    assert [a.base_model_name_or_path for a in pulled.values()] == [BASE, BASE]
    formatted = [format_instruction(e["definition"], e["positive_examples"], 1) for e in entries]
    assert [a.instruction for a in pulled.values()] == formatted
    assert "cat dog" in formatted[0] and "Sort the words." in formatted[0]  # the example is in the instruction
    index = json.loads(hub_env.files(REPO)["index.json"])["adapters"]
    assert [e["instruction"] for e in index.values()] == formatted
    expected = saved_generator.generate_adapter(formatted, tokenizer=tiny_tokenizer())
    for adapter, want in zip(pulled.values(), expected):
        for name, (lora_a, lora_b) in want.lora_factors.items():
            torch.testing.assert_close(adapter.lora_factors[name], (lora_a, lora_b), rtol=0, atol=1e-6)
