"""Generator-only checkpoints: a TAGI model saved without its frozen backbone, which the config names instead
(`base_model_name_or_path`, loaded with `backbone_kwargs`), as a PEFT adapter names its base model.

`TagiPreTrainedModel.save_pretrained(path, save_backbone=False)` writes them ([`generator_only_state_dict`]);
`TagiPreTrainedModel.from_pretrained` recognises them ([`names_its_backbone`]) and puts the model back together
([`load_generator_only`]): the named backbone, checked against the saved config, then the saved parts around it.
"""

from __future__ import annotations

import copy
import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import cached_file, logging

logger = logging.get_logger(__name__)

# What `from_pretrained` passes on to read files of a checkpoint (a folder or a Hub repo).
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "revision", "token", "local_files_only", "subfolder")
SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
BACKBONE_PREFIX = "backbone."


# ------------------------------------------------------------------------------------------------------- saving
def generator_only_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights a generator-only checkpoint holds: everything but the backbone. Refuses a model whose backbone
    it could not name, or whose backbone may have trained away from the named checkpoint."""
    name = model.config.base_model_name_or_path
    if not name:
        raise ValueError(
            "`save_backbone=False` names the backbone instead of saving it, but `config.base_model_name_or_path` is "
            "empty: build the model with `from_backbone`, or set it (and `config.backbone_kwargs`)."
        )
    if any(p.requires_grad for p in model.backbone.parameters()):
        raise ValueError(
            f"`save_backbone=False` leaves the backbone out, but it is trainable (its weights may differ from "
            f"`{name}`): freeze it (`set_trainable(backbone=False)`) or save it."
        )
    return {k: v for k, v in model.state_dict().items() if not k.startswith(BACKBONE_PREFIX)}


def recordable_backbone_kwargs(backbone_kwargs: dict | None) -> dict | None:
    """The backbone's loading kwargs a config can hold (JSON: dtypes by name); others are left out, with a warning."""
    recorded = {}
    for key, value in (backbone_kwargs or {}).items():
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        if value is None or isinstance(value, (str, int, float, bool)):
            recorded[key] = value
        else:
            logger.warning(
                f"`backbone_kwargs[{key!r}]` ({type(value).__name__}) is not recorded in the config: a generator-only "
                "checkpoint reloads the backbone without it unless it is passed again."
            )
    return recorded or None


# ------------------------------------------------------------------------------------------------------ loading
def names_its_backbone(path, kwargs: dict) -> bool:
    """Whether the checkpoint at `path` (or the `config` passed with it) is generator-only."""
    config = kwargs.get("config")
    if isinstance(config, PretrainedConfig):
        return getattr(config, "backbone_in_checkpoint", True) is False
    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    config_dict, _ = PretrainedConfig.get_config_dict(config if config is not None else path, **hub)
    return config_dict.get("backbone_in_checkpoint", True) is False


