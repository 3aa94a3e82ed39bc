"""Pushing generators, generated adapters and teacher LoRAs to a fake Hub on 127.0.0.1, and loading them back.

Every test pushes with the library's real calls (`huggingface_hub` client), pulls back with the real loaders
(`from_pretrained`, `PeftModel.from_pretrained`, `hf_hub_download`) and asserts on what the server received.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download, snapshot_download
from peft import AutoPeftModelForSeq2SeqLM, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel, AutoTokenizer, T5ForConditionalGeneration

from tagi_hf import TagiModel
from tagi_hf.hub import (
    HubUploadError,
    generate_and_push,
    load_adapters,
    push_adapter_to_hub,
    push_adapters_to_hub,
    push_generated,
    push_model_to_hub,
    push_teachers_to_hub,
    save_adapters,
)
from tiny import FLOAT32_ROUNDING, batch, tiny_model, tiny_text_config, tiny_tokenizer

BASE, GEN, REPO = "test-user/tiny-t5", "test-user/tagi-generator", "test-user/adapters"
INSTRUCTIONS = ["reverse the order of words", "sort in alphabetical order", "keep only first 2 words"]


def plain_inputs() -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch().items() if not k.startswith("instruction")}


def instruction_inputs() -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch().items() if k.startswith("instruction")}


@torch.no_grad()
def logits(model, **extra) -> torch.Tensor:
    return model(**plain_inputs(), **extra).logits  # (batch, target length, vocab)


def generated(fusion: str = "none", instructions=INSTRUCTIONS, base: str | None = BASE):
    """A tiny TagiModel and its adapters for `instructions`, pointing at `base`."""
    model = tiny_model(fusion)
    adapters = model.generate_adapter(list(instructions), tokenizer=tiny_tokenizer())
    return model, [dataclasses.replace(a, base_model_name_or_path=base) for a in adapters]


def push_backbone(model: TagiModel) -> T5ForConditionalGeneration:
    """Pushes the model's backbone as a plain T5 (the adapters' base) and returns it loaded from the Hub."""
    model.backbone.push_to_hub(BASE)
    return T5ForConditionalGeneration.from_pretrained(BASE).eval()


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def card_of(repo_id: str, subfolder: str | None = None) -> ModelCard:
    return ModelCard.load(hf_hub_download(repo_id, "README.md", subfolder=subfolder))


# ------------------------------------------------------------------------------------------------ generator


def test_generator_push_then_load_gives_identical_outputs(hub_env, tmp_path):
    model = tiny_model("cross_attention")
    info = push_model_to_hub(model, GEN, license="apache-2.0", tokenizer=tiny_tokenizer())

    [commit] = hub_env.commits(GEN)
    assert info.oid == commit.oid and commit.message == "Upload TAGI generator"
    code = {"modeling_tagi.py", "configuration_tagi.py", "fusion.py", "lora.py", "generator.py", "adapter.py"}
    assert {"config.json", "model.safetensors", "README.md", *code} <= set(commit.added)
    assert commit.lfs_paths == ["model.safetensors"]
    model.save_pretrained(tmp_path / "local")
    for name in ("model.safetensors", "config.json", "modeling_tagi.py"):
        assert hub_env.files(GEN)[name] == (tmp_path / "local" / name).read_bytes(), name

    instructions = instruction_inputs()
    expected = logits(model, **instructions)
    for loader in (TagiModel, AutoModel):
        loaded = loader.from_pretrained(GEN)
        assert type(loaded) is TagiModel and not loaded.training
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())  # the same bytes
        # weights over the mapped file: rounded otherwise on some CPUs (see tiny.FLOAT32_ROUNDING)
        torch.testing.assert_close(logits(loaded, **instructions), expected, **FLOAT32_ROUNDING)
    text = INSTRUCTIONS[0]
    assert AutoTokenizer.from_pretrained(GEN)(text).input_ids == tiny_tokenizer()(text).input_ids  # same commit
    card = card_of(GEN)
    assert card.data.library_name == "transformers" and card.data.base_model == "tiny-t5"
    assert card.data.license == "apache-2.0" and "tagi" in card.data.tags
    assert 'AutoModel.from_pretrained("test-user/tagi-generator")' in card.text
    assert not hub_env.calls("unhandled")


def test_generator_loads_with_remote_code_without_the_package(hub_env, run_against_hub, tmp_path):
    model = tiny_model("cross_attention")
    push_model_to_hub(model, GEN)
    torch.save(batch(), tmp_path / "inputs.pt")
    torch.save(logits(model, **instruction_inputs()), tmp_path / "out.pt")
    stdout = run_against_hub(
        f"""
        import sys
        sys.modules["tagi_hf"] = None  # the package cannot be imported in this process
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained("{GEN}", trust_remote_code=True)
        with torch.no_grad():
            out = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
        expected = torch.load({str(tmp_path / "out.pt")!r})
        print(type(model).__module__.split(".")[0], torch.allclose(out, expected, **{FLOAT32_ROUNDING!r}))
        """
    )  # weights over the mapped file: equal up to rounding, see tiny.FLOAT32_ROUNDING
    assert stdout.split() == ["transformers_modules", "True"]
    fetched = {call.path.rsplit("/", 1)[-1] for call in hub_env.calls("resolve")}
    assert {"modeling_tagi.py", "fusion.py", "lora.py"} <= fetched  # the remote code came from the fake Hub


# ------------------------------------------------------------------------------------------------ adapters


def test_adapter_push_is_one_commit_that_peft_loads(hub_env, tmp_path):
    model, (adapter, *_) = generated("none")
    base = push_backbone(model)
    push_adapter_to_hub(adapter, REPO, generator_repo=GEN, generator_revision="v1.0")

    [commit] = hub_env.commits(REPO)
    files = {"README.md", "adapter_config.json", "adapter_model.safetensors", "tagi_adapter.json"}
    assert set(commit.added) == files and commit.lfs_paths == ["adapter_model.safetensors"]
    adapter.save_pretrained(tmp_path / "local")
    local = tree_bytes(tmp_path / "local")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert hub_env.files(REPO)[name] == local[name], name
    provenance = json.loads(hub_env.files(REPO)["tagi_adapter.json"])
    assert (provenance["generator_name_or_path"], provenance["generator_revision"]) == (GEN, "v1.0")

    expected = logits(model, adapter=adapter)
    from_hub = PeftModel.from_pretrained(base, REPO).eval()
    assert (logits(from_hub) - expected).abs().max() <= 1e-5
    # Exact: both bases are loaded from the same file (the same offsets), PEFT copies the LoRA weights into its own
    assert torch.equal(logits(AutoPeftModelForSeq2SeqLM.from_pretrained(REPO).eval()), logits(from_hub))
    assert not torch.allclose(logits(T5ForConditionalGeneration.from_pretrained(BASE)), expected)  # it matters
    card = card_of(REPO)
    assert card.data.library_name == "peft" and card.data.base_model == BASE
    assert {"tagi", f"base_model:adapter:{BASE}"} <= set(card.data.tags)
    assert INSTRUCTIONS[0] in card.text and f"`{GEN}`, revision `v1.0`" in card.text
    assert f'PeftModel.from_pretrained(base, "{REPO}")' in card.text


def test_adapter_push_to_hub_is_the_packages_push(hub_env, monkeypatch):
    from tagi_hf.modeling import adapter as adapter_module

    model, (adapter, *_) = generated("none")
    push_backbone(model)
    adapter.push_to_hub(REPO, generator_repo=GEN, commit_message="as PEFT users push")
    push_adapter_to_hub(adapter, "test-user/direct", generator_repo=GEN)
    [commit] = hub_env.commits(REPO)
    assert commit.message == "as PEFT users push"
    direct, pushed = hub_env.files("test-user/direct"), hub_env.files(REPO)
    assert set(pushed) == set(direct) and pushed["adapter_model.safetensors"] == direct["adapter_model.safetensors"]
    assert pushed["README.md"] == direct["README.md"].replace(b"test-user/direct", REPO.encode())

    monkeypatch.setattr(adapter_module, "_ADAPTER_PUSHER", None)  # a remote-code process without the package
    with pytest.raises(ImportError, match=r"needs the tagi-hf package .*`adapter.save_pretrained\(path\)` works"):
        adapter.push_to_hub("test-user/other")
    assert ("model", "test-user/other") not in hub_env.repos  # refused before any request


def test_many_adapters_in_one_commit_each_loads_from_its_subfolder(hub_env):
    model, adapters = generated("cross_attention")
    push_backbone(model)
    push_adapters_to_hub(adapters, REPO, names=["reverse", "sort", "first"], generator_repo=GEN)

    [commit] = hub_env.commits(REPO)
    assert commit.message == "Upload 3 TAGI generated adapters"
    assert len(commit.lfs_paths) == 6  # LoRA weights + instruction states (fusion) per adapter
    index = json.loads(hub_env.files(REPO)["index.json"])["adapters"]
    assert {name: (e["subfolder"], e["instruction"]) for name, e in index.items()} == {
        "reverse": ("reverse", INSTRUCTIONS[0]),
        "sort": ("sort", INSTRUCTIONS[1]),
        "first": ("first", INSTRUCTIONS[2]),
    }
    for name, adapter in zip(index, adapters):
        peft_model = PeftModel.from_pretrained(fresh_base(), REPO, subfolder=name).eval()
        # Exact: the same base file under both, and PEFT copies the LoRA weights into its own parameters either way
        assert torch.equal(logits(peft_model), logits(adapter.to_peft_model(fresh_base())))  # the LoRA part
        assert card_of(REPO, name).data.base_model == BASE
    pulled = load_adapters(REPO)
    assert list(pulled) == ["reverse", "sort", "first"]
    for adapter, loaded in zip(adapters, pulled.values()):  # exactly: from_pretrained copies into fresh memory
        assert torch.equal(logits(model, adapter=loaded), logits(model, adapter=adapter))
        assert loaded.generator_name_or_path == GEN
    assert "| `sort` | sort in alphabetical order |" in card_of(REPO).text


def fresh_base() -> T5ForConditionalGeneration:
    return T5ForConditionalGeneration.from_pretrained(BASE).eval()  # from the local cache after the first call


def test_push_generated_pushes_what_the_cli_wrote(hub_env, tmp_path):
    model, adapters = generated("none", base="tiny-t5")
    push_backbone(model)
    adapters[0].save_pretrained(tmp_path / "single")
    save_adapters(adapters[:2], tmp_path / "many", names=["adapter-000", "adapter-001"])  # the CLI's layout
    before = tree_bytes(tmp_path)

    push_generated(tmp_path / "single", "test-user/single", base_model_name_or_path=BASE)
    push_generated(tmp_path / "many", REPO, base_model_name_or_path=BASE)
    assert tree_bytes(tmp_path) == before  # only read
    single = hub_env.files("test-user/single")
    assert single["adapter_model.safetensors"] == before["single/adapter_model.safetensors"]
    assert json.loads(single["adapter_config.json"])["base_model_name_or_path"] == BASE
    assert sorted(json.loads(hub_env.files(REPO)["index.json"])["adapters"]) == ["adapter-000", "adapter-001"]
    assert (
        hub_env.files(REPO)["adapter-001/adapter_model.safetensors"]
        == before["many/adapter-001/adapter_model.safetensors"]
    )
    assert len(hub_env.commits(REPO)) == len(hub_env.commits("test-user/single")) == 1


def test_generate_and_push_and_save_adapters_layout(hub_env, tmp_path):
    model = tiny_model("none")
    model.config.base_model_name_or_path = BASE
    generate_and_push(model, tiny_tokenizer(), INSTRUCTIONS[:2], REPO)
    names = list(json.loads(hub_env.files(REPO)["index.json"])["adapters"])
    assert names == ["000-reverse-the-order-of-words", "001-sort-in-alphabetical-order"]
    save_adapters(list(load_adapters(REPO).values()), tmp_path / "copy", names=names)
    assert set(tree_bytes(tmp_path / "copy")) == {p for p in hub_env.files(REPO) if p != ".gitattributes"}
    generate_and_push(model, tiny_tokenizer(), INSTRUCTIONS[2], "test-user/one")
    assert json.loads(hub_env.files("test-user/one")["tagi_adapter.json"])["instruction"] == INSTRUCTIONS[2]


# ------------------------------------------------------------------------------------------------ teachers


def tiny_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    return T5ForConditionalGeneration(tiny_text_config()).eval()


def write_teacher_bank(root: Path) -> dict[str, PeftModel]:
    """Two PEFT LoRA teachers in the bank layout; the second's config does not name its base (peft writes None)."""
    teachers = {}
    for i, (key, sub) in enumerate([("task_a", "task_a"), ("task b", "task_b")]):
        config = LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"], r=2, init_lora_weights=False)
        model = tiny_t5()
        torch.manual_seed(10 + i)
        teachers[key] = get_peft_model(model, config).eval()
        teachers[key].save_pretrained(root / sub)
    config_a = json.loads((root / "task_a" / "adapter_config.json").read_text())
    (root / "task_a" / "adapter_config.json").write_text(json.dumps({**config_a, "base_model_name_or_path": BASE}))
    (root / "task_a" / "tagi_teacher.json").write_text(json.dumps({"key": "task_a", "num_instances": 12}))
    index = {"group_by": "task", "base_model_name_or_path": BASE, "teachers": {"task_a": "task_a", "task b": "task_b"}}
    (root / "teachers.json").write_text(json.dumps(index))
    return teachers


