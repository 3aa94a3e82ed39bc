import json

import pytest
import torch
from huggingface_hub import ModelCard
from peft import AutoPeftModelForSeq2SeqLM, PeftModel
from safetensors.torch import load_file
from transformers import T5ForConditionalGeneration

import tagi_hf.modeling.adapter as adapter_module
from tagi_hf import GeneratedAdapter
from tiny import batch, tiny_model, tiny_tokenizer

INSTRUCTION = "reverse the order of words then keep only first 2 words"


def _plain_inputs():
    return {k: v for k, v in batch().items() if not k.startswith("instruction")}


@pytest.fixture
def plain_t5(tmp_path):
    """Returns a function giving a fresh, plain T5 with the TagiModel backbone's weights."""

    def make(model):
        model.backbone.save_pretrained(tmp_path / "backbone")
        return T5ForConditionalGeneration.from_pretrained(tmp_path / "backbone").eval()

    return make


def test_export_is_a_standard_peft_lora_directory(tmp_path):
    model = tiny_model("none")
    adapter = model.generate_adapter(INSTRUCTION, tokenizer=tiny_tokenizer())
    adapter.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM"
    assert config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == "tiny-t5"
    assert config["r"] == 4 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(model._lora_modules)
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    expected = {f"base_model.model.{n}.lora_{s}.weight" for n in model._lora_modules for s in "AB"}
    assert set(weights) == expected
    assert not (tmp_path / "adapter" / "tagi_instruction_states.safetensors").exists()
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.library_name == "peft"
    assert "base_model:adapter:tiny-t5" in card.data.tags
    assert INSTRUCTION in card.text


@torch.no_grad()  # same grad mode on both sides, so torch picks the same attention kernels
def test_peft_loading_gives_the_same_logits_without_fusion(tmp_path, plain_t5):
    model = tiny_model("none")
    adapter = model.generate_adapter(INSTRUCTION, tokenizer=tiny_tokenizer())
    adapter.save_pretrained(tmp_path / "adapter")
    inputs = _plain_inputs()
    expected = model(**inputs, adapter=adapter).logits
    peft_model = PeftModel.from_pretrained(plain_t5(model), tmp_path / "adapter").eval()
    assert (peft_model(**inputs).logits - expected).abs().max() <= 1e-5
    merged = peft_model.merge_and_unload()
    assert type(merged) is T5ForConditionalGeneration
    # Merging rounds W + s*BA once per layer; equal up to that rounding.
    assert (merged(**inputs).logits - expected).abs().max() <= 1e-3
    in_memory = adapter.to_peft_model(plain_t5(model)).eval()
    assert (in_memory(**inputs).logits - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_auto_peft_model_loads_the_export(tmp_path, plain_t5):
    model = tiny_model("none")
    t5 = plain_t5(model)
    adapter = model.generate_adapter(INSTRUCTION, tokenizer=tiny_tokenizer())
    adapter.base_model_name_or_path = str(tmp_path / "backbone")
    adapter.save_pretrained(tmp_path / "adapter")
    loaded = AutoPeftModelForSeq2SeqLM.from_pretrained(tmp_path / "adapter").eval()
    inputs = _plain_inputs()
    assert (loaded(**inputs).logits - model(**inputs, adapter=adapter).logits).abs().max() <= 1e-5
    del t5


def test_fusion_adapter_round_trip_reproduces_outputs_exactly(tmp_path):
    model = tiny_model("cross_attention")
    adapter = model.generate_adapter(INSTRUCTION, tokenizer=tiny_tokenizer())
    adapter.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "tagi_instruction_states.safetensors").exists()
    assert "drops the fusion" in (tmp_path / "adapter" / "README.md").read_text()
    loaded = GeneratedAdapter.from_pretrained(tmp_path / "adapter")
    assert loaded.instruction == INSTRUCTION
    assert loaded.has_fusion and torch.equal(loaded.instruction_states, adapter.instruction_states)
    assert loaded.generator_config["lora_rank"] == 4
    inputs = _plain_inputs()
    # Exact by design: the same model; the loaded factors sit in fresh aligned memory, as generated ones (next test)
    assert torch.equal(model(**inputs, adapter=loaded).logits, model(**inputs, adapter=adapter).logits)
    ids = model.generate(**{k: v for k, v in inputs.items() if k != "labels"}, adapter=loaded, max_new_tokens=5)
    assert torch.equal(
        ids, model.generate(**{k: v for k, v in inputs.items() if k != "labels"}, adapter=adapter, max_new_tokens=5)
    )


