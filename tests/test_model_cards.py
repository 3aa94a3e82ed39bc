"""Model cards: the curated cards of intended releases (`model_cards/`) and the cards generated for generators,
adapters and teachers, each loaded with `huggingface_hub.ModelCard` and checked for the metadata the Hub needs."""

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download

from tagi_hf import GeneratedAdapter
from tagi_hf.hub import push_model_to_hub
from tagi_hf.hub.cards import (
    TEMPLATES,
    adapter_model_card,
    adapters_model_card,
    generator_model_card,
    teacher_model_card,
    teachers_model_card,
)
from tiny import tiny_model

# Cards of intended releases (no weights here); shipped checkpoints (a `shipped.json` beside) are checked by
# tests/test_shipped_checkpoints.py.
CURATED = sorted(
    p
    for p in (Path(__file__).parents[1] / "model_cards").glob("*/README.md")
    if not (p.parent / "shipped.json").exists()
)
BASE = "google/t5-base-lm-adapt"
LORA_CONFIG = {"r": 8, "lora_alpha": 16, "target_modules": ["q", "v"], "base_model_name_or_path": BASE}


def handmade_adapter(**overrides) -> GeneratedAdapter:
    """A deterministic 2-module adapter (no model needed)."""
    factors = {f"encoder.block.0.layer.0.SelfAttention.{p}": (torch.ones(2, 8), torch.zeros(8, 2)) for p in ("q", "v")}
    fields = dict(
        lora_factors=factors,
        lora_alpha=4.0,
        instruction="Reverse the order of the words.",
        base_model_name_or_path=BASE,
        generator_name_or_path="me/tagi-gen",
        generator_revision="0123abc",
    )
    return GeneratedAdapter(**{**fields, **overrides})


def check_metadata(card: ModelCard, library_name: str, base_model: str | list[str] | None) -> None:
    """What every card must carry; a PEFT card also links each base model with `base_model:adapter:<id>`."""
    card = ModelCard(str(card))  # parse the rendered text back, as the Hub would
    data = card.data
    assert data.license and data.library_name == library_name and "tagi" in data.tags
    assert data.base_model == base_model
    if library_name == "peft":
        bases = [base_model] if isinstance(base_model, str) else base_model
        assert all(f"base_model:adapter:{b}" in data.tags for b in bases)


# ------------------------------------------------------------------------------------------------ curated


def test_curated_cards_exist_for_the_intended_releases():
    assert {p.parent.name for p in CURATED} >= {"tagi-t5-base-lm-adapt-sni", "tagi-synthetic-demo"}


@pytest.mark.parametrize("path", CURATED, ids=lambda p: p.parent.name)
def test_curated_card_loads_with_required_metadata(path):
    card = ModelCard.load(path)
    base = BASE if "t5-base-lm-adapt" in path.parent.name else None
    check_metadata(card, "transformers", base)
    assert card.data.eval_results is None  # intended releases: no measured results are claimed in metadata
    assert "intended release" in card.text.lower() and "arxiv.org/abs/2406.12382" in card.text


def test_curated_card_is_pushed_verbatim(hub_env):
    model = tiny_model("none")
    path = next(p for p in CURATED if p.parent.name == "tagi-synthetic-demo")
    push_model_to_hub(model, "test-user/demo", model_card=path)
    assert Path(hf_hub_download("test-user/demo", "README.md")).read_bytes() == path.read_bytes()


# ------------------------------------------------------------------------------------------------ generated


def test_generated_cards_carry_the_required_metadata():
    adapter = handmade_adapter()
    check_metadata(adapter_model_card(adapter, license="apache-2.0"), "peft", BASE)
    other = handmade_adapter(base_model_name_or_path="google/t5-xl-lm-adapt")
    collection = adapters_model_card({"a": adapter, "b": other}, license="mit")
    check_metadata(collection, "peft", [BASE, "google/t5-xl-lm-adapt"])
    check_metadata(adapters_model_card({"a": adapter}, license="mit"), "peft", BASE)
    model = tiny_model("cross_attention")
    model.config.base_model_name_or_path = BASE
    check_metadata(generator_model_card(model, repo_id="me/gen", license="apache-2.0"), "transformers", BASE)
    check_metadata(teacher_model_card("task1", LORA_CONFIG, license="apache-2.0"), "peft", BASE)
    index = {"group_by": "category", "teachers": {"Question Answering": "question-answering"}}
    check_metadata(teachers_model_card(index, {"Question Answering": LORA_CONFIG}, license="apache-2.0"), "peft", BASE)


def test_no_license_is_invented():
    assert ModelCard(str(adapter_model_card(handmade_adapter()))).data.license is None
    assert ModelCard(str(generator_model_card(tiny_model("none")))).data.license is None


def test_adapter_card_key_lines_golden():
    """Golden lines of a rendered adapter card, in order (the rest of the prose may change freely)."""
    text = str(adapter_model_card(handmade_adapter(), repo_id="me/reverse", license="apache-2.0"))
    golden = [
        "---",
        "base_model: google/t5-base-lm-adapt",
        "library_name: peft",
        "license: apache-2.0",
        "- tagi",
        "- generated-adapter",
        "- base_model:adapter:google/t5-base-lm-adapt",
        '# TAGI generated adapter: "Reverse the order of the words."',
        "Reverse the order of the words.",
        "- Base model: `google/t5-base-lm-adapt`",
        "- Generator: `me/tagi-gen`, revision `0123abc`",
        "- LoRA rank 2, alpha 4.0 (scaling alpha / r), 2 adapted modules: encoder self-attention (q, v)",
        "- Instruction fusion: no: this is a plain LoRA adapter, exactly what the generator applies",
        'base = AutoModelForSeq2SeqLM.from_pretrained("google/t5-base-lm-adapt")',
        'model = PeftModel.from_pretrained(base, "me/reverse")',
        '# or, in one line: peft.AutoPeftModelForSeq2SeqLM.from_pretrained("me/reverse")',
    ]
    lines = text.splitlines()
    positions = [lines.index(line) for line in golden]  # ValueError names a missing line
    assert positions == sorted(positions)


