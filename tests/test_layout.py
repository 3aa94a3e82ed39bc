"""The package's layout is its architecture: the model bundle imports only itself, the other subpackages depend one
way (model <- data <- training, teachers, evaluation, hub <- recipes <- cli), and no module reaches into another's
private names. Parsed from the source (function-level imports included, as transformers' remote-code loader
follows them), so a wrong-way import fails here before it breaks a user."""

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import tagi_hf

SRC = Path(tagi_hf.__file__).parent
BUNDLE = SRC / "modeling"
# What each subpackage may import from the others (its own modules are always allowed).
ALLOWED = {
    "modeling": set(),
    "data": {"modeling"},
    "training": {"modeling", "data"},
    "teachers": {"modeling", "data", "training"},
    "evaluation": {"modeling", "data", "teachers"},
    "hub": {"modeling", "teachers"},
    "recipes": {"modeling", "data", "training", "teachers", "evaluation", "hub"},
    "cli": {"modeling", "data", "training", "teachers", "evaluation", "hub", "recipes", ""},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """`(line, absolute module, imported names)` of every tagi_hf import in `path`, at any depth."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "tagi_hf":
                found.append((node.lineno, module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "tagi_hf"]
    return found


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


SOURCES = [p for p in sorted(SRC.rglob("*.py")) if p.parent != SRC]  # the top-level __init__ / _compat join all


def test_the_parser_sees_function_level_and_relative_imports():
    found = {module for _, module, _ in _imports(SRC / "cli" / "main.py")}
    assert {"tagi_hf.evaluation.runner", "tagi_hf.cli.arguments", "tagi_hf"} <= found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path):
    own = _subpackage(_module_name(path))
    wrong = [
        f"{path.relative_to(SRC)}:{line} imports {module}"
        for line, module, names in _imports(path)
        if (other := _subpackage(module)) != own
        and other not in ALLOWED[own]
        and not (other == "" and set(names) <= {"__version__"})
    ]
    assert wrong == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_another_modules_private_names(path):
    private = [
        f"{path.relative_to(SRC)}:{line} imports {name} from {module}"
        for line, module, names in _imports(path)
        for name in names
        if name.startswith("_") and name != "__version__"
    ]
    assert private == []


def test_the_model_bundle_imports_only_itself():
    """What `save_pretrained` ships must run without the package: sibling imports only, never `..` or `tagi_hf.`."""
    outside = []
    for path in sorted(BUNDLE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level > 1 or (node.module or "").startswith("tagi_hf")):
                outside.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.startswith("tagi_hf") for a in node.names):
                outside.append(f"{path.name}:{node.lineno}")
    assert outside == []


def test_top_level_exports_what_users_reach_for():
    from tagi_hf.data import TagiDataCollator
    from tagi_hf.teachers import TeacherBank
    from tagi_hf.training import TagiTrainer, TagiTrainingArguments

    assert (tagi_hf.TagiTrainer, tagi_hf.TagiTrainingArguments) == (TagiTrainer, TagiTrainingArguments)
    assert (tagi_hf.TagiDataCollator, tagi_hf.TeacherBank) == (TagiDataCollator, TeacherBank)
    assert {"TagiTrainer", "TagiTrainingArguments", "TagiDataCollator", "TeacherBank"} <= set(tagi_hf.__all__)
    assert set(tagi_hf.__all__) <= set(dir(tagi_hf))
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        tagi_hf.NotAThing  # noqa: B018


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("tagi_hf.trainer", "tagi_hf.training.trainer", "TagiTrainer"),
        ("tagi_hf.pipeline", "tagi_hf.recipes.synthetic", "DemoSettings"),
        ("tagi_hf.streaming", "tagi_hf.hub.collections", "save_adapters"),
        ("tagi_hf.modeling_tagi", "tagi_hf.modeling.modeling_tagi", "TagiModel"),
    ],
)
def test_old_module_paths_still_import_the_same_objects_with_a_warning(old, new, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert any(issubclass(w.category, FutureWarning) and new in str(w.message) for w in caught)


def test_train_tagi_at_its_old_place_is_the_same_function_with_a_warning():
    import tagi_hf.recipes.synthetic as recipe
    from tagi_hf.training.run import train_tagi

    with pytest.warns(FutureWarning, match="moved to `tagi_hf.training.run.train_tagi`"):
        assert recipe.train_tagi is train_tagi
    with pytest.raises(AttributeError, match="has no attribute 'not_there'"):
        recipe.not_there  # noqa: B018
