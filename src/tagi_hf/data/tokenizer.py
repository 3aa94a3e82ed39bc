"""A small tokenizer trained in code, with T5's conventions, for backbones trained from scratch.

No pretrained T5 tokenizer can be had offline, and CPU step time grows with the vocabulary, so the synthetic
pipeline trains a BPE tokenizer of a few hundred tokens on its own texts.
"""

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["train_tokenizer"]

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
_METASPACE = "\u2581"
# Every printable ASCII character is in the base alphabet, so any ASCII text is encoded without `<unk>`, even text
# (an unseen parameter word, capital letters) the training texts never showed. Spaces become the metaspace.
_ALPHABET = sorted(set(string.printable) - set(" \r\x0b\x0c")) + [_METASPACE]


def _backend_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a BPE `tokenizers.Tokenizer` with a Metaspace pre-tokenizer and decoder, and an eos post-processor."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # Punctuation is split off words ("apple." -> "▁apple", "."), so a word is one token wherever it stands (the
    # Tk-Instruct prompts end inputs with a period); the Metaspace decoder still restores the text exactly.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], initial_alphabet=_ALPHABET, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    # T5 appends `</s>` to every sequence (and to each of a pair).
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return tokenizer


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 600, extra_ids: int = 0) -> PreTrainedTokenizerFast:
    """
    Train a T5-style BPE tokenizer on `texts`.

    Conventions follow T5: `<pad>` has id 0, `</s>` id 1, `<unk>` id 2, and `</s>` is appended when encoding. The
    Metaspace pre-tokenizer and decoder make the round trip `decode(encode(x), skip_special_tokens=True) == x`
    lossless for ASCII text without leading spaces (case, punctuation such as `cat-dog`, digits, newlines and
    repeated spaces included). Non-ASCII characters not seen in training become `<unk>`.

    Args:
        texts (`Iterable[str]`):
            Training texts.
        vocab_size (`int`, *optional*, defaults to 600):
            Largest size of the vocabulary, special tokens and sentinels included (it can come out smaller when
            the texts have few distinct merges).
        extra_ids (`int`, *optional*, defaults to 0):
            Number of T5 sentinels `<extra_id_0>`, ... for span corruption, appended at the end of the vocabulary in
            T5's order (`<extra_id_0>` has the largest id).

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: the tokenizer; it saves with `save_pretrained` and loads back
        with `AutoTokenizer.from_pretrained`.

    Example:

    ```python
    >>> tokenizer = train_tokenizer(["cat dog", "Reverse the order of the words."], vocab_size=200)
    >>> ids = tokenizer("CAT cat-dog 3")["input_ids"]
    >>> ids[-1] == tokenizer.eos_token_id, tokenizer.decode(ids, skip_special_tokens=True)
    (True, 'CAT cat-dog 3')
    ```
    """
    if extra_ids < 0:
        raise ValueError(f"`extra_ids` must be >= 0, got {extra_ids}.")
    minimum = len(_ALPHABET) + 3 + extra_ids
    if vocab_size < minimum:
        raise ValueError(f"`vocab_size` must be at least {minimum} (alphabet, specials, sentinels), got {vocab_size}.")
    backend = _backend_tokenizer(texts, vocab_size - extra_ids)
    sentinels = [f"<extra_id_{i}>" for i in range(extra_ids)]
    backend.add_special_tokens(sentinels[::-1])  # added last to first: `<extra_id_0>` gets the largest id
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=sentinels or None,
        clean_up_tokenization_spaces=False,  # its clean-up rewrites " ." and " 's": the round trip would not hold
    )
    logger.info(f"Trained a tokenizer with {len(tokenizer)} tokens.")
    return tokenizer
