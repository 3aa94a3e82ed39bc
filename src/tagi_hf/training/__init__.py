"""Training a TAGI model: the trainer and its arguments, the three losses, L_kl's teacher-logit cache, checkpoints."""

from .arguments import TagiTrainingArguments
from .trainer import TagiTrainer

__all__ = ["TagiTrainer", "TagiTrainingArguments"]
