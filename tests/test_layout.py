"""The package's layout is its architecture: the model bundle imports only itself, the other subpackages depend one
way (model <- data <- training, teachers, evaluation, hub <- recipes <- cli), the import graph has no cycle, and no
module reaches into another's private names. Parsed from the source (function-level imports included, as
transformers' remote-code loader follows them; imports by name, `importlib.import_module("tagi_hf.x")`, too), so a
wrong-way import fails here before it breaks a user."""

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


def _is_by_name_import(node: ast.AST) -> bool:
    """`importlib.import_module(...)`, `import_module(...)` or `__import__(...)`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in ("import_module", "__import__")


def _by_name_imports(path: Path) -> list[tuple[int, str | None]]:
    """`(line, module)` of every by-name import in `path`; `module` is `None` when it is not a string literal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if _is_by_name_import(node):
            arg = node.args[0] if node.args else None
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            found.append((node.lineno, arg.value if literal else None))
    return found


MODULES = {_module_name(p) for p in SRC.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    """`{module: modules it imports}` over the whole package. `from package import name` counts as importing the
    package and, when `name` is a module, that module. A module that imports by name with a computed argument (a
    table of redirects, lazy exports) counts as importing every package module its string literals name. Edges a
    package's `__init__` gets implicitly (Python runs it before any of its modules) are not drawn: they would make
    every package a cycle with its own modules."""
    graph = {}
    for path in sorted(SRC.rglob("*.py")):
        name, edges = _module_name(path), set()
        for _, module, names in _imports(path):
            edges.add(module)
            edges.update(f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES)
        by_name = _by_name_imports(path)
        edges.update(module for _, module in by_name if module is not None)
        if any(module is None for _, module in by_name):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            edges.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in MODULES)
        graph[name] = {e for e in edges if e in MODULES and e != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as `[a, b, ..., a]`, or `[]`."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


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


def test_the_model_bundle_imports_nothing_by_name():
    """An import by name (`importlib.import_module("tagi_hf.hub")`) is invisible to the remote-code loader and to
    the checks above, and from the model it would run back up the layers: the bundle makes none of the package, and
    none whose target it does not spell out."""
    found = [
        f"{path.name}:{line} imports {module or 'a computed name'} by name"
        for path in sorted(BUNDLE.glob("*.py"))
        for line, module in _by_name_imports(path)
        if module is None or module.split(".")[0] == "tagi_hf"
    ]
    assert found == []


def test_the_checks_see_imports_by_name_and_find_cycles(tmp_path):
    source = 'import importlib\nhub = importlib.import_module("tagi_hf.hub")\nx = __import__(name)\n'
    (tmp_path / "m.py").write_text(source)
    assert _by_name_imports(tmp_path / "m.py") == [(2, "tagi_hf.hub"), (3, None)]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    graph = _graph()
    assert "tagi_hf.training" in graph["tagi_hf"]  # the lazy exports of the top-level package, by name
    assert "tagi_hf.training.trainer" in graph["tagi_hf._compat"]  # the old paths' redirects, by name
    assert {"tagi_hf._compat", "tagi_hf.modeling"} <= graph["tagi_hf"]  # `from . import _compat`, `from .modeling`


def test_the_import_graph_has_no_cycle():
    """Modules import each other one way only, by-name imports included: a cycle would make the import order
    matter and the layers meaningless (the model importing the Hub code that imports the model, say)."""
    assert _cycle(_graph()) == []


def test_top_level_exports_what_users_reach_for():
    from tagi_hf.data import TagiDataCollator
    from tagi_hf.teachers import TeacherBank
    from tagi_hf.training import TagiTrainer, TagiTrainingArguments

    assert (tagi_hf.TagiTrainer, tagi_hf.TagiTrainingArguments) == (TagiTrainer, TagiTrainingArguments)
    assert (tagi_hf.TagiDataCollator, tagi_hf.TeacherBank) == (TagiDataCollator, TeacherBank)
    assert {"TagiTrainer", "TagiTrainingArguments", "TagiDataCollator", "TeacherBank"} <= set(tagi_hf.__all__)
    assert tagi_hf.TagiPreTrainedModel in tagi_hf.TagiModel.__mro__  # the shared base class, exported
    assert tagi_hf.TagiPreTrainedModel in tagi_hf.TagiForCausalLM.__mro__
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
    [warning] = [w for w in caught if issubclass(w.category, FutureWarning) and new in str(w.message)]
    assert "goes in tagi-hf 0.3.0" in str(warning.message)  # the version that removes the old path


def test_train_tagi_at_its_old_place_is_the_same_function_with_a_warning():
    import tagi_hf.recipes.synthetic as recipe
    from tagi_hf.training.run import train_tagi

    with pytest.warns(FutureWarning, match=r"moved to `tagi_hf.training.run.train_tagi`.*goes in tagi-hf 0\.3\.0"):
        assert recipe.train_tagi is train_tagi
    with pytest.raises(AttributeError, match="has no attribute 'not_there'"):
        recipe.not_there  # noqa: B018