def test_teacher_bank_push_is_one_commit_and_each_teacher_loads(hub_env, tmp_path):
    teachers = write_teacher_bank(tmp_path / "bank")
    before = tree_bytes(tmp_path / "bank")
    push_teachers_to_hub(tmp_path / "bank", "test-user/teachers", license="apache-2.0")

    assert tree_bytes(tmp_path / "bank") == before
    [commit] = hub_env.commits("test-user/teachers")
    assert {"teachers.json", "README.md", "task_a/README.md", "task_b/README.md"} <= set(commit.added)
    assert sorted(commit.lfs_paths) == ["task_a/adapter_model.safetensors", "task_b/adapter_model.safetensors"]
    pushed = hub_env.files("test-user/teachers")
    assert json.loads(pushed["task_b/adapter_config.json"])["base_model_name_or_path"] == BASE  # filled in
    assert json.loads(before["task_b/adapter_config.json"])["base_model_name_or_path"] is None
    for key, sub in [("task_a", "task_a"), ("task b", "task_b")]:
        loaded = PeftModel.from_pretrained(tiny_t5(), "test-user/teachers", subfolder=sub).eval()
        assert torch.equal(logits(loaded), logits(teachers[key]))  # in-memory bases; PEFT copies the LoRA weights
        card = card_of("test-user/teachers", sub)
        assert card.data.base_model == BASE and "teacher-adapter" in card.data.tags and f"`{key}`" in card.text
    assert "Training instances: 12" in card_of("test-user/teachers", "task_a").text
    top = card_of("test-user/teachers")
    assert top.data.license == "apache-2.0" and f"base_model:adapter:{BASE}" in top.data.tags
    assert "| `task b` | `task_b` |" in top.text