def test_fusion_adapter_card_has_the_fusion_note_and_subfolder_snippet():
    adapter = handmade_adapter(instruction_states=torch.zeros(3, 8))
    text = str(adapter_model_card(adapter, repo_id="me/many", subfolder="reverse"))
    assert "**Fusion note.**" in text and "drops the fusion" in text
    assert 'model = PeftModel.from_pretrained(base, "me/many", subfolder="reverse")' in text
    assert 'path = snapshot_download("me/many") + "/reverse"' in text
    assert "AutoPeftModelForSeq2SeqLM" not in text  # it would pass `subfolder` on to the base model too


def test_unknown_provenance_is_said_not_guessed():
    adapter = handmade_adapter(instruction=None, generator_name_or_path=None, generator_revision=None)
    text = str(adapter_model_card(adapter))
    assert "(not recorded)" in text and "a local TagiModel (not published)" in text
    assert "revision `not recorded`" in text and '"<this repo or directory>"' in text


def test_collection_card_table_survives_awkward_instructions():
    adapters = {"a": handmade_adapter(instruction="Split on | then\nsort " + "word " * 40)}
    text = str(adapters_model_card(adapters, repo_id="me/many"))
    row = next(line for line in text.splitlines() if line.startswith("| `a` |"))
    assert "Split on \\| then sort word" in row and row.endswith("... |") and len(row) < 130


def test_teacher_card_shows_recorded_training_facts_only():
    text = str(teacher_model_card("task1", LORA_CONFIG, subfolder="task1", info={"num_instances": 40}))
    assert "Training instances: 40" in text and "loss" not in text.split("## Usage")[0].lower()
    with_loss = str(teacher_model_card("task1", LORA_CONFIG, info={"num_instances": 40, "train_loss": 0.123456}))
    assert "final training loss 0.1235" in with_loss


def test_every_template_is_shipped_and_used():
    names = {p.name for p in TEMPLATES.glob("*.md")}
    assert names == {"adapter_card.md", "adapters_card.md", "generator_card.md", "teacher_card.md", "teachers_card.md"}
    source = (Path(TEMPLATES).parent / "cards.py").read_text()
    assert all(f'"{name}"' in source for name in names)


def test_cached_rendering_equals_hub_from_template():
    """Cards come from templates compiled once per process; the text must be what `ModelCard.from_template` gives."""
    from tagi_hf.hub.cards import PAPER, PAPER_URL, TAGI_TAGS, _card_data

    adapter = handmade_adapter()
    ours = adapter_model_card(adapter)
    kwargs = dict(
        instruction=adapter.instruction, base_model=BASE, repo=None, subfolder=None, rank=adapter.rank,
        lora_alpha=adapter.lora_alpha, num_modules=2, modules="encoder self-attention (q, v)", fusion=False,
        generator="me/tagi-gen", generator_revision="0123abc", auto_class="AutoModelForSeq2SeqLM",
    )  # fmt: skip
    data = _card_data("peft", BASE, [*TAGI_TAGS, "generated-adapter"], None)
    hub = ModelCard.from_template(
        data, template_path=str(TEMPLATES / "adapter_card.md"), paper=PAPER, paper_url=PAPER_URL, **kwargs
    )
    assert str(ours) == str(hub)
    assert str(adapter_model_card(adapter)) == str(ours)  # a second render (cached template) is identical


def test_adapter_save_writes_the_card_it_is_given_else_the_model_folders_minimal_card(tmp_path):
    """The model folder writes its minimal card; the Hub side composes the full one and hands it over."""
    adapter = handmade_adapter()
    card = adapter_model_card(adapter, repo_id="me/adapters", subfolder="000-reverse")
    adapter.save_pretrained(tmp_path / "a", model_card=card)
    assert (tmp_path / "a" / "README.md").read_text() == str(card)
    assert "000-reverse" in str(card)
    adapter.save_pretrained(tmp_path / "b", model_card="---\nlibrary_name: peft\n---\n\nhand-written\n")
    assert (tmp_path / "b" / "README.md").read_text() == "---\nlibrary_name: peft\n---\n\nhand-written\n"
    adapter.save_pretrained(tmp_path / "c")
    minimal = ModelCard.load(tmp_path / "c" / "README.md")
    assert minimal.text != ModelCard(str(adapter_model_card(adapter))).text  # not the Hub side's card
    assert (minimal.data.library_name, minimal.data.base_model) == ("peft", BASE)
    assert f"base_model:adapter:{BASE}" in minimal.data.tags
    assert adapter.instruction.replace("\n", " ") in minimal.text and "drops the fusion" not in minimal.text


@pytest.mark.parametrize("generator", ["default", "paper"])
def test_generator_card_says_what_reads_the_instruction(generator):
    paper = dict(instruction_encoder="backbone", instruction_pooling="mean")
    model = tiny_model("cross_attention", **(paper if generator == "paper" else {}))
    text = str(generator_model_card(model, repo_id="me/gen"))
    if generator == "paper":
        assert "| instruction reader | the frozen backbone encoder; one masked mean for every module |" in text
    else:
        count = sum(p.numel() for p in model.instruction_encoder.parameters())
        assert f"a trainable copy of the backbone's encoder ({count:,} parameters)" in text
        assert "a learned query per (attention kind, layer) attends over its tokens" in text
