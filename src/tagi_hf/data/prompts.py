"""Tk-Instruct prompt formats for the instruction (hypernetwork), the student and the teacher.

The strings reproduce `DataCollatorForNI` of Tk-Instruct (Wang et al., 2022) character for character: a teacher
input is exactly the source Tk-Instruct feeds its model, so a Tk-Instruct checkpoint can serve as a teacher.

- instruction (`format_instruction`): `"Definition: {def}."` followed, for "Def + k Pos.", by k blocks
  `"\\n\\n Positive Example {i} -\\nInput: {in}.\\n Output: {out}."`. A final period is added only where the text
  does not already end in punctuation, and trailing whitespace is dropped (the hypernetwork has no use for it).
- student (`format_student_input`): `"Input: {input}.\\nOutput: "`, the instance alone, no instruction text.
- teacher (`format_teacher_input`): instruction + `"\\n\\n"` + `"Now complete the following example -\\n"` +
  the student text. The student therefore sees the very same instance text as the teacher's suffix.
"""

import re
import string
from collections.abc import Mapping, Sequence

__all__ = [
    "TEACHER_BRIDGE",
    "format_instruction",
    "format_student_input",
    "format_teacher_input",
    "parse_setting",
]

TEACHER_BRIDGE = "Now complete the following example -\n"
"""Text between the instruction (followed by a blank line) and the instance in a teacher input."""

_SETTING_PATTERN = re.compile(r"def(?:\+(\d+)pos)?")


def _end_with_punctuation(text: str) -> str:
    """Append a period unless `text` already ends in punctuation (Tk-Instruct's rule)."""
    return text if text and text[-1] in string.punctuation else text + "."


def parse_setting(setting: str) -> int:
    """
    Return the number of positive examples of an instruction setting.

    Args:
        setting (`str`):
            `"def"` (definition only) or `"def+Kpos"` (definition and K positive examples). Case, spaces and a
            final period are ignored, so the paper's spelling `"Def + 2 Pos."` is accepted too.

    Returns:
        `int`: the number of positive examples, 0 for `"def"`.

    Example:

    ```python
    >>> parse_setting("def"), parse_setting("def+2pos"), parse_setting("Def + 2 Pos.")
    (0, 2, 2)
    ```
    """
    normalized = setting.lower().replace(" ", "").rstrip(".") if isinstance(setting, str) else ""
    match = _SETTING_PATTERN.fullmatch(normalized)
    if match is None:
        raise ValueError(f"`setting` must be 'def' or 'def+Kpos' (e.g. 'def+2pos'), got {setting!r}.")
    return int(match.group(1) or 0)


def _format_positive_example(index: int, example: Mapping[str, str]) -> str:
    """One Tk-Instruct positive-example block, `index` counting from 1."""
    block = _end_with_punctuation(f" Positive Example {index} -\nInput: {example['input'].strip()}") + "\n"
    return _end_with_punctuation(block + f" Output: {example['output'].strip()}") + "\n\n"


def format_instruction(definition: str, positive_examples: Sequence[Mapping[str, str]] = (), num_pos: int = 0) -> str:
    """
    Format a task instruction the Tk-Instruct way ("Def" when `num_pos=0`, "Def + k Pos." otherwise).

    Args:
        definition (`str`):
            The task definition.
        positive_examples (`Sequence[Mapping[str, str]]`, *optional*):
            Examples with keys `input` and `output`; the first `num_pos` are used (all of them if fewer).
        num_pos (`int`, *optional*, defaults to 0):
            How many positive examples to include.

    Returns:
        `str`: the instruction, without trailing whitespace.

    Example:

    ```python
    >>> format_instruction("Reverse the words", [{"input": "a b", "output": "b a"}], num_pos=1)
    'Definition: Reverse the words.\\n\\n Positive Example 1 -\\nInput: a b.\\n Output: b a.'
    ```
    """
    if num_pos < 0:
        raise ValueError(f"`num_pos` must be >= 0, got {num_pos}.")
    text = _end_with_punctuation("Definition: " + definition.strip()) + "\n\n"
    blocks = [_format_positive_example(i + 1, ex) for i, ex in enumerate(positive_examples[:num_pos])]
    return (text + "".join(blocks)).rstrip()


def format_student_input(input: str) -> str:
    """
    Format an instance input for the student (TAGI): the instance alone, as the tail of a Tk-Instruct source.

    Args:
        input (`str`):
            The instance input.

    Returns:
        `str`: `"Input: {input}.\\nOutput: "` (no period added when the input ends in punctuation).

    Example:

    ```python
    >>> format_student_input("cat dog")
    'Input: cat dog.\\nOutput: '
    ```
    """
    return _end_with_punctuation(f"Input: {input.strip()}") + "\nOutput: "


def format_teacher_input(instruction: str, input: str) -> str:
    """
    Format the input of an instruction-in-context teacher: the instruction followed by the instance.

    Args:
        instruction (`str`):
            An instruction as returned by [`format_instruction`]; may be empty (no instruction at all).
        input (`str`):
            The instance input.

    Returns:
        `str`: the Tk-Instruct source, identical to what Tk-Instruct's collator builds.

    Example:

    ```python
    >>> format_teacher_input("Definition: Reverse the words.", "cat dog")
    'Definition: Reverse the words.\\n\\nNow complete the following example -\\nInput: cat dog.\\nOutput: '
    ```
    """
    head = instruction.rstrip() + "\n\n" if instruction.strip() else ""
    return head + TEACHER_BRIDGE + format_student_input(input)
