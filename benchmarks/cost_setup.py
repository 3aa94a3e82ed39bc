"""Shapes, models and inputs of the cost benchmark (`benchmarks/cost.py`).

Two kinds of shape:
- `synthetic-*`: the synthetic suite's token lengths, measured on a freshly written suite (seed 0) with the demo's
  tokenizer, on the demo's stand-in config (`DemoSettings`: d_model 96, 2+2 layers, vocab = the tokenizer's size,
  LoRA rank 8, alpha 16);
- `sni-base-def2pos`: SNI "Def + 2 Pos." lengths on a T5-base-sized config (t5-base-lm-adapt: d_model 768, 12+12
  layers, 12 heads, d_ff 2048 gated-gelu, untied head, vocab 32128), LoRA rank 32, alpha 64 (the paper's alpha = 2r).

Weights are random (FLOPs and time do not depend on their values). The generator's B heads and the fusion gates are
drawn non-zero so that the merged-versus-on-the-fly checks compare something.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from dataclasses import asdict, dataclass, field

import torch
from transformers import T5Config, T5ForConditionalGeneration

from tagi_hf import TagiConfig, TagiModel

# `tagi_hf.recipes` / `tagi_hf.data` (they need `datasets`) are imported where the synthetic
# shapes are built, so the SNI-shape benchmark runs on a machine without them.


@dataclass
class Shape:
    """One benchmark shape: backbone config, token lengths and batch sizes."""

    name: str
    description: str
    text_config: dict  # T5Config.to_dict() of the backbone
    instruction_tokens: int  # the instruction (hypernetwork input)
    input_tokens: int  # the instance input alone (TAGI's and the floor's source)
    in_context_tokens: int  # instruction + instance (the in-context baseline's source)
    output_tokens: int  # greedy decoding steps (fixed) and label length in training
    lora_rank: int
    lora_alpha: float
    instances_per_task: int = 100
    inference_batch_size: int = 25
    train_batch_size: int = 8
    measured: dict = field(default_factory=dict)  # where the lengths come from

    def t5_config(self) -> T5Config:
        return T5Config.from_dict(self.text_config)

    def tagi_config(self, fusion: str, **generator) -> TagiConfig:
        """`generator`: TagiConfig's generator fields (default: TagiConfig's)."""
        return TagiConfig(
            text_config=self.t5_config(), lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, fusion=fusion,
            **generator,
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


def sni_base_text_config() -> T5Config:
    """A t5-base-lm-adapt-sized T5 v1.1 config (random weights are drawn from it)."""
    return T5Config(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_decoder_layers=12,
        num_heads=12,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.1,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def sni_base_shape(train_batch_size: int = 8) -> Shape:
    return Shape(
        name="sni-base-def2pos",
        description='SNI "Def + 2 Pos." on a T5-base-sized config (random weights), LoRA rank 32',
        text_config=sni_base_text_config().to_dict(),
        instruction_tokens=384,
        input_tokens=128,
        in_context_tokens=512,
        output_tokens=16,
        lora_rank=32,
        lora_alpha=64.0,
        train_batch_size=train_batch_size,
        measured={"source": "stated: instruction 384, input 128, in-context 384 + 128 = 512, output 16 tokens"},
    )


def measure_synthetic_lengths(seed: int = 0) -> dict:
    """Token lengths of the synthetic suite's test split (100 instances per task), with the demo's tokenizer.

    Returns `{"vocab_size": int, "test_instances": int, "def": {...}, "def+2pos": {...}}`, each setting holding the
    mean and max of the instruction, instance input, in-context input and first output (each with `</s>`).
    """
    from tagi_hf.data import (
        format_instruction,
        format_student_input,
        format_teacher_input,
        load_sni,
        write_synthetic_suite,
    )
    from tagi_hf.recipes.synthetic import DemoSettings, demo_corpus, train_demo_tokenizer

    demo = dataclasses.replace(DemoSettings(), seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_suite(tmp, seed=seed, instances_per_task=100)
        data = load_sni(tmp, max_train_instances_per_task=demo.instances_per_task, seed=seed)
    train, test = data["train"], data["test"]
    tokenizer = train_demo_tokenizer(train, demo_corpus(demo), demo.vocab_size)

    def lengths(texts: list[str]) -> dict:
        counts = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        return {"mean": statistics.fmean(counts), "max": max(counts)}

    result = {"vocab_size": len(tokenizer), "test_instances": len(test), "seed": seed}
    for setting, num_pos in (("def", 0), ("def+2pos", 2)):
        instructions = [format_instruction(r["definition"], r["positive_examples"] or [], num_pos) for r in test]
        result[setting] = {
            "instruction": lengths(instructions),
            "input": lengths([format_student_input(r["input"]) for r in test]),
            "in_context": lengths([format_teacher_input(i, r["input"]) for i, r in zip(instructions, test)]),
            "output": lengths([r["outputs"][0] for r in test]),
        }
    return result


def synthetic_shapes(measured: dict) -> list[Shape]:
    """The two synthetic shapes ("Def" and "Def + 2 Pos."), lengths rounded from the measured means."""
    from tagi_hf.recipes.standin import standin_config
    from tagi_hf.recipes.synthetic import DemoSettings

    demo = DemoSettings()
    text = standin_config(measured["vocab_size"], d_model=demo.d_model, num_layers=demo.num_layers)
    shapes = []
    for setting, tag in (("def", "def"), ("def+2pos", "def2pos")):
        lens = {k: round(v["mean"]) for k, v in measured[setting].items()}
        shapes.append(
            Shape(
                name=f"synthetic-{tag}",
                description=f'synthetic suite "{setting}" on the demo stand-in (d_model {demo.d_model}, '
                f"{demo.num_layers}+{demo.num_layers} layers), LoRA rank {demo.lora_rank}",
                text_config=text.to_dict(),
                instruction_tokens=lens["instruction"],
                input_tokens=lens["input"],
                in_context_tokens=lens["in_context"],
                output_tokens=lens["output"],
                lora_rank=demo.lora_rank,
                lora_alpha=2.0 * demo.lora_rank,
                train_batch_size=demo.batch_size,
                measured={"source": "rounded means over the synthetic test split", **measured[setting]},
            )
        )
    return shapes


# ------------------------------------------------------------------------------------------------------- models
@dataclass
class Models:
    """The models of one shape, all sharing the same backbone weights."""

    t5: T5ForConditionalGeneration  # the bare backbone: floor and instruction-in-context baseline
    tagi: TagiModel  # fusion="cross_attention"
    tagi_no_fusion: TagiModel  # fusion="none"


def _perturb(model: TagiModel, generator: torch.Generator) -> None:
    """Small non-zero generated updates and fusion gates, so the merged-versus-on-the-fly checks compare something.

    The B heads are drawn so that an update `(alpha/r) B A` has entries about a tenth of a backbone weight's
    (`1/sqrt(d_in)`): large random updates make a deep random T5 chaotic, and fp32 rounding then decides its logits.
    """
    config = model.config
    hidden = config.hypernet_hidden_size
    std = 0.1 / (config.lora_scaling * config.lora_rank**0.5 * hidden**0.5)
    with torch.no_grad():
        for head in model.generator.heads_b.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * std)
        if model.encoder_fusion is not None:
            for layer in model.encoder_fusion:
                layer.gate.fill_(0.1)
            model.decoder_gates.weight.fill_(0.1)


def build_models(shape: Shape, seed: int, device: str = "cpu", *, train: bool = False) -> Models:
    """Random T5 backbone (seeded) and the two TAGI models around copies of it, in eval mode unless `train`."""
    torch.manual_seed(seed)
    t5 = T5ForConditionalGeneration(shape.t5_config())
    state = t5.state_dict()
    models = []
    for fusion in ("cross_attention", "none"):
        model = TagiModel(shape.tagi_config(fusion))
        model.backbone.load_state_dict(state)  # same backbone weights as the floor and the baseline
        _perturb(model, torch.Generator().manual_seed(seed + 1))
        models.append(model)
    out = Models(t5, *models)
    for model in (out.t5, out.tagi, out.tagi_no_fusion):
        model.to(device).train(train)
    return out


@dataclass
class Inputs:
    """Random token ids of one task: its instruction, its instances alone and with the instruction in context."""

    instruction: torch.Tensor  # (1, instruction_tokens)
    inputs: torch.Tensor  # (instances, input_tokens)
    in_context: torch.Tensor  # (instances, in_context_tokens): the instruction, filler, then the instance

    def to(self, device: str) -> Inputs:
        return Inputs(self.instruction.to(device), self.inputs.to(device), self.in_context.to(device))


def random_ids(generator: torch.Generator, vocab: int, *shape: int) -> torch.Tensor:
    ids = torch.randint(3, vocab, shape, generator=generator)  # no pad / eos / unk inside
    ids[..., -1] = 1  # T5 sources end with </s>
    return ids


def task_inputs(shape: Shape, seed: int, instances: int | None = None) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    vocab = shape.text_config["vocab_size"]
    n = instances or shape.instances_per_task
    instruction = random_ids(gen, vocab, 1, shape.instruction_tokens)
    inputs = random_ids(gen, vocab, n, shape.input_tokens)
    # In-context source: the instruction without its </s>, a bridge ("Now complete the following example -"), the
    # instance (ending in </s>).
    bridge_tokens = shape.in_context_tokens - (shape.instruction_tokens - 1) - shape.input_tokens
    if bridge_tokens < 0:
        raise ValueError(f"Shape `{shape.name}`: the in-context length is shorter than instruction + input.")
    bridge = torch.randint(3, vocab, (1, bridge_tokens), generator=gen).expand(n, -1)
    in_context = torch.cat([instruction[:, :-1].expand(n, -1), bridge, inputs], dim=1)  # (n, in_context_tokens)
    return Inputs(instruction, inputs, in_context)
