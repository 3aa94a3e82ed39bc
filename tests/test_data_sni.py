import json
from pathlib import Path

import pytest

from tagi_hf.data import SNI_FEATURES, load_sni

SNI_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sni-sample"
needs_sample = pytest.mark.skipif(
    not (SNI_SAMPLE / "tasks").is_dir(), reason=f"SNI sample not found at {SNI_SAMPLE} (shared/data/sni-sample)"
)


def _split_names(split: str) -> list[str]:
    return (SNI_SAMPLE / "splits" / "default" / f"{split}_tasks.txt").read_text().split()


def _task_file(name: str) -> dict:
    return json.loads((SNI_SAMPLE / "tasks" / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sample():
    if not (SNI_SAMPLE / "tasks").is_dir():
        pytest.skip(f"SNI sample not found at {SNI_SAMPLE} (shared/data/sni-sample)")
    return load_sni(SNI_SAMPLE, max_train_instances_per_task=10)


@needs_sample
def test_sample_splits_columns_and_task_order(sample):
    assert set(sample) == {"train", "test"}
    for split in ("train", "test"):
        assert sample[split].features == SNI_FEATURES
        tasks = list(dict.fromkeys(sample[split]["task"]))
        assert tasks == _split_names(split)
    assert len(set(sample["train"]["task"])) == 52 and len(set(sample["test"]["task"])) == 90


@needs_sample
def test_test_split_takes_the_first_instances_in_order(sample):
    test = sample["test"]
    for name in _split_names("test")[:10]:
        instances = _task_file(name)["Instances"]
        rows = test.filter(lambda row, name=name: row["task"] == name)
        assert len(rows) == min(100, len(instances))
        assert rows["input"] == [inst["input"] for inst in instances[: len(rows)]]
        assert rows["outputs"] == [inst["output"] for inst in instances[: len(rows)]]


@needs_sample
def test_train_split_is_a_seeded_capped_shuffle(sample):
    name = _split_names("train")[0]
    instances = _task_file(name)["Instances"]
    assert len(instances) > 10
    rows = sample["train"].filter(lambda row: row["task"] == name)
    assert len(rows) == 10
    inputs = [inst["input"] for inst in instances]
    assert set(rows["input"]) <= set(inputs) and rows["input"] != inputs[:10]
    again = load_sni(SNI_SAMPLE, max_train_instances_per_task=10, splits=("train",))["train"]
    other = load_sni(SNI_SAMPLE, max_train_instances_per_task=10, seed=7, splits=("train",))["train"]
    assert again["id"] == sample["train"]["id"]
    assert other["id"] != sample["train"]["id"]


@needs_sample
def test_ids_are_kept_or_derived_from_the_index(sample):
    by_task = {}
    for split in ("train", "test"):
        for row_id, task in zip(sample[split]["id"], sample[split]["task"]):
            by_task.setdefault(task, []).append(row_id)
    with_ids = [name for name in by_task if "id" in _task_file(name)["Instances"][0]]
    without_ids = [name for name in _split_names("test") if "id" not in _task_file(name)["Instances"][0]]
    assert with_ids and without_ids
    assert by_task[without_ids[0]][:3] == [f"{without_ids[0]}-{i}" for i in range(3)]
    file_ids = {inst["id"] for inst in _task_file(with_ids[0])["Instances"]}
    assert set(by_task[with_ids[0]]) <= file_ids
    assert len(set(sample["test"]["id"])) == len(sample["test"])


@needs_sample
def test_header_fields(sample):
    rows = sample["test"]
    first = rows[0]
    raw = _task_file(first["task"])
    definition = raw["Definition"]
    assert first["definition"] == ("\n".join(definition) if isinstance(definition, list) else definition)
    assert first["category"] == raw["Categories"][0]
    assert first["positive_examples"][0] == {
        key: raw["Positive Examples"][0][key] for key in ("input", "output", "explanation")
    }
    # The one task of the sample whose file has no "Categories" key is in the train split: its rows get "".
    no_category = "task489_mwsc_question_generation"
    assert "Categories" not in _task_file(no_category) and no_category in _split_names("train")
    no_category_rows = sample["train"].filter(lambda row: row["task"] == no_category)
    assert len(no_category_rows) == 10
    assert set(no_category_rows["category"]) == {""}
    assert "" not in set(sample["train"].filter(lambda row: row["task"] != no_category)["category"])


def _write_suite(root: Path, tasks: dict[str, str], train=(), test=()) -> Path:
    (root / "tasks").mkdir(parents=True)
    (root / "splits" / "default").mkdir(parents=True)
    for name, text in tasks.items():
        (root / "tasks" / f"{name}.json").write_bytes(text.encode("utf-8"))
    for split, names in (("train", train), ("test", test)):
        (root / "splits" / "default" / f"{split}_tasks.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def _task(definition, instances, **extra) -> str:
    return json.dumps({"Definition": definition, "Positive Examples": [], "Instances": instances, **extra})


def test_crlf_list_definition_missing_keys_and_bom(tmp_path):
    crlf = _task(["Line one.", "Line two."], [{"input": "x", "output": ["y", "z"]}]).replace(", ", ",\r\n")
    root = _write_suite(tmp_path, {"a": "\ufeff" + crlf, "b": _task("Plain.", [{"input": "p", "output": "q"}])})
    (root / "splits" / "default" / "test_tasks.txt").write_bytes(b"a\r\n\r\nb\r\n")
    data = load_sni(root, splits=("test",))["test"]
    assert data[0] == {
        "id": "a-0",
        "task": "a",
        "category": "",
        "definition": "Line one.\nLine two.",
        "positive_examples": [],
        "input": "x",
        "outputs": ["y", "z"],
    }
    assert data[1]["definition"] == "Plain." and data[1]["outputs"] == ["q"]


def test_test_cap_and_empty_split(tmp_path):
    instances = [{"input": str(i), "output": [str(i)]} for i in range(5)]
    root = _write_suite(tmp_path, {"a": _task("D.", instances)}, test=["a"])
    data = load_sni(root, max_test_instances_per_task=3)
    assert data["test"]["input"] == ["0", "1", "2"]
    assert len(data["train"]) == 0
    assert load_sni(root, max_test_instances_per_task=None)["test"]["input"] == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"Instances": []}), "missing the key 'Definition'"),
        (json.dumps({"Definition": "D."}), "missing the key 'Instances'"),
        (_task("D.", [{"output": ["y"]}]), "missing the key 'input'"),
    ],
)
def test_malformed_task_file_names_file_and_key(tmp_path, text, message):
    root = _write_suite(tmp_path, {"bad": text}, test=["bad"])
    with pytest.raises(ValueError, match=message) as error:
        load_sni(root, splits=("test",))
    assert "bad.json" in str(error.value)


def test_split_naming_a_missing_task(tmp_path):
    root = _write_suite(tmp_path, {}, train=["ghost_task"])
    with pytest.raises(ValueError, match="ghost_task") as error:
        load_sni(root)
    assert "train_tasks.txt" in str(error.value)


def test_missing_split_file(tmp_path):
    root = _write_suite(tmp_path, {})
    with pytest.raises(ValueError, match="`split_dir`.*dev"):
        load_sni(root, splits=("dev",))


@pytest.mark.parametrize("argument", ["max_train_instances_per_task", "max_test_instances_per_task"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_limits(tmp_path, argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        load_sni(tmp_path, **{argument: value})