def test_loaded_and_generated_adapters_own_aligned_memory(tmp_path):
    """What makes the exact round trip above hold on every CPU: a loaded tensor is not a view of the memory-mapped
    file (which starts it at an arbitrary offset, where some CPUs' kernels round differently), and a generated one is
    not a view into its batch; both are copies torch's allocator aligned to 64 bytes."""
    model = tiny_model("cross_attention")
    generated = model.generate_adapter([INSTRUCTION, "copy the input"], tokenizer=tiny_tokenizer())
    generated[1].save_pretrained(tmp_path / "adapter")
    loaded = GeneratedAdapter.from_pretrained(tmp_path / "adapter")
    for adapter in (*generated, loaded):
        tensors = [t for pair in adapter.lora_factors.values() for t in pair] + [adapter.instruction_states]
        for t in tensors:
            assert t.is_contiguous() and t.data_ptr() % 64 == 0
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # its own storage, nothing more
    expected = {name: (a.clone(), b.clone()) for name, (a, b) in loaded.lora_factors.items()}
    for name in ("adapter_model.safetensors", "tagi_instruction_states.safetensors"):
        file = tmp_path / "adapter" / name
        size = file.stat().st_size
        with file.open("r+b") as f:  # overwrite the tensor bytes in place: a mapping of the file would see it
            f.seek(size // 2)
            f.write(bytes(size - size // 2))
    for name, (a, b) in loaded.lora_factors.items():
        assert torch.equal(a, expected[name][0]) and torch.equal(b, expected[name][1]), name
    assert torch.equal(loaded.instruction_states, generated[1].instruction_states)


def test_fusion_model_refuses_a_plain_lora_adapter(tmp_path):
    plain = tiny_model("none").generate_adapter(INSTRUCTION, tokenizer=tiny_tokenizer())
    with pytest.raises(ValueError, match="uses fusion, but an `adapter` has no instruction states"):
        tiny_model("cross_attention")(**_plain_inputs(), adapter=plain)


def test_delta_is_scaled_b_times_a():
    adapter = tiny_model("none").generate_adapter(INSTRUCTION, tokenizer=tiny_tokenizer())
    name = "decoder.block.1.layer.1.EncDecAttention.v"
    a, b = adapter.lora_factors[name]
    torch.testing.assert_close(adapter.delta(name), (16 / 4) * b @ a)
    assert adapter.delta(name).shape == (32, 32)


def test_failed_save_leaves_previous_directory_intact(tmp_path, monkeypatch):
    model = tiny_model("none")
    adapter = model.generate_adapter(INSTRUCTION, tokenizer=tiny_tokenizer())
    target = tmp_path / "adapter"
    adapter.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(adapter_module, "save_file", boom)
    other = model.generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary directory left behind


def test_loading_a_directory_without_lora_weights_fails_clearly(tmp_path):
    model = tiny_model("none")
    adapter = model.generate_adapter(INSTRUCTION, tokenizer=tiny_tokenizer())
    adapter.save_pretrained(tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    from safetensors.torch import save_file

    save_file(
        {k: v for k, v in weights.items() if "lora_B" not in k or "block.0" not in k},
        tmp_path / "adapter" / "adapter_model.safetensors",
    )
    with pytest.raises(ValueError, match="has lora_A but no lora_B for module `"):
        GeneratedAdapter.from_pretrained(tmp_path / "adapter")
