"""The module paths of tagi-hf before its subpackages (`tagi_hf.trainer`, `tagi_hf.hub`, ...) keep importing until
tagi-hf 0.3.0 ([`REMOVED_IN`]), which removes these redirects.

`import tagi_hf.trainer` gives the module now at `tagi_hf.training.trainer` (the same module object, so classes
and functions are identical) with a `FutureWarning` naming the new path and the version the old one goes in.
Package names that still exist (`tagi_hf.hub`, `tagi_hf.evaluation`, `tagi_hf.teachers`) re-export what their old
modules held.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

REMOVED_IN = "0.3.0"  # the first release without the old paths below
MOVED = {
    "tagi_hf.configuration_tagi": "tagi_hf.modeling.configuration_tagi",
    "tagi_hf.modeling_tagi": "tagi_hf.modeling.modeling_tagi",
    "tagi_hf.hypernetwork": "tagi_hf.modeling.generator",
    "tagi_hf.fusion": "tagi_hf.modeling.fusion",
    "tagi_hf.lora": "tagi_hf.modeling.lora",
    "tagi_hf.task_state": "tagi_hf.modeling.task_state",
    "tagi_hf.instructions": "tagi_hf.modeling.instructions",
    "tagi_hf.adapter": "tagi_hf.modeling.adapter",
    "tagi_hf.utils": "tagi_hf.modeling.file_utils",
    "tagi_hf.trainer": "tagi_hf.training.trainer",
    "tagi_hf.training_args": "tagi_hf.training.arguments",
    "tagi_hf.losses": "tagi_hf.training.losses",
    "tagi_hf.checkpoints": "tagi_hf.training.checkpoints",
    "tagi_hf.teacher_logits": "tagi_hf.training.teacher_logits",
    "tagi_hf.pretraining": "tagi_hf.data.collators",
    "tagi_hf.teachers_joint": "tagi_hf.teachers.joint",
    "tagi_hf.baseline": "tagi_hf.teachers.baseline",
    "tagi_hf.predict": "tagi_hf.evaluation.runner",
    "tagi_hf.rank_classification": "tagi_hf.evaluation.rank_classification",
    "tagi_hf.instruction_modes": "tagi_hf.evaluation.instruction_modes",
    "tagi_hf.fit": "tagi_hf.evaluation.fit",
    "tagi_hf.model_card": "tagi_hf.hub.cards",
    "tagi_hf.streaming": "tagi_hf.hub.collections",
    "tagi_hf.pipeline": "tagi_hf.recipes.synthetic",
    "tagi_hf.standin": "tagi_hf.recipes.standin",
    "tagi_hf.cli_train": "tagi_hf.cli.train",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new one."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        message = f"`{spec.name}` moved to `{new}`; import it from there (the old path goes in tagi-hf {REMOVED_IN})."
        warnings.warn(message, FutureWarning, stacklevel=4)
        return importlib.import_module(new)

    def exec_module(self, module):  # the module is already executed under its new name
        pass


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
