import hashlib
import json
import random
from pathlib import Path

import pytest

from tagi_hf.data import (
    HELD_OUT_CHAINS,
    HELD_OUT_WORDS,
    OPERATIONS,
    WORDS,
    SyntheticOp,
    SyntheticTask,
    apply_chain,
    build_synthetic_tasks,
    chain_output,
    load_sni,
    synthetic,
    synthetic_corpus,
    validate_chain,
    write_synthetic_suite,
)
from tagi_hf.data.synthetic import SPARSE_OPS, TRAIN_TRIVIAL_SHARE, held_out_exclusions, trivial_sparse_steps

PREFIX = "In this task you are given a list of words separated by spaces. "
WORD_OPS = {"remove", "replace", "append", "prepend"}
L = ["cat", "dog", "apple", "cat", "sun"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_synthetic_suite(tmp_path_factory.mktemp("suite"), seed=0, instances_per_task=6)


@pytest.fixture(scope="module")
def splits() -> dict[int, dict[str, list[SyntheticTask]]]:
    return {seed: build_synthetic_tasks(seed) for seed in (0, 1, 2)}


def _read_split(root: Path, split: str) -> list[str]:
    return (root / "splits" / "default" / f"{split}_tasks.txt").read_text().split()


def _read_task(root: Path, name: str) -> dict:
    return json.loads((root / "tasks" / f"{name}.json").read_text())


def _chain(task: dict) -> str:
    return task["Categories"][0].removeprefix("Synthetic -> ")


def test_vocabulary_and_operations_follow_the_spec_order():
    assert len(WORDS) == 40 and len(set(WORDS)) == 40
    assert (
        list(WORDS)
        == (
            "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat "
            "hill key kite lamp leaf lion map moon nest owl pen pig rain ring rose ship shoe star sun tree"
        ).split()
    )
    assert (
        list(OPERATIONS)
        == (
            "reverse sort first last drop_first upper double remove replace rotate swap_ends append prepend dedup "
            "filter_letter count lengths join"
        ).split()
    )
    assert set(HELD_OUT_WORDS) == {"owl", "kite", "drum", "rose", "gold"}
    assert len(HELD_OUT_CHAINS) == 10 and ("filter_letter", "count") in HELD_OUT_CHAINS


@pytest.mark.parametrize(
    ("op", "tokens", "expected"),
    [
        (("reverse",), L, ["sun", "cat", "apple", "dog", "cat"]),
        (("sort",), L, ["apple", "cat", "cat", "dog", "sun"]),
        (("first", 2), L, ["cat", "dog"]),
        (("last", 3), L, ["apple", "cat", "sun"]),
        (("drop_first", 1), L, ["dog", "apple", "cat", "sun"]),
        (("upper",), L, ["CAT", "DOG", "APPLE", "CAT", "SUN"]),
        (("double",), ["cat", "dog"], ["cat", "cat", "dog", "dog"]),
        (("remove", "cat"), L, ["dog", "apple", "sun"]),
        (("replace", "cat", "owl"), L, ["owl", "dog", "apple", "owl", "sun"]),
        (("rotate", 2), L, ["apple", "cat", "sun", "cat", "dog"]),
        (("swap_ends",), L, ["sun", "dog", "apple", "cat", "cat"]),
        (("swap_ends",), ["cat"], ["cat"]),
        (("append", "owl"), L, [*L, "owl"]),
        (("prepend", "owl"), L, ["owl", *L]),
        (("dedup",), L, ["cat", "dog", "apple", "sun"]),
        (("filter_letter", "c"), ["cat", "cup", "dog", "car"], ["cat", "cup", "car"]),
        (("count",), L, ["5"]),
        (("lengths",), L, ["3", "3", "5", "3", "3"]),
        (("join", "dash"), L, ["cat-dog-apple-cat-sun"]),
        (("join", "plus"), ["a", "b"], ["a+b"]),
        (("join", "slash"), ["a", "b"], ["a/b"]),
    ],
)
def test_each_operation_matches_the_spec_table(op, tokens, expected):
    assert apply_chain([op], tokens) == expected


def test_chains_apply_left_to_right_and_empty_results_are_none():
    assert apply_chain([("reverse",), ("first", 2)], L) == ["sun", "cat"]
    assert chain_output([("double",), ("last", 3)], "cat dog sun") == "dog sun sun"
    assert chain_output([("remove", "cat")], "cat cat cat") == "none"
    assert chain_output([("filter_letter", "o"), ("count",)], "cat dog sun") == "0"
    assert chain_output([("filter_letter", "o"), ("join", "dash")], "cat dog sun") == "none"
    assert chain_output([("filter_letter", "o"), ("lengths",)], "cat dog sun") == "none"
    assert chain_output(["upper", ("join", "plus")], "cat dog") == "CAT+DOG"
    assert chain_output([SyntheticOp("first", (1,)), SyntheticOp("lengths")], "apple dog") == "5"


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([("count",), ("reverse",)], "terminal"),
        ([("join", "dash"), ("upper",)], "terminal"),
        ([("upper",), ("sort",)], "`upper` may not stand before 'sort'"),
        ([("upper",), ("dedup",)], "`upper` may not stand before 'dedup'"),
        ([("reverse",), ("reverse",)], "repeats"),
        ([("reverse",), ("sort",), ("dedup",)], "one or two"),
        ([], "one or two"),
        ([("shuffle",)], "unknown operation"),
        ([("first", 4)], "invalid parameters"),
        ([("first",)], "invalid parameters"),
        ([("remove", "zebra")], "invalid parameters"),
        ([("filter_letter", "z")], "invalid parameters"),
        ([("join", "comma")], "invalid parameters"),
        ([("replace", "cat", "cat")], "two different words"),
    ],
)
def test_chain_rules_reject_invalid_chains(ops, message):
    with pytest.raises(ValueError, match=message) as error:
        validate_chain(ops)
    assert "`ops`" in str(error.value)


