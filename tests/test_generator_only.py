"""Generator-only checkpoints (issue 26): `save_pretrained(path, save_backbone=False)` leaves the frozen backbone out
and names it, as a PEFT adapter names its base model; `from_pretrained` loads the named backbone and puts the model
back together. Tiny Llama and T5 backbones built in code and saved to a temporary folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, T5ForConditionalGeneration

import tagi_hf
from tagi_hf import TagiConfig, TagiForCausalLM, TagiModel
from tiny import tiny_text_config

pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


def llama_config(hidden_size: int = 32) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=96, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=128,
    )  # fmt: skip


FAMILIES = {
    "llama": (TagiForCausalLM, AutoModelForCausalLM, lambda: LlamaForCausalLM(llama_config())),
    "t5": (TagiModel, AutoModel, lambda: T5ForConditionalGeneration(tiny_text_config())),
}


def saved_backbone(family: str, folder: Path) -> Path:
    torch.manual_seed(0)
    FAMILIES[family][2]().save_pretrained(folder)
    return folder


def tagi_around(family: str, backbone_dir: Path, **config_kwargs):
    """A TAGI model around the saved backbone, its zero-initialised parts perturbed so they change the outputs."""
    torch.manual_seed(1)
    config_kwargs.setdefault("lora_rank", 4)
    config_kwargs.setdefault("fusion", "cross_attention")
    model = FAMILIES[family][0].from_backbone(str(backbone_dir), **config_kwargs).eval()
    with torch.no_grad():
        for param in model.generator.heads_b.parameters():
            param.normal_(0.0, 0.2)
        for module in model._fusion_modules():
            for name, param in module.named_parameters():
                if "gate" in name or name == "weight":
                    param.fill_(0.5)
    return model


def inputs(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 96, (3, 7), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["instruction_input_ids"] = torch.randint(3, 96, (3, 6), generator=g)
    if family == "t5":
        batch["labels"] = torch.randint(3, 96, (3, 4), generator=g)
    return batch


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def weight_names(folder: Path) -> list[str]:
    with safe_open(folder / "model.safetensors", "pt") as handle:
        return list(handle.keys())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("encoder", ["separate", "backbone"])
def test_generator_only_checkpoint_is_small_and_reloads_to_the_same_model(family, encoder, tmp_path):
    tagi_class, auto_class, _ = FAMILIES[family]
    backbone_dir = saved_backbone(family, tmp_path / "backbone")
    # a generator narrow beside its backbone, as on a real LM (SmolLM2: 135M backbone parameters)
    model = tagi_around(family, backbone_dir, instruction_encoder=encoder, hypernet_hidden_size=8)
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "generator", save_backbone=False)

    names = weight_names(tmp_path / "generator")
    assert names and not [n for n in names if n.startswith("backbone.")]
    assert sorted(names) == sorted(k for k in model.state_dict() if not k.startswith("backbone."))
    config = json.loads((tmp_path / "generator" / "config.json").read_text())
    assert config["backbone_in_checkpoint"] is False and config["base_model_name_or_path"] == str(backbone_dir)
    assert json.loads((tmp_path / "full" / "config.json").read_text()).get("backbone_in_checkpoint", True) is True
    # the remote-code bundle is the full checkpoint's, file for file
    assert {p.name for p in (tmp_path / "generator").glob("*.py")} == {
        p.name for p in (tmp_path / "full").glob("*.py")
    }
    sizes = {kind: (tmp_path / kind / "model.safetensors").stat().st_size for kind in ("full", "generator")}
    own_bytes = sum(
        v.numel() * v.element_size() for k, v in model.state_dict().items() if not k.startswith("backbone")
    )
    assert own_bytes < sizes["generator"] < own_bytes + 16_384  # its own weights and the file's header, no more
    if encoder == "backbone":  # without a copy of the backbone's reader, only the generator and fusion remain
        assert sizes["generator"] < sizes["full"] / 2, sizes

    loaded = auto_class.from_pretrained(tmp_path / "generator")
    assert type(loaded) is tagi_class and not loaded.training
    assert loaded.config.backbone_in_checkpoint is False
    assert loaded.trainable_parameters_report()["backbone"] == 0
    expected, got = model.state_dict(), loaded.state_dict()
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    batch = inputs(family)
    # Exact: both backbones come from the same file by the same loader, the other weights sit in fresh memory
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    wrong = {**batch, "instruction_input_ids": batch["instruction_input_ids"].flip(0)}
    assert (logits(loaded, wrong) - logits(model, batch)).abs().max() > 1e-3  # the instruction matters

    # saved again without the option: a full checkpoint, whatever the loaded one was
    loaded.save_pretrained(tmp_path / "again")
    assert any(n.startswith("backbone.") for n in weight_names(tmp_path / "again"))
    again = auto_class.from_pretrained(tmp_path / "again")
    assert again.config.backbone_in_checkpoint is True
    assert all(torch.equal(v, expected[k]) for k, v in again.state_dict().items())


def test_backbone_loading_kwargs_are_recorded_and_can_be_overridden(tmp_path):
    """What the backbone was loaded with (here `subfolder`, as `gguf_file` for SmolLM2) travels in the config; a
    local copy elsewhere is named with `backbone_name_or_path`, other arguments with `backbone_kwargs`."""
    repo = tmp_path / "repo"
    saved_backbone("llama", repo / "weights")
    model = TagiForCausalLM.from_backbone(str(repo), backbone_kwargs={"subfolder": "weights", "dtype": torch.float32})
    assert model.config.backbone_kwargs == {"subfolder": "weights", "dtype": "float32"}
    model.save_pretrained(tmp_path / "generator", save_backbone=False)
    config = json.loads((tmp_path / "generator" / "config.json").read_text())
    assert config["backbone_kwargs"] == {"subfolder": "weights", "dtype": "float32"}
    loaded = TagiForCausalLM.from_pretrained(tmp_path / "generator")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())

    # the named backbone is gone: a clear refusal, with the way out
    os.rename(repo, tmp_path / "copy")
    os.rename(tmp_path / "copy" / "weights", tmp_path / "copy" / "moved")
    with pytest.raises(OSError, match=r"generator-only checkpoint; its backbone `.*repo` .* could not be found"):
        TagiForCausalLM.from_pretrained(tmp_path / "generator")
    with pytest.raises(OSError, match="backbone_name_or_path="):
        TagiForCausalLM.from_pretrained(tmp_path / "generator")
    moved = TagiForCausalLM.from_pretrained(
        tmp_path / "generator", backbone_name_or_path=str(tmp_path / "copy"), backbone_kwargs={"subfolder": "moved"}
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in moved.state_dict().items())


def test_a_backbone_of_another_shape_is_refused(tmp_path):
    backbone_dir = saved_backbone("llama", tmp_path / "backbone")
    tagi_around("llama", backbone_dir).save_pretrained(tmp_path / "generator", save_backbone=False)
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(hidden_size=64)).save_pretrained(tmp_path / "wider")
    with pytest.raises(
        ValueError, match=r"does not match .*model.embed_tokens.weight: \(96, 32\) saved vs \(96, 64\)"
    ):
        TagiForCausalLM.from_pretrained(tmp_path / "generator", backbone_name_or_path=str(tmp_path / "wider"))
    saved_backbone("t5", tmp_path / "t5")  # another family: not a causal LM at all
    with pytest.raises(ValueError, match="generator-only checkpoint; its backbone .*t5"):
        TagiForCausalLM.from_pretrained(tmp_path / "generator", backbone_name_or_path=str(tmp_path / "t5"))


def test_save_backbone_false_refuses_what_it_cannot_name_and_loading_refuses_misplaced_arguments(tmp_path):
    nameless = TagiForCausalLM(TagiConfig(text_config=llama_config(), lora_rank=4))
    with pytest.raises(ValueError, match="`config.base_model_name_or_path` is empty"):
        nameless.save_pretrained(tmp_path / "nameless", save_backbone=False)
    assert not (tmp_path / "nameless").exists()
    model = tagi_around("llama", saved_backbone("llama", tmp_path / "backbone"))
    model.set_trainable(backbone=True)
    with pytest.raises(ValueError, match="the backbone out, but it is trainable"):
        model.save_pretrained(tmp_path / "trained", save_backbone=False)
    model.set_trainable()
    model.save_pretrained(tmp_path / "full")
    with pytest.raises(ValueError, match="holds its backbone: `backbone_name_or_path` and `backbone_kwargs` apply"):
        TagiForCausalLM.from_pretrained(tmp_path / "full", backbone_kwargs={"gguf_file": "x.gguf"})
    model.save_pretrained(tmp_path / "generator", save_backbone=False)
    with pytest.raises(TypeError, match=r"does not take \['device_map'\]"):
        TagiForCausalLM.from_pretrained(tmp_path / "generator", device_map="cpu")


def test_a_generator_only_checkpoint_loads_as_remote_code_without_the_package(tmp_path):
    backbone_dir = saved_backbone("llama", tmp_path / "backbone")
    model = tagi_around("llama", backbone_dir)
    model.save_pretrained(tmp_path / "generator", save_backbone=False)
    batch = inputs("llama")
    torch.save(batch, tmp_path / "inputs.pt")
    torch.save(logits(model, batch), tmp_path / "expected.pt")
    script = f"""
import sys
sys.modules["tagi_hf"] = None  # the package is not importable in this process
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "generator")!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
print("ok", (logits - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item())
"""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    word, diff = result.stdout.split()[-2:]
    assert word == "ok" and float(diff) <= 1e-6
    assert {p.name for p in (tmp_path / "generator").glob("*.py")} == {
        p.name for p in (Path(tagi_hf.__file__).parent / "modeling").glob("*.py")
    } - {"__init__.py", "modeling_tagi.py"}