def test_pulled_teacher_bank_is_readable_by_the_teacher_bank(hub_env, tmp_path):
    from tagi_hf.teachers import TeacherBank

    write_teacher_bank(tmp_path / "bank")
    push_teachers_to_hub(tmp_path / "bank", "test-user/teachers")
    bank = TeacherBank.from_directory(snapshot_download("test-user/teachers"))
    assert "task b" in bank and "task_a" in bank and bank.teacher("task b").rank == 2


# ------------------------------------------------------------------------------------------------ errors


def test_no_token_is_refused_before_any_request(hub_env, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    model, adapters = generated("none")
    write_teacher_bank(tmp_path / "bank")
    pushes = [
        lambda: push_model_to_hub(model, GEN),
        lambda: push_adapter_to_hub(adapters[0], REPO),
        lambda: push_adapters_to_hub(adapters, REPO),
        lambda: push_teachers_to_hub(tmp_path / "bank", REPO),
        lambda: generate_and_push(model, tiny_tokenizer(), "x", REPO, base_model_name_or_path=BASE),
    ]
    for push in pushes:
        with pytest.raises(ValueError, match="needs a write token"):
            push()
    assert hub_env.requests == []


@pytest.mark.parametrize("base", [None, "", "/local/checkpoints/t5", "./t5"])
def test_adapter_without_a_hub_base_model_is_refused_before_any_request(hub_env, base):
    _, adapters = generated("none", base=base)
    with pytest.raises(ValueError, match="`base_model_name_or_path`"):
        push_adapter_to_hub(adapters[0], REPO)
    with pytest.raises(ValueError, match="`base_model_name_or_path`"):
        push_adapters_to_hub([dataclasses.replace(adapters[0], base_model_name_or_path=BASE), adapters[1]], REPO)
    assert hub_env.requests == []


def test_teacher_bank_without_base_model_is_refused(hub_env, tmp_path):
    write_teacher_bank(tmp_path / "bank")
    index = json.loads((tmp_path / "bank" / "teachers.json").read_text())
    (tmp_path / "bank" / "teachers.json").write_text(json.dumps({**index, "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="teacher `task b`.*`base_model_name_or_path`"):
        push_teachers_to_hub(tmp_path / "bank", REPO)
    assert hub_env.requests == []


def test_existing_repo_gets_a_second_commit(hub_env):
    _, adapters = generated("none")
    hub_env.create_repo(REPO)
    push_adapter_to_hub(adapters[0], REPO)
    push_adapter_to_hub(adapters[1], REPO, commit_message="second adapter")
    assert [c.message for c in hub_env.commits(REPO)] == ["Upload TAGI generated adapter", "second adapter"]
    pushed = json.loads(hub_env.files(REPO)["tagi_adapter.json"])
    assert pushed["instruction"] == INSTRUCTIONS[1]
    push_adapter_to_hub(adapters[1], REPO)  # unchanged content: no error (and nothing new to commit)


def test_push_to_a_branch_of_a_private_repo(hub_env):
    _, adapters = generated("none")
    push_adapter_to_hub(adapters[0], REPO, revision="dev", private=True)
    assert hub_env.repo(REPO).private
    assert "adapter_config.json" in hub_env.files(REPO, "dev")
    assert "adapter_config.json" not in hub_env.files(REPO)


def test_failed_upload_lists_the_files_and_leaves_local_files_untouched(hub_env, tmp_path):
    _, adapters = generated("none")
    save_adapters(adapters[:2], tmp_path / "out", names=["a", "b"])
    before = tree_bytes(tmp_path)
    hub_env.fail_commits = True
    with pytest.raises(HubUploadError) as error:
        push_generated(tmp_path / "out", REPO)

    per_adapter = ("README.md", "adapter_config.json", "adapter_model.safetensors", "tagi_adapter.json")
    expected = sorted(["README.md", "index.json", *(f"{n}/{f}" for n in "ab" for f in per_adapter)])
    assert error.value.files == expected and error.value.repo_id == REPO
    assert all(f"  - {path}" in str(error.value) for path in expected)
    assert "500" in str(error.value)
    assert tree_bytes(tmp_path) == before
    assert hub_env.commits(REPO) == [] and [c.status for c in hub_env.calls("commit")] == [500]

    hub_env.fail_commits = False  # fixing the cause and pushing again works
    push_generated(tmp_path / "out", REPO)
    assert len(hub_env.commits(REPO)) == 1
    assert hub_env.files(REPO)["a/adapter_model.safetensors"] == before["out/a/adapter_model.safetensors"]


def test_bad_names_and_bad_banks_are_refused(tmp_path):
    _, adapters = generated("none")
    for names, message in [(["a"], "2 adapters"), (["a", "a"], "duplicates"), (["a", "../b"], "subfolder name")]:
        with pytest.raises(ValueError, match=message):
            save_adapters(adapters[:2], tmp_path / "out", names=names)
    with pytest.raises(ValueError, match="teachers.json"):
        push_teachers_to_hub(tmp_path, REPO)
    (tmp_path / "teachers.json").write_text(json.dumps({"group_by": "task", "teachers": {"k": "../x"}}))
    with pytest.raises(ValueError, match="not inside the bank"):
        push_teachers_to_hub(tmp_path, REPO)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="holds no adapters"):
        push_generated(tmp_path, REPO)
    with pytest.raises(ValueError, match="`generator_repo` must be"):
        push_adapter_to_hub(adapters[0], REPO, generator_repo=str(tmp_path))