def test_allowed_upper_chains():
    assert validate_chain([("upper",), ("reverse",)])[0] == SyntheticOp("upper")
    assert apply_chain([("sort",), ("upper",)], ["b", "a"]) == ["A", "B"]


def test_names_and_definition_follow_the_spec():
    task = SyntheticTask.from_ops([("reverse",), ("first", 2)])
    assert task.name == "synth_reverse_then_first_2"
    assert task.definition == PREFIX + "Reverse the order of the words. Then keep only the first 2 words."
    assert SyntheticTask.from_ops([("replace", "cat", "dog")]).name == "synth_replace_cat_dog"
    assert SyntheticTask.from_ops([("join", "dash")]).name == "synth_join_dash"
    single = SyntheticTask.from_ops([("join", "slash")])
    assert single.definition == PREFIX + "Join the words with a slash instead of spaces."
    assert SyntheticTask.from_ops([("sort",), ("upper",)]).definition.endswith(
        "Sort the words in alphabetical order. Then write every word in capital letters."
    )


def test_task_counts_are_in_the_documented_ranges(splits):
    assert [len(splits[0][split]) for split in splits[0]] == [291, 32, 45]
    for tasks in splits.values():
        assert list(tasks) == ["train", "dev", "test"]
        assert [len(tasks[split]) for split in ("train", "dev")] == [291, 32]  # the spec's 323 train tasks
        assert 40 <= len(tasks["test"]) <= 51  # 51 candidates, less those computing a train task's function
        names = [t.name for t in tasks["train"] + tasks["dev"] + tasks["test"]]
        assert len(set(names)) == len(names)  # disjoint


def _digest(names) -> str:
    return hashlib.sha256("".join(f"{name}\n" for name in names).encode()).hexdigest()


def test_dev_is_carved_out_of_the_spec_train_tasks(splits):
    # Digest of seed 0's train split file as written before the dev split existed: train + dev is unchanged since.
    names = sorted(t.name for t in splits[0]["train"] + splits[0]["dev"])
    assert _digest(names) == "3ef55781cb27c909d3ee0848113d810621233e6fa169f1f5c266cad1538aa1b4"


