"""Decoder-only backbones (issue 15): TagiForCausalLM on tiny random Llama and Qwen2 models built in code."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, T5Config

from tagi_hf import GeneratedAdapter, TagiConfig, TagiForCausalLM, TagiModel
from tagi_hf.data import TagiCausalDataCollator
from tiny import FLOAT32_ROUNDING, tiny_tokenizer

FAMILIES = {"llama": LlamaConfig, "qwen2": Qwen2Config}


def text_config(family: str = "llama", vocab_size: int = 96):
    return FAMILIES[family](
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=128,
    )  # fmt: skip


def tiny_causal(family: str = "llama", fusion: str = "none", seed: int = 0, **kwargs) -> TagiForCausalLM:
    """A tiny TagiForCausalLM whose zero-initialised parts (B heads, gates) are perturbed so adapters matter."""
    torch.manual_seed(seed)
    config = TagiConfig(text_config=text_config(family), lora_rank=4, fusion=fusion, **kwargs)
    model = TagiForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.generator.heads_b.parameters():
            param.normal_(0, 0.2)
        if model.layer_fusion is not None:
            for layer in model.layer_fusion:
                layer.gate.fill_(0.5)
    return model


def inputs(n: int = 3, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (n, length), generator=g)
    instruction = torch.randint(3, 96, (n, 6), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "instruction_input_ids": instruction}


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_adapter_is_a_peft_causal_lm_lora_with_the_same_logits(family, tmp_path):
    model = tiny_causal(family)
    adapter = model.generate_adapter("Sort the words.", tokenizer=tiny_tokenizer())
    assert sorted({name.rsplit(".", 1)[1] for name in adapter.lora_factors}) == ["q_proj", "v_proj"]
    adapter.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["peft_type"] == "LORA"
    assert GeneratedAdapter.from_pretrained(tmp_path / "adapter").task_type == "CAUSAL_LM"

    ids = inputs()["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids, adapter=adapter).logits
        plain = AutoModelForCausalLM.from_config(model.config.text_config).eval()
        plain.load_state_dict(model.backbone.state_dict())
        base_logits = plain(input_ids=ids).logits
        peft = PeftModel.from_pretrained(plain, tmp_path / "adapter").eval()
        torch.testing.assert_close(peft(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
        assert not torch.allclose(base_logits, expected, atol=1e-3)  # the adapter does something
        merged = peft.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fusion", ["none", "cross_attention"])
def test_per_example_adapters_are_isolated(fusion):
    model = tiny_causal(fusion=fusion)
    a, b = model.generate_adapter(["Sort the words.", "Reverse the order of the words."], tokenizer=tiny_tokenizer())
    ids = inputs(n=2)["input_ids"]
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter=[a, b]).logits
        alone = torch.cat([model(input_ids=ids[:1], adapter=a).logits, model(input_ids=ids[1:], adapter=b).logits])
        swapped = model(input_ids=ids, adapter=[b, a]).logits
    torch.testing.assert_close(mixed, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(mixed, swapped, atol=1e-3)


@pytest.mark.parametrize("fusion", ["none", "cross_attention"])
def test_generate_greedy_and_kv_cache(fusion):
    # float64: with and without the KV cache, in a batch of 2 and alone, the sums run in other orders; in float32 that
    # can flip a near tie between two tokens.
    model = tiny_causal(fusion=fusion).double()
    batch = inputs(n=2)
    adapters = model.generate_adapter(["Sort the words.", "Reverse the words."], tokenizer=tiny_tokenizer())
    common = dict(input_ids=batch["input_ids"], adapter=adapters, max_new_tokens=5, pad_token_id=0)
    cached = model.generate(**common, do_sample=False, use_cache=True)
    uncached = model.generate(**common, do_sample=False, use_cache=False)
    assert cached.shape == (2, 7 + 5) and torch.equal(cached[:, :7], batch["input_ids"])  # prompt + new tokens
    assert torch.equal(cached, uncached)
    one = model.generate(input_ids=batch["input_ids"][1:], adapter=adapters[1], max_new_tokens=5, do_sample=False)
    assert torch.equal(cached[1:], one)  # the per-example adapter, not its neighbour's


@pytest.mark.parametrize("fusion", ["none", "cross_attention"])
def test_beams_and_sampling_use_each_examples_own_adapter(fusion):
    # float64: a batched and a one-example run round differently (~1e-7 in float32), which could flip a near-tie
    # between two beams' scores; in float64 a flip would need a tie to ~1e-15.
    model = tiny_causal(fusion=fusion).double()
    ids = inputs(n=2)["input_ids"]
    first = model.generate_adapter("Sort the words.", tokenizer=tiny_tokenizer())
    # A second adapter far from the first (B factors negated, 20x), so that a row run with its neighbour's adapter
    # would visibly differ: checked below, which is what gives the per-row equalities their teeth.
    other = dataclasses.replace(first, lora_factors={n: (a, -20 * b) for n, (a, b) in first.lora_factors.items()})
    adapters, prompt, new = [first, other], ids.shape[1], 6
    common = dict(max_new_tokens=new, pad_token_id=0)

    beams = model.generate(input_ids=ids, adapter=adapters, num_beams=3, num_return_sequences=2, **common)
    assert beams.shape[0] == 4
    for row in range(2):
        rows = beams[2 * row : 2 * row + 2]
        own, neighbours = (
            model.generate(input_ids=ids[row : row + 1], adapter=a, num_beams=3, num_return_sequences=2, **common)
            for a in (adapters[row], adapters[1 - row])
        )
        assert torch.equal(rows[:, : own.shape[1]], own)  # what the example gets alone with its adapter
        assert not torch.equal(rows[:, : neighbours.shape[1]], neighbours)

    # Sampling: each new token of a row (up to its EOS) is one of the top_k of the next-token distribution its own
    # example has alone with its own adapter, and the rows are not what the neighbour's adapter would allow.
    top_k = 3
    torch.manual_seed(0)
    sampled = model.generate(
        input_ids=ids, adapter=adapters, do_sample=True, top_k=top_k, num_return_sequences=3, **common
    )
    assert sampled.shape[0] == 6 and torch.equal(sampled[::3, :prompt], ids)
    tokens = sampled[:, prompt:]
    is_eos = (tokens == model.config.text_config.eos_token_id).long()
    before_eos = torch.cumsum(is_eos, dim=1) - is_eos == 0  # up to and including the first EOS
    assert len({tuple(t) for t in tokens.tolist()}) > 1  # it does sample
    outside_neighbours = 0
    with torch.no_grad():
        for index in range(6):
            row = index // 3
            allowed = [
                model(input_ids=sampled[index : index + 1, :-1], adapter=a).logits[0, prompt - 1 :].topk(top_k).indices
                for a in (adapters[row], adapters[1 - row])
            ]
            in_own, in_neighbours = ((top == tokens[index, :, None]).any(-1) for top in allowed)
            assert in_own[before_eos[index]].all(), (index, tokens[index])
            outside_neighbours += int((~in_neighbours[before_eos[index]]).sum())
    assert outside_neighbours >= 6  # the top-k check tells the two adapters apart


def test_instruction_ids_in_forward_match_a_generated_adapter():
    model = tiny_causal(fusion="cross_attention")
    tokenizer = tiny_tokenizer()
    adapter = model.generate_adapter("Sort the words.", tokenizer=tokenizer)
    instruction = tokenizer(["Sort the words."], return_tensors="pt")["input_ids"]
    ids = inputs(n=1)["input_ids"]
    with torch.no_grad():
        from_ids = model(input_ids=ids, instruction_input_ids=instruction).logits
        from_adapter = model(input_ids=ids, adapter=adapter).logits
    torch.testing.assert_close(from_ids, from_adapter, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fusion", ["none", "cross_attention"])
def test_gradients_reach_only_generator_fusion_and_instruction_encoder(fusion):
    model = tiny_causal(fusion=fusion).train()
    with torch.no_grad():  # the pooling's queries start at zero: uniform attention, so its keys get no gradient yet
        model.generator.pooling.query.normal_(0.0, 1.0)
    batch = inputs()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    report = model.trainable_parameters_report()
    assert report["backbone"] == 0 and (report["fusion"] > 0) == (fusion != "none")
    assert report["instruction_encoder"] > 0  # the default: a trainable copy of the decoder stack


def test_save_and_auto_load(tmp_path):
    model = tiny_causal(fusion="cross_attention")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_tagi_causal.TagiForCausalLM"
    )
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is TagiForCausalLM and loaded.trainable_parameters_report()["backbone"] == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())  # the same weights
    batch = inputs()
    with torch.no_grad():  # read over the mapped file: rounded otherwise on some CPUs (see tiny.FLOAT32_ROUNDING)
        torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits, **FLOAT32_ROUNDING)


def test_remote_code_load_without_the_package(tmp_path):
    model = tiny_causal(fusion="cross_attention")
    model.save_pretrained(tmp_path / "model")
    batch = inputs()
    torch.save(batch, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**batch).logits, tmp_path / "expected.pt")
    script = f"""