def load_generator_only(cls, path, args: tuple, kwargs: dict, backbone_name_or_path, backbone_kwargs: dict | None):
    """`cls.from_pretrained` of a generator-only checkpoint: the named backbone (or `backbone_name_or_path`, with
    `backbone_kwargs` over the recorded ones), checked against the saved config, and the saved parts around it."""
    if args:
        raise TypeError(f"A generator-only checkpoint takes no positional model arguments, got {len(args)}.")
    wants_info = kwargs.pop("output_loading_info", False)
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    for ignored in ("_from_auto", "trust_remote_code", "adapter_kwargs"):  # what the Auto classes pass along
        kwargs.pop(ignored, None)
    config = kwargs.pop("config", None)
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    if not isinstance(config, PretrainedConfig):
        config, kwargs = cls.config_class.from_pretrained(
            config if config is not None else path, return_unused_kwargs=True, **hub, **kwargs
        )
    if kwargs:
        raise TypeError(
            f"Loading a generator-only checkpoint does not take {sorted(kwargs)}; it takes config overrides, the Hub "
            f"arguments {HUB_KWARGS}, `dtype`, `backbone_name_or_path` and `backbone_kwargs`."
        )
    backbone = _named_backbone(cls, path, config, backbone_name_or_path, backbone_kwargs)
    model = cls(config, backbone=backbone)
    missing = _load_saved_parts(model, path, hub)
    if dtype is not None and dtype != "auto":
        model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model.config.name_or_path = str(path)
    model.eval()
    model.set_trainable()
    info = {"missing_keys": missing, "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return (model, info) if wants_info else model


def _named_backbone(cls, path, config, backbone_name_or_path, backbone_kwargs: dict | None) -> PreTrainedModel:
    """Loads the backbone the checkpoint names (or the one given instead); refuses one it cannot find or read."""
    name = backbone_name_or_path if backbone_name_or_path is not None else config.base_model_name_or_path
    if not name:
        raise ValueError(
            f"`{path}` is a generator-only checkpoint naming no backbone (`base_model_name_or_path` is empty): pass "
            "`backbone_name_or_path=`."
        )
    loading = {**(config.backbone_kwargs or {}), **(backbone_kwargs or {})}
    try:
        backbone = cls.backbone_auto_class.from_pretrained(name, **loading)
    except (OSError, ValueError) as error:
        raise type(error)(
            f"`{path}` is a generator-only checkpoint; its backbone `{name}` (loaded with {loading}) could not be "
            f"found or read: {error}\nPass `backbone_name_or_path=` (e.g. a local copy) and/or `backbone_kwargs=` "
            "(e.g. `gguf_file`) to `from_pretrained`."
        ) from error
    check_named_backbone(cls, backbone, config, name)
    return backbone


def check_named_backbone(cls, backbone: PreTrainedModel, config, name) -> None:
    """Refuses a loaded backbone whose class or weight shapes differ from the backbone the saved config describes
    (built on the meta device: no memory, no compute)."""
    with torch.device("meta"):
        expected = cls.backbone_auto_class.from_config(copy.deepcopy(config.text_config))
    want = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    if type(backbone) is not type(expected) or want != got:
        differing = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        shown = ", ".join(f"{k}: {want.get(k)} saved vs {got.get(k)} loaded" for k in differing[:4])
        raise ValueError(
            f"The backbone `{name}` ({type(backbone).__name__}) does not match the one this checkpoint was saved "
            f"around ({type(expected).__name__}): {shown or 'same shapes, other class'}."
        )


def _load_saved_parts(model, path, hub: dict) -> list[str]:
    """Copies the checkpoint's weights (all but the backbone's) into `model`, and its generation config; returns the
    missing keys (only a separate instruction encoder may be missing: it stays the backbone reader's copy)."""
    state = read_safetensors_weights(path, hub)
    expected = {k for k in model.state_dict() if not k.startswith(BACKBONE_PREFIX)}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    unexplained = [k for k in missing if not k.startswith("instruction_encoder.")]
    if unexpected or unexplained:
        raise ValueError(
            f"The weights of the generator-only checkpoint `{path}` do not fit the {type(model).__name__} its config "
            f"builds: missing {unexplained[:4]}, unexpected {unexpected[:4]}."
        )
    try:
        model.load_state_dict(state, strict=False)  # copied into the model's own (aligned) memory
    except RuntimeError as error:  # a size mismatch
        raise ValueError(f"The weights of `{path}` do not fit the model its config builds: {error}") from error
    if missing:
        logger.info("No saved instruction encoder: it starts as a copy of the backbone's encoder.")
    if cached_file(path, "generation_config.json", _raise_exceptions_for_missing_entries=False, **hub) is not None:
        model.generation_config = GenerationConfig.from_pretrained(path, **hub)
    return missing


def read_safetensors_weights(path, hub: dict) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's `model.safetensors` (or its shards), read into memory; only safetensors."""
    single = cached_file(path, SAFE_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub)
    if single is not None:
        files = [single]
    else:
        index = cached_file(path, SAFE_WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False, **hub)
        if index is None:
            raise OSError(
                f"`{path}` holds no `{SAFE_WEIGHTS_NAME}` (nor `{SAFE_WEIGHTS_INDEX_NAME}`): only safetensors."
            )
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        files = [cached_file(path, shard, **hub) for shard in shards]
    state = {}
    for file in files:
        try:
            state.update(load_file(file))
        except SafetensorError as error:
            raise ValueError(
                f"The weights of `{path}` ({os.path.basename(file)}) are not a valid safetensors file (truncated or "
                f"corrupted?): {error}"
            ) from error
    return state