def test_dev_holds_whole_unseen_chain_types(splits):
    held_chains = {">".join(chain) for chain in HELD_OUT_CHAINS}
    for tasks in splits.values():
        train_types = {t.chain_type for t in tasks["train"]}
        dev_pairs = {t.chain_type for t in tasks["dev"] if len(t.ops) == 2}
        dev_singles = [t for t in tasks["dev"] if len(t.ops) == 1]
        assert len(dev_pairs) == 28 and not dev_pairs & train_types and not dev_pairs & held_chains
        assert sum(len(t.ops) == 2 for t in tasks["dev"]) == 28  # one task per chain type, as in train
        assert sorted(t.chain_type for t in dev_singles) == sorted(WORD_OPS)  # one word-parameter task per op
        assert not {t.name for t in tasks["dev"]} & {t.name for t in tasks["train"] + tasks["test"]}
        for task in tasks["dev"]:
            assert not {str(p) for op in task.ops for p in op.params} & set(HELD_OUT_WORDS), task.name
    assert {t.name for t in build_synthetic_tasks(0)["dev"]} == {t.name for t in splits[0]["dev"]}  # seeded
    assert {t.chain_type for t in splits[0]["dev"]} != {t.chain_type for t in splits[1]["dev"]}


def test_spec_rules_hold_for_train_after_the_dev_carve_out(splits):
    for tasks in splits.values():
        types = {t.chain_type for t in tasks["train"]}
        singles = {chain for chain in types if ">" not in chain}
        in_pairs = {op for chain in types if ">" in chain for op in chain.split(">")}
        assert singles == set(OPERATIONS) and in_pairs == set(OPERATIONS)


def test_held_out_structure_of_the_written_suite(suite):
    train, dev, test = (_read_split(suite, split) for split in ("train", "dev", "test"))
    assert not set(train) & set(test) and not set(dev) & set(train + test)
    assert dev == [t.name for t in build_synthetic_tasks(0)["dev"]]
    held_chains = {">".join(chain) for chain in HELD_OUT_CHAINS}
    for name in train + dev:
        task = _read_task(suite, name)
        assert _chain(task) not in held_chains, name
        assert not set(name.removeprefix("synth_").split("_")) & set(HELD_OUT_WORDS), name
    for name in test:
        chain = _chain(_read_task(suite, name))
        params = set(name.removeprefix("synth_").split("_"))
        assert chain in held_chains or (chain in WORD_OPS and params & set(HELD_OUT_WORDS)), name
    # Every draw of reverse>upper (= upper>reverse) and of rotate>count (= count) computes a train task's function.
    chains = {_chain(_read_task(suite, name)) for name in test} - WORD_OPS
    assert chains == held_chains - {"reverse>upper", "rotate>count"}


def test_every_op_appears_in_train_alone_and_in_a_pair(suite):
    chains = {_chain(_read_task(suite, name)) for name in _read_split(suite, "train")}
    singles = {chain for chain in chains if ">" not in chain}
    in_pairs = {op for chain in chains if ">" in chain for op in chain.split(">")}
    assert singles == set(OPERATIONS) and in_pairs == set(OPERATIONS)


def test_task_files_follow_the_spec(suite):
    tasks = {task.name: task for split in build_synthetic_tasks(0).values() for task in split}
    assert sorted(tasks) == sorted(p.stem for p in (suite / "tasks").glob("*.json"))
    for name, task in tasks.items():
        data = _read_task(suite, name)
        assert data["Definition"] == task.definition and data["Negative Examples"] == []
        examples, instances = data["Positive Examples"], data["Instances"]
        assert len(examples) == 2 and all(ex["explanation"] == "" for ex in examples)
        assert [inst["id"] for inst in instances] == [f"{name}-{i}" for i in range(6)]
        inputs = [ex["input"] for ex in examples] + [inst["input"] for inst in instances]
        assert len(set(inputs)) == len(inputs)
        for text in inputs:
            words = text.split(" ")
            assert task.min_words <= len(words) <= 7 and set(words) <= set(WORDS)
        assert all(inst["output"] == [chain_output(task.ops, inst["input"])] for inst in instances)
        assert all(ex["output"] == chain_output(task.ops, ex["input"]) for ex in examples)


def test_k_ops_get_inputs_longer_than_k(suite):
    data = _read_task(suite, "synth_drop_first_3")
    assert all(len(inst["input"].split()) >= 4 for inst in data["Instances"])
    assert SyntheticTask.from_ops([("first", 1), ("rotate", 3)]).min_words == 4
    assert SyntheticTask.from_ops([("reverse",)]).min_words == 3


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def snapshot(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = snapshot(write_synthetic_suite(tmp_path / "a", seed=3, instances_per_task=3))
    second = snapshot(write_synthetic_suite(tmp_path / "b", seed=3, instances_per_task=3))
    other = snapshot(write_synthetic_suite(tmp_path / "c", seed=4, instances_per_task=3))
    assert first == second
    assert first != other


def test_rewrite_replaces_the_suite_and_keeps_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    write_synthetic_suite(tmp_path, seed=0, instances_per_task=1)
    write_synthetic_suite(tmp_path, seed=5, instances_per_task=1)
    names = set(_read_split(tmp_path, "train") + _read_split(tmp_path, "dev") + _read_split(tmp_path, "test"))
    assert {p.stem for p in (tmp_path / "tasks").glob("*.json")} == names
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "splits", "tasks"]
    with pytest.raises(ValueError, match="`instances_per_task`"):
        write_synthetic_suite(tmp_path, instances_per_task=0)


