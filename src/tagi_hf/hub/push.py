"""Publishing on the Hugging Face Hub: TAGI generators, generated adapters (one per repo or many) and teacher LoRAs.

Every push checks what it can before any network call (adapters name a Hub base model, a token is available, the
repo id is valid), only reads the caller's files, and makes exactly **one commit** (creating the repo if needed,
`exist_ok` semantics). If the upload fails, [`HubUploadError`] lists the files that did not go up.

Layouts: a generator is its `save_pretrained` output (with the remote-code `.py` files) + card; an adapter is a PEFT
LoRA directory (+ `tagi_adapter.json`, instruction states with fusion) + card; many adapters are one such directory
per subfolder + `index.json` (`{"adapters": {name: {"subfolder", "instruction", ...}}}`) + a top card (locally:
[`save_adapters`], [`load_adapters`]); teachers are the bank as written (`teachers.json` + a PEFT directory per key).

Example:

```python
>>> from tagi_hf.hub.push import push_adapters_to_hub
>>> adapters = model.generate_adapter(["Reverse the words.", "Sort the words."], tokenizer=tokenizer)  # doctest: +SKIP
>>> push_adapters_to_hub(adapters, "me/word-tasks", names=["reverse", "sort"])  # doctest: +SKIP
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..modeling.adapter import ADAPTER_CONFIG, GeneratedAdapter
from ..teachers.bank import TEACHER_INDEX, read_teacher_index
from .cards import (
    adapter_model_card,
    generator_model_card,
    teacher_model_card,
    teachers_model_card,
)
from .collections import ADAPTERS_INDEX, load_adapters, named_adapters, save_adapters  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from ..modeling.modeling_tagi_base import TagiPreTrainedModel


class HubUploadError(RuntimeError):
    """A push failed: no commit was made. `files` lists the repo paths that did not go up."""

    def __init__(self, repo_id: str, files: Sequence[str], cause: BaseException):
        self.repo_id, self.files = repo_id, list(files)
        listed = "".join(f"\n  - {path}" for path in self.files)
        super().__init__(
            f"Pushing to `{repo_id}` failed ({type(cause).__name__}: {cause}). No commit was made; these "
            f"{len(self.files)} files did not go up:{listed}\nLocal files are unchanged: fix the cause and push again."
        )


def _require_token(token: str | bool | None) -> str:
    """The token to push with; refuses before any network call when there is none."""
    resolved = get_token() if token is None or token is True else token
    if not resolved:
        raise ValueError(
            "Pushing to the Hub needs a write token: pass `token=...`, set `HF_TOKEN`, or run `hf auth login`."
        )
    return resolved


def _is_hub_id(name: str | None) -> bool:
    """A name others can load from the Hub: a valid repo id that is not a directory on this machine."""
    if not name or os.path.isdir(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_base_model(base_model_name_or_path: str | None, what: str = "the adapter") -> None:
    """Refuses to publish an adapter others could not load: its base model must be a Hub repo id."""
    if not _is_hub_id(base_model_name_or_path):
        raise ValueError(
            f"Cannot push {what}: its `base_model_name_or_path` is {base_model_name_or_path!r}, not the Hub id of "
            "the backbone, so the pushed repo could not be loaded. Set `base_model_name_or_path` to the backbone's "
            "repo id (e.g. `google/t5-base-lm-adapt`) first."
        )


def _release(
    adapter: GeneratedAdapter, generator_repo: str | None, generator_revision: str | None
) -> GeneratedAdapter:
    """The adapter as published: base model checked, provenance set, local generator paths not leaked."""
    check_base_model(adapter.base_model_name_or_path)
    if generator_repo is not None and not _is_hub_id(generator_repo):
        raise ValueError(f"`generator_repo` must be the generator's Hub repo id, got {generator_repo!r}.")
    generator = generator_repo or adapter.generator_name_or_path
    return dataclasses.replace(
        adapter,
        generator_name_or_path=generator if _is_hub_id(generator) else None,
        generator_revision=generator_revision or adapter.generator_revision,
    )


def _folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """`{path in repo: local file}` for every file under `folder`."""
    return {
        str(PurePosixPath(prefix, path.relative_to(folder).as_posix())): path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _push_files(
    files: Mapping[str, Path | bytes],
    repo_id: str,
    token: str,
    message: str,
    *,
    private: bool | None,
    revision: str | None,
    **commit_kwargs: Any,
) -> CommitInfo:
    """Creates the repo (and branch) if needed and uploads `files` in one commit (extra keywords: `create_commit`)."""
    api = HfApi(token=token)
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(source) if isinstance(source, Path) else source)
        for path, source in sorted(files.items())
    ]
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and revision != "main" and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(repo_id, operations, commit_message=message, revision=revision, **commit_kwargs)
    except Exception as error:  # every failure means the same to the caller: nothing was committed
        raise HubUploadError(repo_id, sorted(files), error) from error


def push_model_to_hub(
    model: TagiPreTrainedModel,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: Sequence[str] | None = None,
    license: str | None = None,
    model_card: ModelCard | str | os.PathLike | None = None,
    tokenizer: Any = None,
) -> CommitInfo:
    """Pushes a TAGI model (config, safetensors, remote code, card; optionally its tokenizer) in one commit.

    The card is generated ([`generator_model_card`]) unless `model_card` (a `ModelCard` or a path to a curated
    `README.md`, e.g. `model_cards/tagi-t5-base-lm-adapt-sni/README.md`) is given. `model.push_to_hub` is
    transformers' own: the same model files with transformers' default card, no tokenizer and none of these checks.
    """
    token = _require_token(token)
    validate_repo_id(repo_id)
    tags = [*(getattr(model, "model_tags", None) or []), *(tags or [])]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        if model_card is None:
            card = generator_model_card(model, repo_id=repo_id, license=license, tags=tags)
        else:
            card = model_card if isinstance(model_card, ModelCard) else ModelCard.load(Path(model_card))
        card.save(folder / "README.md")
        message = commit_message or "Upload TAGI generator"
        options = {"commit_description": commit_description, "create_pr": create_pr}
        return _push_files(
            _folder_files(folder), repo_id, token, message, private=private, revision=revision, **options
        )


def push_adapter_to_hub(
    adapter: GeneratedAdapter,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    generator_repo: str | None = None,
    generator_revision: str | None = None,
    license: str | None = None,
) -> CommitInfo:
    """Pushes one generated adapter as a PEFT LoRA repo with its card ([`adapter_model_card`]), in one commit.

    `generator_repo` / `generator_revision` record where the generator is published (card and `tagi_adapter.json`);
    they default to the adapter's own provenance, with local paths dropped.
    """
    adapter = _release(adapter, generator_repo, generator_revision)
    token = _require_token(token)
    validate_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapter"
        adapter.save_pretrained(folder, model_card=adapter_model_card(adapter, repo_id=repo_id, license=license))
        message = commit_message or "Upload TAGI generated adapter"
        return _push_files(_folder_files(folder), repo_id, token, message, private=private, revision=revision)


def push_adapters_to_hub(
    adapters: Sequence[GeneratedAdapter],
    repo_id: str,
    *,
    names: Sequence[str] | None = None,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    generator_repo: str | None = None,
    generator_revision: str | None = None,
    license: str | None = None,
) -> CommitInfo:
    """Pushes many generated adapters in one commit, each in its own subfolder, with `index.json` and cards.

    Each loads with `PeftModel.from_pretrained(base, repo_id, subfolder=name)`; all with [`load_adapters`].
    """
    released = [_release(a, generator_repo, generator_revision) for a in adapters]
    named = named_adapters(released, names)
    token = _require_token(token)
    validate_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_adapters(
            list(named.values()), Path(tmp) / "adapters", names=list(named), repo_id=repo_id, license=license
        )
        message = commit_message or f"Upload {len(named)} TAGI generated adapters"
        return _push_files(_folder_files(folder), repo_id, token, message, private=private, revision=revision)


def push_generated(
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    base_model_name_or_path: str | None = None,
    **push_kwargs: Any,
) -> CommitInfo:
    """Pushes what `tagi-hf generate-adapter --out DIR` wrote: one adapter directory, or a [`save_adapters`] folder.

    `base_model_name_or_path` overrides the adapters' base (e.g. when the generator was built from a local copy of
    the backbone). Other keywords as in [`push_adapter_to_hub`]. The files in `out_dir` are only read.
    """
    out_dir = Path(out_dir)
    override = {"base_model_name_or_path": base_model_name_or_path} if base_model_name_or_path else {}
    if (out_dir / ADAPTER_CONFIG).is_file():
        adapter = dataclasses.replace(GeneratedAdapter.from_pretrained(out_dir), **override)
        return push_adapter_to_hub(adapter, repo_id, **push_kwargs)
    if not out_dir.is_dir():
        raise ValueError(f"`{out_dir}` is not a directory of generated adapters.")
    named = load_adapters(out_dir)
    adapters = [dataclasses.replace(a, **override) for a in named.values()]
    return push_adapters_to_hub(adapters, repo_id, names=list(named), **push_kwargs)


def generate_and_push(
    model: TagiPreTrainedModel,
    tokenizer: Any,
    instructions: str | Sequence[str],
    repo_id: str,
    *,
    names: Sequence[str] | None = None,
    base_model_name_or_path: str | None = None,
    **push_kwargs: Any,
) -> CommitInfo:
    """Generates the adapter(s) of `instructions` and pushes them: one instruction → one adapter repo, a list →
    [`push_adapters_to_hub`]. The base model is checked before anything is generated."""
    base = base_model_name_or_path or model.config.base_model_name_or_path
    check_base_model(base, "the generated adapters")
    _require_token(push_kwargs.get("token"))
    single = isinstance(instructions, str)
    adapters = model.generate_adapter([instructions] if single else list(instructions), tokenizer=tokenizer)
    adapters = [dataclasses.replace(a, base_model_name_or_path=base) for a in adapters]
    if single:
        return push_adapter_to_hub(adapters[0], repo_id, **push_kwargs)
    return push_adapters_to_hub(adapters, repo_id, names=names, **push_kwargs)


def _teacher_files(teacher_dir: Path, index: dict[str, Any], repo_id: str, license: str | None) -> dict[str, Any]:
    """The repo's files: the bank as written, each teacher's base model filled in from the index, cards added."""
    files: dict[str, Path | bytes] = {TEACHER_INDEX: teacher_dir / TEACHER_INDEX}
    configs = {}
    for key, sub in index["teachers"].items():
        sub = PurePosixPath(str(sub)).as_posix()
        config = json.loads((teacher_dir / sub / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        own, shared = config.get("base_model_name_or_path"), index.get("base_model_name_or_path")
        if own and shared and own != shared:
            raise ValueError(f"Teacher `{key}` was trained on `{own}` but `{TEACHER_INDEX}` says `{shared}`.")
        check_base_model(own or shared, f"teacher `{key}`")
        files.update(_folder_files(teacher_dir / sub, sub))
        if not own:  # peft writes None for an unnamed in-memory model; the pushed copy must name its base
            config["base_model_name_or_path"] = shared
            files[f"{sub}/{ADAPTER_CONFIG}"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        info_path = teacher_dir / sub / "tagi_teacher.json"
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else None
        card = teacher_model_card(
            key, config, group_by=index.get("group_by"), repo_id=repo_id, subfolder=sub, license=license, info=info
        )
        files[f"{sub}/README.md"] = str(card).encode()
        configs[key] = config
    files["README.md"] = str(teachers_model_card(index, configs, repo_id=repo_id, license=license)).encode()
    return files


def push_teachers_to_hub(
    teacher_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    license: str | None = None,
) -> CommitInfo:
    """Pushes a teacher bank (`teachers.json` + one PEFT adapter directory per key) in one commit, with a card per
    teacher and a top card. Each teacher loads with `PeftModel.from_pretrained(base, repo_id, subfolder=...)`."""
    teacher_dir = Path(teacher_dir)
    index = read_teacher_index(teacher_dir)
    files = _teacher_files(teacher_dir, index, repo_id, license)
    token = _require_token(token)
    validate_repo_id(repo_id)
    message = commit_message or f"Upload {len(index['teachers'])} TAGI teacher adapters"
    return _push_files(files, repo_id, token, message, private=private, revision=revision)
