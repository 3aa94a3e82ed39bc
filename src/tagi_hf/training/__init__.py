"""Training a TAGI model: the trainer and its arguments, the three losses, L_kl's teacher-logit cache, checkpoints,
and one whole run (`train_tagi`: resume, train, save)."""

from .arguments import TagiTrainingArguments
from .run import train_tagi
from .trainer import TagiTrainer

__all__ = ["TagiTrainer", "TagiTrainingArguments", "train_tagi"]
