"""The README's quickstart works as printed (issue 25): its code, run from a fresh folder beside the shipped TAGI
model, prints exactly the text block that follows it, and its instruction is a held-out task of the suite that model
was trained on (a dev or test task, never a train task)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from tagi_hf.data.synthetic import build_synthetic_tasks

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> tuple[str, str]:
    """The code block of the README's "Quickstart" section and the `text` block it says that code prints."""
    section = (ROOT / "README.md").read_text().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    printed = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    return code, printed


def test_the_quickstart_prints_what_the_readme_says(tmp_path, monkeypatch, capsys):
    code, printed = quickstart()
    assert "model_cards/tagi-synthetic-def" in code  # the shipped model, not one the user has to train first
    (tmp_path / "model_cards").symlink_to(ROOT / "model_cards")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md quickstart", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == printed


def test_the_quickstart_instruction_is_a_held_out_task():
    code, _ = quickstart()
    calls = [
        n
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "format_instruction"
    ]
    assert len(calls) == 1
    instruction = ast.literal_eval(calls[0].args[0])
    seed = json.loads((ROOT / "model_cards/tagi-synthetic-def/shipped.json").read_text())["settings"]["seed"]
    tasks = build_synthetic_tasks(seed)
    by_definition = {t.definition: split for split in tasks for t in tasks[split]}
    assert by_definition.get(instruction) in ("dev", "test"), instruction


def test_the_shipped_card_shows_the_same_code():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ship_checkpoints import QUICKSTART

    code, printed = quickstart()
    assert QUICKSTART == code
    assert f"prints `{printed.strip()}`" in (ROOT / "model_cards/tagi-synthetic-def/README.md").read_text()
