"""What TAGI distils from: per-task LoRA teachers (one at a time or jointly) and the in-context multi-task baseline."""

from .baseline import train_multitask_baseline
from .joint import train_lora_teachers_jointly
from .lora_teachers import TeacherBank, teacher_target_modules, train_lora_teachers

__all__ = [
    "TeacherBank",
    "teacher_target_modules",
    "train_lora_teachers",
    "train_lora_teachers_jointly",
    "train_multitask_baseline",
]