def test_loader_reads_the_written_suite(suite):
    data = load_sni(suite)
    train, test = _read_split(suite, "train"), _read_split(suite, "test")
    assert len(data["train"]) == 6 * len(train) and len(data["test"]) == 6 * len(test)
    row = data["test"][0]
    raw = _read_task(suite, test[0])
    assert row["id"] == f"{test[0]}-0" and row["definition"] == raw["Definition"]
    assert row["input"] == raw["Instances"][0]["input"] and row["outputs"] == raw["Instances"][0]["output"]
    assert row["category"] == raw["Categories"][0] and len(row["positive_examples"]) == 2


def test_loader_reads_the_dev_split_in_file_order(suite):
    dev = _read_split(suite, "dev")
    rows = load_sni(suite, splits=("dev",), max_test_instances_per_task=4)["dev"]
    assert list(dict.fromkeys(rows["task"])) == dev and len(rows) == 4 * len(dev)
    assert list(rows["id"])[:4] == [f"{dev[0]}-{i}" for i in range(4)]  # the first instances, as for test


def test_corpus_never_shows_dev_or_test_tasks_or_held_out_parameters(splits):
    definitions = {split: {task.definition for task in tasks} for split, tasks in splits[0].items()}
    texts = synthetic_corpus(0, 400)
    assert texts == synthetic_corpus(0, 400) and texts != synthetic_corpus(1, 400)
    instances = [text for text in texts if text.startswith(PREFIX)]
    assert 100 < len(instances) < 300
    for text in instances:
        definition = text[: text.rindex(".") + 1]  # inputs and outputs hold no period
        assert definition in definitions["train"], text
        assert definition not in definitions["dev"] | definitions["test"], text
        assert not any(f"word {w}" in text or f"every {w}" in text or f"with {w}" in text for w in HELD_OUT_WORDS)
    for text in texts:
        if not text.startswith(PREFIX):
            assert 6 <= len(text.split()) <= 24 and set(text.split()) <= set(WORDS)
    many = synthetic_corpus(0, 3000, instance_fraction=1.0)
    seen = {text[: text.rindex(".") + 1] for text in many}
    assert seen <= definitions["train"] and len(seen) > 250  # nearly every train task, and never a dev one


def test_corpus_options():
    bare = synthetic_corpus(0, 50, instance_fraction=1.0, with_instructions=False)
    assert not any(text.startswith("In this task") for text in bare)
    assert all(set(text.split()) <= set(WORDS) for text in synthetic_corpus(0, 50, instance_fraction=0.0))
    with pytest.raises(ValueError, match="`instance_fraction`"):
        synthetic_corpus(0, 1, instance_fraction=1.5)


def _outputs(task: SyntheticTask, inputs) -> tuple[str, ...]:
    """The task's output texts on `inputs` (the spec table's semantics, `none` for an empty list)."""
    ops = validate_chain(task.ops)
    outputs = []
    for tokens in inputs:
        for op in ops:
            tokens = OPERATIONS[op.name].apply(tokens, *op.params)
        outputs.append(" ".join(tokens) or "none")
    return tuple(outputs)


def _functions(tasks, inputs) -> dict[tuple, str]:
    """Each task's outputs on `inputs` (its function there), mapped to the task's name."""
    return {_outputs(t, inputs): t.name for t in tasks}