import sys
sys.modules["tagi_hf"] = None  # the package is not importable in this process
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
print("ok", (logits - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item())
"""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    word, diff = result.stdout.split()[-2:]
    assert word == "ok" and float(diff) <= 1e-6


def test_k_and_o_by_config():
    model = tiny_causal(lora_target_modules=["q", "k", "v", "o"])
    adapter = model.generate_adapter("Sort.", tokenizer=tiny_tokenizer())
    shapes = {
        name.rsplit(".", 1)[1]: tuple(b.shape[0] for b in [pair[1]]) for name, pair in adapter.lora_factors.items()
    }
    assert shapes == {"q_proj": (32,), "k_proj": (16,), "v_proj": (16,), "o_proj": (32,)}  # grouped-query k/v


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TagiConfig(text_config=GPT2Config(n_embd=32, n_layer=1, n_head=4)), "not support `gpt2`.*llama"),
        (
            lambda: TagiConfig(text_config=MistralConfig(hidden_size=32, num_attention_heads=4, sliding_window=16)),
            "sliding-window attention is not supported",
        ),
        (lambda: TagiModel(TagiConfig(text_config=text_config())), "decoder-only: use TagiForCausalLM"),
        (
            lambda: TagiForCausalLM(TagiConfig(text_config=T5Config(d_model=32, num_heads=4, d_kv=8))),
            "for T5 use TagiModel",
        ),
        (
            lambda: TagiConfig(text_config=text_config(), lora_attention_kinds=["encoder_self"]),
            "lora_attention_kinds",
        ),
    ],
    ids=["gpt2", "sliding-window", "tagimodel-on-llama", "causal-on-t5", "encoder-kind"],
)
def test_unsupported_backbones_are_refused_naming_what_is_supported(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_the_model_classes_own_the_family_and_the_package_reads_it_from_them(tmp_path):
    """One owner of "T5 or decoder-only": each class declares its family, `TagiConfig.is_encoder_decoder_config`
    tells configs (and paths) apart, and the class choice, the teachers' backbone loading and the collator follow."""
    from transformers import T5ForConditionalGeneration

    from tagi_hf import TagiPreTrainedModel
    from tagi_hf.data import TagiCausalDataCollator, TagiDataCollator, collator_for
    from tagi_hf.modeling import tagi_class_for
    from tagi_hf.teachers.seq2seq import load_backbone

    assert issubclass(TagiModel, TagiPreTrainedModel) and issubclass(TagiForCausalLM, TagiPreTrainedModel)
    declared = [(c.is_encoder_decoder, c.peft_task_type, c.auto_class_name) for c in (TagiModel, TagiForCausalLM)]
    assert declared == [(True, "SEQ_2_SEQ_LM", "AutoModel"), (False, "CAUSAL_LM", "AutoModelForCausalLM")]
    t5 = T5Config(vocab_size=96, d_model=32, num_heads=4, d_kv=8, d_ff=64, num_layers=1)
    model = tiny_causal()
    for config, cls in [(t5, TagiModel), (TagiConfig(text_config=t5), TagiModel), (text_config(), TagiForCausalLM),
                        (model.config, TagiForCausalLM), (model, TagiForCausalLM)]:  # fmt: skip
        assert tagi_class_for(config) is cls
    assert TagiConfig.is_encoder_decoder_config(t5) and not TagiConfig.is_encoder_decoder_config(model.config)
    T5ForConditionalGeneration(t5).save_pretrained(tmp_path / "t5")
    model.save_pretrained(tmp_path / "tagi")
    assert (tagi_class_for(tmp_path / "t5"), tagi_class_for(tmp_path / "tagi")) == (TagiModel, TagiForCausalLM)
    assert type(load_backbone(tmp_path / "t5")[0]) is T5ForConditionalGeneration
    assert type(collator_for(tiny_tokenizer(), t5)) is TagiDataCollator
    assert type(collator_for(tiny_tokenizer(), model.config)) is TagiCausalDataCollator
    with pytest.raises(ValueError, match="not support `gpt2`.*llama"):
        tagi_class_for(GPT2Config(n_embd=32, n_layer=1, n_head=4))


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_loaded_backbone_keeps_its_attention_implementation_when_wrapped(attention):
    """`TagiConfig(text_config=backbone.config)` shares the backbone's config; the composite config's init used to
    reset its `_attn_implementation` to None, which broke the wrapped model's attention (found on SmolLM2)."""
    torch.manual_seed(0)
    backbone = AutoModelForCausalLM.from_config(text_config(), attn_implementation=attention).eval()
    ids = inputs()["input_ids"]
    with torch.no_grad():
        alone = backbone(input_ids=ids).logits
        model = TagiForCausalLM(TagiConfig(text_config=backbone.config, fusion="none"), backbone=backbone).eval()
        assert backbone.config._attn_implementation == attention
        # Exact: the same module on the same memory; only the attention implementation could change the computation
        torch.testing.assert_close(model.backbone(input_ids=ids).logits, alone, rtol=0, atol=0)


def _rows(n_tasks: int = 3, per_task: int = 4) -> list[dict]:
    words = ["apple", "bird", "cat", "dog", "egg", "fig"]
    rows = []
    for t in range(n_tasks):
        for i in range(per_task):
            text = " ".join(words[(i + k) % 6] for k in range(3))
            rows.append(
                {"task": f"task{t}", "category": "c", "definition": f"Do thing number {t} to the words.",
                 "positive_examples": [], "input": text, "outputs": [text.upper() if t else text[::-1]]}
            )  # fmt: skip
    return rows


def test_causal_collator_puts_labels_on_the_output_only_and_aligns_the_teacher():
    tokenizer = tiny_tokenizer()
    collator = TagiCausalDataCollator(tokenizer, max_input_length=32, max_target_length=16)
    rows = _rows(2, 1)
    batch = collator(rows)
    for i, row in enumerate(rows):
        labels = batch["labels"][i]
        output = tokenizer(" " + row["outputs"][0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert labels[labels != -100].tolist() == output
        kept = batch["input_ids"][i][labels != -100].tolist()
        assert kept == output  # the labels are the sequence's own output tokens (HF shifts them inside)
        teacher = batch["teacher_labels"][i]
        assert teacher[teacher != -100].tolist() == output
        assert batch["teacher_input_ids"].shape[1] > batch["input_ids"].shape[1]  # the instruction is in context
    assert batch["instruction_input_ids"].shape[0] == 2 and batch["task_keys"] == ["task0", "task1"]


def test_teacher_logits_are_moved_onto_the_students_output_positions():
    from tagi_hf.training.trainer import _aligned_teacher_logits

    teacher_labels = torch.tensor([[-100, -100, -100, 7, 8]])  # prompt of 3, then output 7 8
    student_labels = torch.tensor([[-100, 7, 8]])  # shifted: prompt of 1 (position 0 predicts 7)
    logits = torch.arange(5 * 10, dtype=torch.float).view(1, 5, 10)
    aligned = _aligned_teacher_logits(logits, teacher_labels, student_labels)
    assert torch.equal(aligned[0, 1], logits[0, 2]) and torch.equal(aligned[0, 2], logits[0, 3])
    assert torch.count_nonzero(aligned[0, 0]) == 0
    with pytest.raises(ValueError, match="output tokens differ"):
        _aligned_teacher_logits(logits, teacher_labels, torch.tensor([[-100, 7, 9]]))


def test_tagi_trainer_trains_a_decoder_only_model_with_label_and_logit_distillation(tmp_path):
    from datasets import Dataset

    from tagi_hf.training import TagiTrainer, TagiTrainingArguments

    model = tiny_causal(fusion="cross_attention").train()
    teacher = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    teacher.load_state_dict(model.backbone.state_dict())
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    generator_before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    args = TagiTrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=3e-3, lambda_kl=0.5,
        lambda_ins=0.0, logging_steps=1, save_strategy="no", use_cpu=True, report_to="none", seed=0,
    )  # fmt: skip
    collator = TagiCausalDataCollator(tiny_tokenizer(), max_input_length=32, max_target_length=16)
    trainer = TagiTrainer(
        model=model, args=args, teacher_model=teacher, train_dataset=Dataset.from_list(_rows()), data_collator=collator
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert all("loss_kl" in e and "loss_pred" in e for e in logs)
    assert logs[-1]["loss_pred"] < logs[0]["loss_pred"]
    assert all(torch.equal(v, backbone_before[k]) for k, v in model.backbone.state_dict().items())
    assert any(not torch.equal(v, generator_before[k]) for k, v in model.generator.state_dict().items())


def test_a_causal_lm_adapter_pushes_to_the_hub_and_peft_loads_it_from_there(hub_env):
    """Push and pull as for T5: one commit, a card with `library_name: peft` and `base_model`, PEFT loads it."""
    import dataclasses

    from huggingface_hub import ModelCard, hf_hub_download

    from tagi_hf.hub import push_adapter_to_hub

    model = tiny_causal()
    plain = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    plain.load_state_dict(model.backbone.state_dict())
    plain.push_to_hub("test-user/tiny-llama")
    adapter = model.generate_adapter("Sort the words.", tokenizer=tiny_tokenizer())
    adapter = dataclasses.replace(adapter, base_model_name_or_path="test-user/tiny-llama")
    push_adapter_to_hub(adapter, "test-user/sort-adapter")
    card = ModelCard.load(hf_hub_download("test-user/sort-adapter", "README.md"))
    assert card.data.library_name == "peft" and card.data.base_model == "test-user/tiny-llama"
    base = AutoModelForCausalLM.from_pretrained("test-user/tiny-llama").eval()
    peft = PeftModel.from_pretrained(base, "test-user/sort-adapter").eval()
    ids = inputs()["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=ids).logits, model(input_ids=ids, adapter=adapter).logits,
                                   rtol=0, atol=1e-5)  # fmt: skip


def test_cards_of_a_decoder_only_generator_and_adapter_name_the_causal_classes():
    from tagi_hf.hub import adapter_model_card, generator_model_card

    model = tiny_causal(fusion="cross_attention")
    card = str(generator_model_card(model))
    assert "AutoModelForCausalLM.from_pretrained" in card and "decoder-only LM" in card
    assert "hidden size 32, 2 layers" in card and "- llama" in card
    adapter = str(adapter_model_card(model.generate_adapter("Sort.", tokenizer=tiny_tokenizer())))
    assert "AutoModelForCausalLM.from_pretrained" in adapter and "AutoPeftModelForCausalLM" in adapter
    assert "Seq2Seq" not in adapter
