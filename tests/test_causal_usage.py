"""What the README promises users of TagiForCausalLM beyond test_causal_lm.py: left-padded batches, PEFT for causal
adapters, the decoder-only refusals, and a generator pushed to and pulled from the (fake) Hub."""

import json

import pytest
import torch

from test_causal_lm import tiny_causal
from tiny import tiny_tokenizer

PROMPTS = ["apple bird cat dog egg fish", "sort cat"]


pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


def _left_padded():
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"  # as the README tells users
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    alone = [tokenizer([text], return_tensors="pt") for text in PROMPTS]
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][0].all()  # the short prompt is padded
    return tokenizer, batch, alone


@pytest.mark.parametrize("fusion", ["none", "cross_attention"])
def test_a_left_padded_batch_matches_each_example_alone(fusion):
    """float64, so that greedy decoding cannot flip on a near-tie; the logits differ only by the rotary angles,
    which Llama evaluates in float32 (the padded example's positions are shifted; attention sees relative ones)."""
    model = tiny_causal(fusion=fusion).to(torch.float64)
    tokenizer, batch, alone = _left_padded()
    adapters = model.generate_adapter(["sort the words", "reverse the order of words"], tokenizer=tokenizer)
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        together = model(**batch, adapter=adapters).logits
        for i, (single, adapter) in enumerate(zip(alone, adapters)):
            length = single["input_ids"].shape[1]
            expected = model(**single, adapter=adapter).logits[0]
            torch.testing.assert_close(together[i, width - length :], expected, rtol=0, atol=1e-6)
        swapped = model(**batch, adapter=adapters[::-1]).logits
    assert (swapped - together).abs().max() > 1e-2  # each row uses its own adapter

    common = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=1)
    generated = model.generate(**batch, adapter=adapters, **common)
    assert torch.equal(generated[:, :width], batch["input_ids"])  # prompt + new tokens, as the README shows
    for i, (single, adapter) in enumerate(zip(alone, adapters)):
        own = model.generate(**single, adapter=adapter, **common)[0, single["input_ids"].shape[1] :]
        new = generated[i, width:]
        assert torch.equal(new[: len(own)], own)
        assert (new[len(own) :] == tokenizer.pad_token_id).all()  # finished early (eos): padded, as HF does


# ---------------------------------------------------------------------------------------- decoder-only refusals
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny TagiForCausalLM and its plain Llama backbone, each with the tiny tokenizer; a small suite."""
    from transformers import AutoModelForCausalLM

    from tagi_hf.data import write_synthetic_suite

    root = tmp_path_factory.mktemp("causal")
    tokenizer = tiny_tokenizer()
    model = tiny_causal()
    model.save_pretrained(root / "tagi")
    tokenizer.save_pretrained(root / "tagi")
    lm = AutoModelForCausalLM.from_config(model.config.text_config)
    lm.load_state_dict(model.backbone.state_dict())
    lm.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    write_synthetic_suite(root / "suite", seed=0, instances_per_task=2)
    return root


def test_pretrain_refuses_a_decoder_only_backbone(saved, tmp_path, capsys):
    from tagi_hf.cli.main import main

    (tmp_path / "corpus.txt").write_text("apple bird cat dog egg fish\n" * 8)
    argv = ["pretrain", "--backbone", str(saved / "lm"), "--text-file", str(tmp_path / "corpus.txt")]
    assert main([*argv, "--out", str(tmp_path / "s1"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "`tagi-hf pretrain` (stage 1, a|b|c segments) is written for T5 backbones" in err
    assert "with `tagi-hf train`" in err and not (tmp_path / "s1").exists()


def test_rank_classification_refuses_a_decoder_only_model(saved, tmp_path, capsys):
    from tagi_hf.cli.main import main
    from tagi_hf.evaluation.runner import load_for_evaluation, make_score_fn
    from test_predict import RANK_RECORDS

    jsonl, output = tmp_path / "rc.jsonl", tmp_path / "rc.json"
    records = [{"instruction": i, "input": x, "options": o, "dataset": d, "prompt": p, "answer": 0}
               for d, p, i, x, o in RANK_RECORDS]  # fmt: skip
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["evaluate", "--model", str(saved / "tagi"), "--rank-classification", str(jsonl), "--output", str(output)]
    assert main(argv) == 2
    message = "Rank classification is written for T5-based models; decoder-only models: use `predict`."
    assert message in capsys.readouterr().err and not output.exists()
    for path in (saved / "tagi", saved / "lm"):  # the TAGI model and an in-context LM alike
        model, tokenizer, kind = load_for_evaluation(path, device="cpu")
        with pytest.raises(ValueError, match="Rank classification is written for T5-based models"):
            make_score_fn(model, tokenizer, kind)


def test_the_top_k_teacher_logit_cache_refuses_a_decoder_only_teacher(saved, tmp_path, capsys):
    """Before this test the CLI ran the LM teacher through the T5 cache and stopped on a shape error."""
    from tagi_hf.cli.main import main

    lm = str(saved / "lm")
    argv = ["train", "--backbone", lm, "--data-dir", str(saved / "suite"), "--teacher", lm]
    small = ["--max-steps", "1", "--batch-size", "2", "--max-train-instances-per-task", "1", "--lora-rank", "2"]
    out = tmp_path / "tagi"
    assert main([*argv, "--lambda-ins", "0", "--teacher-logits-top-k", "4", "--out", str(out), *small]) == 2
    err = capsys.readouterr().err
    assert "The top-k teacher-logit cache is written for T5 teachers" in err and "--teacher-logits-top-k 0" in err
    assert not out.exists() and not out.with_name("tagi-teacher-logits").exists()


def test_the_trainer_refuses_cached_teacher_logits_for_a_decoder_only_model(tmp_path):
    from tagi_hf.training import TagiTrainer, TagiTrainingArguments

    model = tiny_causal()
    args = TagiTrainingArguments(output_dir=str(tmp_path), lambda_kl=0.5, lambda_ins=0.0, use_cpu=True,
                                 report_to="none", save_strategy="no")  # fmt: skip
    trainer = TagiTrainer(model=model, args=args)
    ids = torch.randint(3, 96, (2, 6))
    inputs = {
        "input_ids": ids, "labels": ids, "instruction_input_ids": ids[:, :4],
        "teacher_topk_ids": torch.zeros(2, 6, 4, dtype=torch.long), "teacher_topk_logits": torch.zeros(2, 6, 4),
        "teacher_log_normalizer": torch.zeros(2, 6), "teacher_temperature": torch.ones(2),
    }  # fmt: skip
    with pytest.raises(ValueError, match="Cached teacher logits are for T5 backbones; train a decoder-only TAGI live"):
        trainer.compute_loss(model, inputs)


# ------------------------------------------------------------------------------------------------------- PEFT
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_to_peft_model_of_a_causal_adapter_gives_the_logits_of_tagi_for_causal_lm(family):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = tiny_causal(family, lora_target_modules=["q", "k", "v", "o"])
    adapter = model.generate_adapter("sort the words", tokenizer=tiny_tokenizer())
    plain = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    plain.load_state_dict(model.backbone.state_dict())
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = plain(input_ids=ids).logits
        peft = adapter.to_peft_model(plain).eval()
        assert isinstance(peft, PeftModel) and peft.peft_config["default"].task_type == "CAUSAL_LM"
        assert sorted(peft.peft_config["default"].target_modules) == sorted(adapter.lora_factors)
        expected = model(input_ids=ids, adapter=adapter).logits
        torch.testing.assert_close(peft(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
    assert (expected - base).abs().max() > 1e-2  # the adapter changes the logits
