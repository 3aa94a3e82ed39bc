import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, T5ForConditionalGeneration
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

import tagi_hf
from tagi_hf import GeneratedAdapter, TagiConfig, TagiModel
from tagi_hf.data import TagiDataCollator
from tagi_hf.modeling.instructions import tokenize_instructions, truncate_instruction_ids
from test_causal_lm import tiny_causal
from tiny import FLOAT32_ROUNDING, batch, tiny_model, tiny_text_config, tiny_tokenizer

FUSIONS = ["cross_attention", "none"]


def _forward(model, inputs, **extra):
    return model(**inputs, **extra).logits


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fresh_model_equals_backbone_exactly(fusion):
    model = tiny_model(fusion, perturb=False)
    inputs = batch()
    ours = _forward(model, inputs)
    plain = model.backbone(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
    )
    assert torch.equal(ours, plain.logits)  # exact by design: the same weights, and the zero-initialised parts add 0


@pytest.mark.parametrize("fusion", FUSIONS)
def test_adapters_change_outputs_and_do_not_leak_across_rows(fusion):
    model = tiny_model(fusion)
    inputs = batch()
    base = _forward(model, inputs)
    plain = model.backbone(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
    )
    assert (base - plain.logits).abs().max() > 1e-3  # the generated adapter does something
    changed = dict(inputs, instruction_input_ids=inputs["instruction_input_ids"].clone())
    changed["instruction_input_ids"][0] = (changed["instruction_input_ids"][0] + 1) % 96
    other = _forward(model, changed)
    assert (other[0] - base[0]).abs().max() > 1e-4
    torch.testing.assert_close(other[1:], base[1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_row_alone_equals_row_in_mixed_batch(fusion):
    model = tiny_model(fusion).double()  # float64: batched and single kernels agree to rounding, not 1e-5
    inputs = batch()
    full = _forward(model, inputs)
    single = _forward(model, {k: v[1:2] for k, v in inputs.items()})
    torch.testing.assert_close(single[0], full[1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_adapter_list_equals_instruction_ids(fusion):
    model = tiny_model(fusion).double()
    tok = tiny_tokenizer()
    texts = ["reverse the order of words", "sort the words", "count the words and answer with a number"]
    adapters = model.generate_adapter(texts, tokenizer=tok, batch_size=2)
    enc = tok(texts, padding=True, return_tensors="pt")
    inputs = batch()
    inputs.update(instruction_input_ids=enc.input_ids, instruction_attention_mask=enc.attention_mask)
    by_ids = _forward(model, inputs)
    plain_inputs = {k: v for k, v in inputs.items() if not k.startswith("instruction")}
    by_adapters = _forward(model, plain_inputs, adapter=adapters)
    torch.testing.assert_close(by_adapters, by_ids, rtol=0, atol=1e-10)
    shared = _forward(model, plain_inputs, adapter=adapters[1])
    torch.testing.assert_close(shared[1], by_ids[1], rtol=0, atol=1e-10)


def test_generate_adapter_batched_equals_single():
    model = tiny_model("cross_attention").double()  # float64: a padded batch and one row round alike to ~1e-15
    tok = tiny_tokenizer()
    texts = ["reverse the order of words", "sort in alphabetical order", "keep only first 2 words"]
    batched = model.generate_adapter(texts, tokenizer=tok, batch_size=64)
    assert isinstance(batched, list) and len(batched) == 3
    for text, adapter in zip(texts, batched):
        single = model.generate_adapter(text, tokenizer=tok)
        assert isinstance(single, GeneratedAdapter) and single.instruction == text
        for name, (a, b) in single.lora_factors.items():
            torch.testing.assert_close(adapter.lora_factors[name][0], a, rtol=0, atol=1e-10)
            torch.testing.assert_close(adapter.lora_factors[name][1], b, rtol=0, atol=1e-10)
        torch.testing.assert_close(adapter.instruction_states, single.instruction_states, rtol=0, atol=1e-10)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_greedy_generate_equals_teacher_forced_argmax(fusion):
    # float64: the KV-cached steps and the full forward sum in other orders; in float32 that can flip a near tie.
    model = tiny_model(fusion).double()
    inputs = batch()
    inputs.pop("labels")
    seq = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    logits = model(**inputs, decoder_input_ids=seq[:, :-1]).logits
    finished = torch.cumsum(seq[:, :-1] == model.config.eos_token_id, dim=1) > 0  # positions after EOS are padding
    predicted = logits.argmax(-1)
    assert torch.equal(predicted[~finished], seq[:, 1:][~finished])
    top2 = logits[~finished].topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-9  # no near tie: the argmax cannot hinge on rounding (~1e-15)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_beam_search_with_per_example_adapters_matches_one_by_one(fusion):
    model = tiny_model(fusion).double()
    inputs = batch()
    inputs.pop("labels")
    together = model.generate(**inputs, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert together.shape[0] == 6
    for row in range(3):
        alone = model.generate(
            **{k: v[row : row + 1] for k, v in inputs.items()}, max_new_tokens=6, num_beams=3, num_return_sequences=2
        )
        width = alone.shape[1]
        assert torch.equal(together[2 * row : 2 * row + 2, :width], alone)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_sampling_uses_adapter_and_is_reproducible(fusion):
    model = tiny_model(fusion)
    inputs = {k: v for k, v in batch().items() if k in ("input_ids", "attention_mask")}
    first = model.generate_adapter("reverse the order of words", tokenizer=tiny_tokenizer())
    # A second adapter far from the first (B factors negated and scaled 40x), so that its next-token distributions
    # differ a lot and same-seed samples cannot coincide by chance: checked below, before sampling.
    other = dataclasses.replace(first, lora_factors={n: (a, -40 * b) for n, (a, b) in first.lora_factors.items()})
    start = torch.full((3, 1), model.config.text_config.decoder_start_token_id)
    with torch.no_grad():
        p_first, p_other = (
            model(**inputs, decoder_input_ids=start, adapter=ad).logits[:, -1].softmax(-1) for ad in (first, other)
        )
    assert ((p_first - p_other).abs().sum(-1) / 2 > 0.3).all()  # total variation distance of the first step

    def sample(adapter, seed):
        torch.manual_seed(seed)
        return model.generate(
            **inputs, adapter=adapter, max_new_tokens=8, do_sample=True, top_k=0, num_return_sequences=4
        )

    drawn = sample(first, 3)
    assert drawn.shape[0] == 12
    assert torch.equal(sample(first, 3), drawn)  # same adapter, same seed: the same samples
    # 12 sequences of 8 tokens each, the first from distributions this far apart: all equal by chance is negligible.
    assert not torch.equal(sample(other, 3), drawn)  # same seed, another adapter: other samples
    assert not torch.equal(sample(first, 4), drawn)  # it does sample: another seed gives other samples
    # The state is removed after generate: the bare backbone is untouched.
    assert all(m.lora_factors is None for m in model._lora_modules.values())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_and_load_round_trip(tmp_path, fusion):
    model = tiny_model(fusion)
    inputs = batch()
    model.save_pretrained(tmp_path)
    loaded = TagiModel.from_pretrained(tmp_path)
    assert not loaded.training
    reference = model.state_dict()
    assert set(loaded.state_dict()) == set(reference)
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    assert loaded.trainable_parameters_report() == model.trainable_parameters_report()  # backbone still frozen
    # The same weights (above), read over the mapped file: rounded otherwise on some CPUs (see tiny.FLOAT32_ROUNDING)
    torch.testing.assert_close(_forward(loaded, inputs), _forward(model, inputs), **FLOAT32_ROUNDING)


def test_auto_classes_load_tagi(tmp_path):
    model = tiny_model("cross_attention")
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), TagiConfig)
    for auto in (AutoModel, AutoModelForSeq2SeqLM):
        loaded = auto.from_pretrained(tmp_path)
        assert type(loaded) is TagiModel


@pytest.mark.parametrize(
    "generator", [{}, {"instruction_encoder": "backbone", "instruction_pooling": "mean"}], ids=["default", "paper"]
)
def test_remote_code_load_without_the_package(tmp_path, generator):
    model = tiny_model("cross_attention", **generator)
    model.save_pretrained(tmp_path / "model")
    inputs = batch()
    torch.save(inputs, tmp_path / "inputs.pt")
    torch.save(_forward(model, inputs), tmp_path / "expected.pt")
    script = f"""
import sys
sys.modules["tagi_hf"] = None  # the package is not importable in this process
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert model.config.instruction_encoder == {model.config.instruction_encoder!r}
inputs = torch.load({str(tmp_path / "inputs.pt")!r})
expected = torch.load({str(tmp_path / "expected.pt")!r})
torch.testing.assert_close(model(**inputs).logits, expected, **{FLOAT32_ROUNDING!r})  # weights over the mapped file
print("ok")
"""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_save_pretrained_ships_exactly_the_model_bundle(tmp_path):
    """The remote code a saved model carries is the `tagi_hf/modeling` folder less the other family's model file, no
    more (no Hub or card code whose templates would be missing) and no less (every module the bundle needs)."""
    tiny_model("cross_attention").save_pretrained(tmp_path / "t5")
    bundle = {p.name for p in (Path(tagi_hf.__file__).parent / "modeling").glob("*.py")} - {"__init__.py"}
    assert "modeling_tagi_base.py" in bundle  # the shared base class ships with either family
    assert {p.name for p in (tmp_path / "t5").glob("*.py")} == bundle - {"modeling_tagi_causal.py"}
    tiny_causal(fusion="cross_attention").save_pretrained(tmp_path / "causal")
    assert {p.name for p in (tmp_path / "causal").glob("*.py")} == bundle - {"modeling_tagi.py"}


def test_remote_code_user_generates_saves_and_reloads_an_adapter_without_the_package(tmp_path):
    """The remote-code path the README promises, end to end in a process where `tagi_hf` cannot be imported."""
    model = tiny_model("cross_attention")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    expected = model.generate_adapter("Sort the words in alphabetical order.", tokenizer=tiny_tokenizer())
    expected.save_pretrained(tmp_path / "expected")
    script = f"""
import sys
sys.modules["tagi_hf"] = None  # the package is not importable in this process
import torch
from transformers import AutoModel, AutoTokenizer
from peft import LoraConfig
path = {str(tmp_path / "model")!r}
model = AutoModel.from_pretrained(path, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
tokenizer = AutoTokenizer.from_pretrained(path)
adapter = model.generate_adapter("Sort the words in alphabetical order.", tokenizer=tokenizer)
adapter.save_pretrained({str(tmp_path / "out")!r})
again = type(adapter).from_pretrained({str(tmp_path / "out")!r})
assert again.instruction == "Sort the words in alphabetical order."
for name, pair in adapter.lora_factors.items():
    assert all(torch.equal(again.lora_factors[name][i], pair[i]) for i in (0, 1)), name
assert LoraConfig.from_pretrained({str(tmp_path / "out")!r}).r == adapter.rank
print("ok")
"""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
    out, reference = tmp_path / "out", tmp_path / "expected"
    # Generated in another process by a model read over the mapped file: equal up to rounding (tiny.FLOAT32_ROUNDING)
    written, expected = (load_file(folder / "adapter_model.safetensors") for folder in (out, reference))
    assert written.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(written[name], value, **FLOAT32_ROUNDING, msg=name)
    configs = [json.loads((d / "adapter_config.json").read_text()) for d in (out, reference)]
    for config in configs:  # PEFT keeps target_modules as a set: its order is the process's hash order
        config["target_modules"] = sorted(config["target_modules"])
    assert configs[0] == configs[1]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "tiny-t5"
    assert "Sort the words in alphabetical order." in card.text
    # the model folder writes the card, so it is the same with and without the package
    assert (out / "README.md").read_bytes() == (reference / "README.md").read_bytes()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_reach_only_generator_and_fusion(checkpointing):
    model = tiny_model("cross_attention")
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    model(**batch()).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            assert param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    report = model.trainable_parameters_report()
    assert report["backbone"] == 0
    assert report["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert TagiModel.accepts_loss_kwargs is False


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("cross_attention").double()  # float64: recomputation order cannot blur the comparison
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**batch()).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-10)


def test_set_trainable_is_explicit():
    model = tiny_model("cross_attention")
    model.set_trainable(generator=True, fusion=False)
    report = model.trainable_parameters_report()
    assert report["fusion"] == 0 and report["generator"] > 0
    model.set_trainable(backbone=True)
    assert model.trainable_parameters_report()["backbone"] == sum(p.numel() for p in model.backbone.parameters())


def test_from_backbone_wraps_a_checkpoint(tmp_path):
    t5 = T5ForConditionalGeneration(tiny_text_config()).eval()
    t5.save_pretrained(tmp_path / "t5")
    model = TagiModel.from_backbone(str(tmp_path / "t5"), lora_rank=2, fusion="none").eval()
    assert model.config.base_model_name_or_path == str(tmp_path / "t5")
    assert model.config.lora_rank == 2
    inputs = batch()
    expected = t5(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"])
    # The backbone loaded over the mapped file, `t5` in memory: equal up to rounding (see tiny.FLOAT32_ROUNDING)
    torch.testing.assert_close(_forward(model, inputs), expected.logits, **FLOAT32_ROUNDING)


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_instruction_is_refused(text):
    model = tiny_model("none")
    with pytest.raises(ValueError, match=r"`instructions\[0\]` is empty"):
        model.generate_adapter(text, tokenizer=tiny_tokenizer())


def test_long_instruction_is_truncated_with_one_warning():
    model = tiny_model("cross_attention", max_instruction_length=16)
    logger = logging.get_logger("tagi_hf.modeling.instructions")
    logging.set_verbosity_warning()
    with CaptureLogger(logger) as captured:
        adapters = model.generate_adapter(["apple " * 5000, "bird " * 3000], tokenizer=tiny_tokenizer())
    assert captured.out.count("truncated") == 1
    assert adapters[0].instruction_states.shape[0] == 16


def test_long_instruction_ids_are_truncated_keeping_eos():
    model = tiny_model("cross_attention", max_instruction_length=4).double()  # float64: a cut view and a copy agree
    inputs = batch(ins=9)
    logits = _forward(model, inputs)
    cut = inputs["instruction_input_ids"][:, :4].clone()
    cut[:, -1] = model.config.text_config.eos_token_id  # every row is longer than 4: first 3 tokens + EOS
    short = dict(
        inputs, instruction_input_ids=cut, instruction_attention_mask=inputs["instruction_attention_mask"][:, :4]
    )
    torch.testing.assert_close(logits, _forward(model, short), rtol=0, atol=1e-10)


def test_one_truncation_policy_for_instructions_in_collator_generate_adapter_and_forward():
    """The collator, `generate_adapter` and the model's forward cut a long instruction to the same ids."""
    tokenizer = tiny_tokenizer()
    model = tiny_model("cross_attention", max_instruction_length=6)
    text = "sort the words then reverse the order of the words and keep only the first two words"
    row = {"task": "t", "definition": text, "positive_examples": [], "input": "a b", "outputs": ["b a"]}
    collator = TagiDataCollator(tokenizer, setting="def", max_instruction_length=6)
    from_collator = collator([row])["instruction_input_ids"]
    full = tokenizer([collator.instruction(row)], return_tensors="pt")["input_ids"]
    assert full.shape[1] > 6
    from_model, _ = truncate_instruction_ids(full, None, 6, tokenizer.eos_token_id)
    from_generate, _ = tokenize_instructions(tokenizer, [collator.instruction(row)], 6)
    assert from_collator.tolist() == from_model.tolist() == from_generate.tolist()
    assert (
        from_collator[0, -1].item() == tokenizer.eos_token_id and from_collator[0, :5].tolist() == full[0, :5].tolist()
    )
    adapter = model.generate_adapter(collator.instruction(row), tokenizer)
    assert adapter.instruction_states.shape[0] == 6


def test_tokenizer_larger_than_embedding_is_refused():
    model = TagiModel(TagiConfig(text_config=tiny_text_config(vocab_size=8), lora_rank=2))
    with pytest.raises(ValueError, match="`tokenizer` has .* tokens but the backbone's embedding has only 8"):
        model.generate_adapter("sort the words", tokenizer=tiny_tokenizer())


def test_adapter_for_another_backbone_is_refused():
    small = tiny_model("none")
    other = TagiModel(TagiConfig(text_config=tiny_text_config(d_model=48), lora_rank=4, fusion="none"))
    adapter = other.generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    with pytest.raises(
        ValueError, match=r"Adapter module `encoder\.block\.0\.layer\.0\.SelfAttention\.q` has A \(4, 48\)"
    ):
        small(**{k: v for k, v in batch().items() if not k.startswith("instruction")}, adapter=adapter)
    deeper = TagiModel(TagiConfig(text_config=tiny_text_config(num_layers=3), lora_rank=4, fusion="none"))
    adapter = deeper.generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    with pytest.raises(ValueError, match=r"`encoder\.block\.2\.layer\.0\.SelfAttention\.q` does not exist"):
        small(**{k: v for k, v in batch().items() if not k.startswith("instruction")}, adapter=adapter)


def test_adapter_count_must_match_batch():
    model = tiny_model("none")
    adapters = model.generate_adapter(["sort the words", "count the words"], tokenizer=tiny_tokenizer())
    with pytest.raises(ValueError, match="`adapter` holds 2 adapters for a batch of 3"):
        model(**{k: v for k, v in batch().items() if not k.startswith("instruction")}, adapter=adapters)


def test_missing_task_information_is_refused():
    model = tiny_model("none")
    with pytest.raises(ValueError, match="exactly one of `adapter` or `instruction_input_ids`"):
        model(input_ids=batch()["input_ids"], labels=batch()["labels"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora_rank": 0}, "`lora_rank` must be a positive integer"),
        ({"lora_rank": -2}, "`lora_rank` must be a positive integer"),
        ({"fusion": "concat"}, "`fusion` must be one of"),
        ({"lora_target_modules": ["q", "wi"]}, "`lora_target_modules` must be a non-empty subset"),
        ({"lora_alpha": 0}, "`lora_alpha` must be positive"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TagiConfig(text_config=tiny_text_config(), **kwargs)


def test_optional_k_and_o_targets():
    config = TagiConfig(text_config=tiny_text_config(), lora_rank=2, lora_target_modules=["q", "k", "v", "o"])
    model = TagiModel(config)
    names = list(model._lora_modules)
    assert len(names) == 4 * 3 * 2  # 4 projections x 3 attention kinds x 2 layers
    assert {name.rsplit(".", 1)[1] for name in names} == {"q", "k", "v", "o"}
    adapter = model.generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    assert sorted(adapter.lora_factors) == sorted(names)  # one (A, B) pair per targeted projection
    a, b = adapter.lora_factors["decoder.block.1.layer.1.EncDecAttention.o"]
    assert a.shape == (2, 32) and b.shape == (32, 2)
