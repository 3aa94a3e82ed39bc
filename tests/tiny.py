"""Tiny models and tokenizers built in code for the tests (offline, seconds)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config

from tagi_hf import TagiConfig, TagiModel

WORDS = (
    "reverse the order of words sort in alphabetical keep only first last remove every occurrence word "
    "replace with add at end beginning write capital letters repeat twice count and answer a number "
    "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat "
    "complete task . , then 1 2 3"
).split()

# Exact comparisons (`torch.equal`) are kept where the code guarantees them: the same computation on the same memory
# layout, e.g. an adapter in memory and reloaded (`GeneratedAdapter.from_pretrained` copies into fresh, aligned
# memory). A model loaded with `from_pretrained` keeps its weights where the memory-mapped file put them (8-48 bytes
# past a 64-byte boundary), and some CPUs' float32 kernels round differently there than on aligned memory: 9.5e-7 was
# seen on the tiny models' logits (AMD EPYC). Two summation orders of a float32 dot product of n terms differ by at
# most about n * 2**-24 of the sum of |terms| (n <= 64 here: 4e-6), and the tiny models' logits are of order 1 (|x|
# < 4) after a few such layers: `FLOAT32_ROUNDING` allows 1e-5 absolute plus 1e-5 relative, while a wrong weight or a
# missing adapter moves the logits by > 1e-3 (asserted where it matters).
FLOAT32_ROUNDING = {"rtol": 1e-5, "atol": 1e-5}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the block: one fixed order of every sum, whatever the machine's cores (for
    checks that compare two runs bit for bit); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_text_config(vocab_size: int = 96, **overrides) -> T5Config:
    kwargs = dict(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    kwargs.update(overrides)
    return T5Config(**kwargs)


def tiny_model(fusion: str = "cross_attention", seed: int = 0, perturb: bool = True, **config_kwargs) -> TagiModel:
    """A tiny TagiModel; with `perturb`, the zero-initialised parts get small random values so adapters and fusion
    actually change the outputs (a fresh model is, by design, identical to its backbone)."""
    torch.manual_seed(seed)
    config_kwargs.setdefault("lora_rank", 4)
    config = TagiConfig(
        text_config=tiny_text_config(), fusion=fusion, base_model_name_or_path="tiny-t5", **config_kwargs
    )
    model = TagiModel(config).eval()
    if perturb:
        with torch.no_grad():
            for param in model.generator.heads_b.parameters():
                param.normal_(0.0, 0.05)
            if model.generator.pooling is not None:  # zero queries pool the mean: make each module read its own
                model.generator.pooling.query.normal_(0.0, 1.0)
            if model.encoder_fusion is not None:
                for layer in model.encoder_fusion:
                    layer.gate.fill_(0.5)
                model.decoder_gates.weight.fill_(0.5)
    return model


def batch(n: int = 3, src: int = 7, ins: int = 9, vocab: int = 96, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random inputs, instruction ids (with some padding) and labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (n, src), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, src - 2 :] = 0
    instruction_input_ids = torch.randint(3, vocab, (n, ins), generator=g)
    instruction_attention_mask = torch.ones_like(instruction_input_ids)
    instruction_attention_mask[-1, ins - 3 :] = 0
    labels = torch.randint(3, vocab, (n, 5), generator=g)
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        instruction_input_ids=instruction_input_ids,
        instruction_attention_mask=instruction_attention_mask,
    )
