"""Safety: no loader in the package that can run code from a file, and no token in what we write or log."""

import ast
import io
import logging
from pathlib import Path

import pytest
from datasets import Dataset

from hub_server import FakeHub
from tagi_hf.data import TagiDataCollator
from tagi_hf.hub import push_adapter_to_hub, push_adapters_to_hub, push_model_to_hub, push_teachers_to_hub
from tagi_hf.training.arguments import TagiTrainingArguments
from tagi_hf.training.trainer import TagiTrainer
from tiny import tiny_model, tiny_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src" / "tagi_hf"
SECRET = "hf_tAgIsEcReT0123456789abcdefXYZ"

# ------------------------------------------------------------------------------------------ unsafe loaders
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "builtins.eval", "builtins.exec", "yaml.unsafe_load", "yaml.full_load"}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """`torch.load` for `torch.load`, `t.load` (import torch as t) or `load` (from torch import load)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loaders(source: str, filename: str = "<source>") -> list[str]:
    """Every place in `source` that can execute code from data: `file:line: what`."""
    tree, aliases, found = ast.parse(source, filename), {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names})
            found += [f"{filename}:{node.lineno}: import {a.name}" for a in node.names if a.name in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
            if node.module.split(".")[0] in UNSAFE_MODULES:
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name, where = _dotted(node.func, aliases), f"{filename}:{node.lineno}"
        if name in UNSAFE_CALLS:
            found.append(f"{where}: {name}(...)")
        elif name == "torch.load" and not _keyword_is(node, "weights_only", True):
            found.append(f"{where}: torch.load without weights_only=True")
        elif name == "yaml.load" and not any(
            k.arg == "Loader" and "Safe" in ast.unparse(k.value) for k in node.keywords
        ):
            found.append(f"{where}: yaml.load without a SafeLoader")
        elif name in ("numpy.load", "np.load") and _keyword_is(node, "allow_pickle", True):
            found.append(f"{where}: numpy.load with allow_pickle=True")
        if _keyword_is(node, "trust_remote_code", True):
            found.append(f"{where}: trust_remote_code=True")
    return found


def test_the_scanner_finds_each_unsafe_pattern():
    bad = """
import pickle
import torch as t
from yaml import load as yload
import numpy as np
from dill import loads
t.load("x.pt")
t.load("x.pt", weights_only=False)
yload(open("c.yaml"))
np.load("a.npy", allow_pickle=True)
eval("1 + 1")
exec("x = 1")
AutoModel.from_pretrained("repo", trust_remote_code=True)
"""
    found = unsafe_loaders(bad)
    expected = ["import pickle", "from dill import", "torch.load without", "torch.load without", "yaml.load without",
                "allow_pickle=True", "eval(...)", "exec(...)", "trust_remote_code=True"]  # fmt: skip
    assert len(found) == len(expected)
    for what in expected:
        assert any(what in line for line in found), what
    good = """
import torch, yaml
torch.load("x.pt", weights_only=True)
yaml.safe_load("a: 1")
yaml.load("a: 1", Loader=yaml.SafeLoader)
model.eval()
AutoModel.from_pretrained("repo", trust_remote_code=False)
"""
    assert unsafe_loaders(good) == []


def test_the_package_has_no_unsafe_loader():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20 and SRC / "modeling" / "adapter.py" in files
    found = [hit for path in files for hit in unsafe_loaders(path.read_text(), str(path.relative_to(SRC)))]
    assert found == []


# ------------------------------------------------------------------------------------------ no token written
@pytest.fixture
def hub_server():
    """The fake Hub of conftest, accepting only SECRET (picked up by the `hub_env` fixture)."""
    with FakeHub(token=SECRET) as server:
        yield server


@pytest.fixture
def debug_logs():
    """Everything our libraries log at DEBUG level, in one buffer."""
    buffer, handler = io.StringIO(), None
    handler = logging.StreamHandler(buffer)
    loggers = [
        logging.getLogger(n) for n in ("tagi_hf", "transformers", "huggingface_hub", "peft", "httpx", "urllib3")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield buffer
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pushes_write_and_log_no_token(hub_env, debug_logs, tmp_path, capsys):
    from test_hub import BASE, generated, write_teacher_bank

    model, adapters = generated("cross_attention", base=BASE)
    push_model_to_hub(model, "test-user/generator", token=SECRET)  # explicit token
    push_adapter_to_hub(adapters[0], "test-user/one")  # HF_TOKEN from the environment
    push_adapters_to_hub(adapters, "test-user/many")
    write_teacher_bank(tmp_path / "bank")
    push_teachers_to_hub(tmp_path / "bank", "test-user/teachers")
    model.save_pretrained(tmp_path / "saved")
    assert any(r.authorized for r in hub_env.requests)  # the token was used: it was sent where it belongs
    pushed = {
        f"{repo}/{path}": content
        for repo in ("test-user/generator", "test-user/one", "test-user/many", "test-user/teachers")
        for path, content in hub_env.files(repo).items()
    }
    assert len(pushed) > 20
    written = {**pushed, **_tree_bytes(tmp_path)}
    leaks = [path for path, content in written.items() if SECRET.encode() in content]
    assert leaks == []
    captured = capsys.readouterr()
    assert debug_logs.getvalue() and SECRET not in debug_logs.getvalue() + captured.out + captured.err


def test_checkpoints_hold_no_hub_token(tmp_path, debug_logs):
    """`training_args.bin` is a pickle of the arguments: TagiTrainer saves it without `hub_token`."""
    rows = [{"task": "t", "definition": "reverse the order of words", "positive_examples": [], "input": "cat dog",
             "outputs": ["dog cat"]}] * 4  # fmt: skip
    args = TagiTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, save_steps=1, hub_token=SECRET,
                                 per_device_train_batch_size=2, lambda_kl=0.0, lambda_ins=0.0, use_cpu=True,
                                 report_to=[], logging_steps=1, disable_tqdm=True)  # fmt: skip
    trainer = TagiTrainer(model=tiny_model("none").train(), args=args, train_dataset=Dataset.from_list(rows),
                          data_collator=TagiDataCollator(tiny_tokenizer(), teacher_inputs=False))  # fmt: skip
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    files = _tree_bytes(tmp_path)
    assert sum(p.endswith("training_args.bin") for p in files) == 3  # two checkpoints and the final save
    assert [path for path, content in files.items() if SECRET.encode() in content] == []
    assert SECRET not in debug_logs.getvalue()
    assert trainer.args.hub_token == SECRET  # still there for a push from the trainer
