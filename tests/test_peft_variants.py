"""PEFT LoRA directories whose modules differ in scaling (`use_rslora`, `rank_pattern`, `alpha_pattern`), loaded by
`GeneratedAdapter.from_pretrained`: checked against PEFT itself, which built and saved them."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import T5ForConditionalGeneration

from tagi_hf import GeneratedAdapter, TagiModel
from tiny import tiny_text_config

VARIANTS = {
    "rslora": dict(use_rslora=True),
    "rank_pattern": dict(rank_pattern={"q": 2, r"decoder\.block\.1\.layer\.1\.EncDecAttention\.v": 6}),
    "alpha_pattern": dict(
        alpha_pattern={"SelfAttention.v": 3.0, r"encoder\.block\.0\.layer\.0\.SelfAttention\.q": 40}
    ),
    "all_three": dict(use_rslora=True, rank_pattern={"EncDecAttention.q": 8}, alpha_pattern={"v": 5.0}),
}


pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny T5, saved (TagiModel.from_backbone reads it), and inputs for it."""
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(tiny_text_config()).eval()
    path = tmp_path_factory.mktemp("t5")
    t5.save_pretrained(path)
    g = torch.Generator().manual_seed(1)
    inputs = {
        "input_ids": torch.randint(3, 96, (2, 7), generator=g),
        "labels": torch.randint(3, 96, (2, 4), generator=g),
    }
    return t5, path, inputs


def _peft_directory(t5, path, **options):
    """A PEFT LoRA on q and v of every attention (r=4, alpha=8 unless a pattern says otherwise), B made non-zero."""
    peft = get_peft_model(
        copy.deepcopy(t5),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM", **options),
    ).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.3)
    peft.save_pretrained(path)
    return peft


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_peft_directory_with_per_module_scaling_loads_with_peft_s_updates(variant, base, tmp_path):
    t5, t5_path, inputs = base
    peft = _peft_directory(t5, tmp_path / "peft", **VARIANTS[variant])
    expected = _logits(peft, inputs)
    adapter = GeneratedAdapter.from_pretrained(tmp_path / "peft")
    ranks = {lora_a.shape[0] for lora_a, _ in adapter.lora_factors.values()}
    assert ranks == {max([4, *VARIANTS[variant].get("rank_pattern", {}).values()])}  # padded to the largest
    naive = 0  # modules whose update read as the config's plain alpha / r (2) would differ from PEFT's
    for name, module in peft.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            peft_delta = module.get_delta_weight("default")
            torch.testing.assert_close(adapter.delta(name), peft_delta, rtol=1e-5, atol=1e-6)
            plain = 2.0 * module.lora_B["default"].weight @ module.lora_A["default"].weight
            naive += not torch.allclose(plain, peft_delta, rtol=1e-3, atol=1e-5)
    assert naive > 0  # the variant matters

    torch.testing.assert_close(_logits(adapter.to_peft_model(copy.deepcopy(t5)).eval(), inputs), expected,
                               rtol=0, atol=1e-5)  # fmt: skip
    # The TagiModel applies it too, though its own alpha / r (16 / 4) is another scaling.
    tagi = TagiModel.from_backbone(str(t5_path), fusion="none", lora_rank=4, lora_alpha=16).eval()
    torch.testing.assert_close(_logits(tagi.backbone, inputs), _logits(t5, inputs), rtol=0, atol=0)
    with torch.no_grad():
        from_tagi = tagi(input_ids=inputs["input_ids"], labels=inputs["labels"], adapter=adapter).logits
    torch.testing.assert_close(from_tagi, expected, rtol=0, atol=1e-5)

    # Saved again: a plain LoRA directory that PEFT loads with the same outputs.
    adapter.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    assert not saved["use_rslora"] and not saved["rank_pattern"] and not saved["alpha_pattern"]
    reloaded = PeftModel.from_pretrained(copy.deepcopy(t5), tmp_path / "again").eval()
    torch.testing.assert_close(_logits(reloaded, inputs), expected, rtol=0, atol=1e-5)


def test_a_plain_peft_directory_loads_unchanged(base, tmp_path):
    t5, _, _ = base
    peft = _peft_directory(t5, tmp_path / "peft")
    adapter = GeneratedAdapter.from_pretrained(tmp_path / "peft")
    assert adapter.lora_alpha == 8 and adapter.rank == 4
    for name, module in peft.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            lora_a, lora_b = adapter.lora_factors[name]
            assert torch.equal(lora_a, module.lora_A["default"].weight)
            assert torch.equal(lora_b, module.lora_B["default"].weight)


def test_dora_and_lora_bias_and_a_wrong_rank_pattern_are_refused(base, tmp_path):
    t5, _, _ = base
    _peft_directory(t5, tmp_path / "dora", use_dora=True)
    with pytest.raises(ValueError, match="sets `use_dora`: only plain LoRA adapters can be loaded"):
        GeneratedAdapter.from_pretrained(tmp_path / "dora")
    _peft_directory(t5, tmp_path / "bias", lora_bias=True)
    with pytest.raises(ValueError, match="sets `lora_bias`: only plain LoRA adapters can be loaded"):
        GeneratedAdapter.from_pretrained(tmp_path / "bias")
    _peft_directory(t5, tmp_path / "pattern", rank_pattern={"q": 2})
    config_file = tmp_path / "pattern" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["rank_pattern"] = {"q": 3}  # the weights say 2
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"module `.*\.q` has rank 2 in the weights, but the config gives it rank 3"):
        GeneratedAdapter.from_pretrained(tmp_path / "pattern")