def _uniform_inputs(seed: int, n: int) -> list[list[str]]:
    """Inputs as the spec draws them, with 4 to 7 words (every task's domain), from a stream of the test's own."""
    rng = random.Random(f"test-functions:{seed}")
    return [[rng.choice(WORDS) for _ in range(rng.randint(4, 7))] for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_no_held_out_task_computes_a_train_task_function(splits, seed):
    inputs = _uniform_inputs(seed, 3000)
    tasks = splits[seed]
    train = _functions(tasks["train"], inputs)
    dev = _functions(tasks["dev"], inputs)
    for split in ("dev", "test"):
        for task in tasks[split]:
            outputs = _outputs(task, inputs)
            assert outputs not in train, f"{task.name} computes {train.get(outputs)} (train) on every input"
            if split == "test":
                assert outputs not in dev, f"{task.name} computes {dev.get(outputs)} (dev) on every input"
    # The check sees the reviewed equivalences: held-out candidates that are train functions in disguise.
    same = [("reverse>upper", [("reverse",), ("upper",)], [("upper",), ("reverse",)]),
            ("rotate>count", [("rotate", 2), ("count",)], [("count",)]),
            ("drop_first>double", [("drop_first", 1), ("double",)], [("double",), ("drop_first", 2)]),
            ("double>last", [("double",), ("last", 1)], [("last", 1)])]  # fmt: skip
    for _, held, trained in same:
        assert (
            _functions([SyntheticTask.from_ops(held)], inputs).keys()
            == _functions([SyntheticTask.from_ops(trained)], inputs).keys()
        )
    names = {t.name for t in tasks["test"]}
    assert "synth_reverse_then_upper" not in names and "synth_double_then_last_1" not in names
    assert not any(name.startswith("synth_rotate_") and name.endswith("_then_count") for name in names)
    if seed == 0:
        assert held_out_exclusions(0) == {"test": 7, "dev": 72}


def test_every_held_out_instance_changes_its_input_at_every_step(suite):
    for split in ("dev", "test"):
        for name in _read_split(suite, split):
            task = _read_task(suite, name)
            parsed = next(t for t in build_synthetic_tasks(0)[split] if t.name == name)
            pairs = [(ex["input"], ex["output"]) for ex in task["Positive Examples"]]
            pairs += [(inst["input"], inst["output"][0]) for inst in task["Instances"]]
            for text, output in pairs:
                assert output != text, (name, text)
                assert not any(trivial_sparse_steps(parsed, text.split())), (name, text)


def _trivial_share(tasks, per_task: int) -> float:
    trivial = total = 0
    for task in tasks:
        for inst in synthetic._task_json(task, 0, per_task)["Instances"]:
            trivial += any(trivial_sparse_steps(task, inst["input"].split()))
            total += 1
    return trivial / total


def test_train_instances_of_sparse_ops_are_mostly_informative(splits):
    train = splits[0]["train"]
    for op in SPARSE_OPS:  # single-op train tasks: uniform draws would be trivial 75-88 % of the time
        singles = [t for t in train if t.chain_type == op]
        share = _trivial_share(singles, max(100, 800 // len(singles)))  # >= 800 instances: sd of the share 0.013
        assert abs(share - TRAIN_TRIVIAL_SHARE) < 0.05, (op, share)
    chains = [t for t in train if len(t.ops) == 2 and t.ops[0].name in ("remove", "replace")][:12]
    assert 0.08 < _trivial_share(chains, 100) < 0.3  # a chain whose sparse step cannot change keeps uniform draws
    plain = [t for t in train if not any(op.name in SPARSE_OPS for op in t.ops)][:5]
    assert _trivial_share(plain, 5) == 0.0  # no sparse step: nothing is trivial, draws stay uniform


def test_trivial_steps_and_held_out_draws_that_cannot_be_informative():
    task = SyntheticTask.from_ops([("remove", "cat"), ("dedup",)])
    assert trivial_sparse_steps(task, ["dog", "sun", "dog"]) == [True, False]
    assert trivial_sparse_steps(task, ["cat", "sun", "dog"]) == [False, True]
    letter = SyntheticTask.from_ops([("filter_letter", "c"), ("reverse",)])
    assert trivial_sparse_steps(letter, ["dog", "sun"]) == [True]  # emptied
    assert trivial_sparse_steps(letter, ["cat", "sun"]) == [False]
    never = SyntheticTask.from_ops([("filter_letter", "o"), ("remove", "ship")])  # owl only: nothing to remove
    with pytest.raises(ValueError, match="synth_filter_letter_o_then_remove_ship: none of 2000 random inputs"):
        synthetic._task_json(never, 0, 3, held_out=True)
    data = synthetic._task_json(never, 0, 20)  # in train it keeps uniform draws
    assert len({inst["input"] for inst in data["Instances"]}) == 20
