"""Peak memory of generating adapters for 1,000 vs 10,000 instructions: streamed to disk vs all held in memory.

```
python benchmarks/adapter_memory.py                 # writes benchmarks/results/adapter_memory.json
python benchmarks/adapter_memory.py --counts 200    # a quick look
```

Each measurement runs in a fresh Python process (its peak RSS, `ru_maxrss`, is then its own): a tiny TagiModel
(T5 of width 32, 2+2 layers, rank 4, instruction fusion on) generates one adapter per instruction and writes them in
the layout of `tagi_hf.hub.save_adapters`, either with `tagi_hf.hub.generate_adapters_to_disk` (`streaming`:
64 adapters alive at a time) or with `model.generate_adapter(all)` then `save_adapters` (`in_memory`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "adapter_memory.json"
WORDS = "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat".split()
VERBS = "reverse sort keep remove replace add repeat count write".split()
SEED = 0
BATCH_SIZE = 64


def instructions(count: int, seed: int = SEED):
    """`count` distinct-ish instructions of 12 to 40 words, generated lazily."""
    rng = random.Random(seed)
    for i in range(count):
        words = [rng.choice(VERBS)] + [rng.choice(WORDS) for _ in range(rng.randint(11, 39))]
        yield f"Definition: {' '.join(words)} {i}"


def build(seed: int = SEED):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, set_seed

    from tagi_hf import TagiConfig, TagiModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "Definition:": 3}
    for word in [*WORDS, *VERBS]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    set_seed(seed)
    text = T5Config(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
                    dropout_rate=0.0, decoder_start_token_id=0)  # fmt: skip
    model = TagiModel(TagiConfig(text_config=text, lora_rank=4, base_model_name_or_path="tiny-t5")).eval()
    return model, tokenizer


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(mode: str, count: int) -> dict:
    """One measurement (run in its own process)."""
    import torch

    from tagi_hf.hub import save_adapters
    from tagi_hf.hub.collections import generate_adapters_to_disk

    torch.set_num_threads(1)
    model, tokenizer = build()
    model.generate_adapter("Definition: sort apple", tokenizer)  # warm-up: lazy allocations are not the adapters'
    before = _rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "adapters"
        if mode == "streaming":
            generate_adapters_to_disk(model, tokenizer, instructions(count), out, batch_size=BATCH_SIZE)
        else:
            adapters = model.generate_adapter(list(instructions(count)), tokenizer, batch_size=BATCH_SIZE)
            save_adapters(adapters, out)
        written = sum(1 for p in out.iterdir() if p.is_dir())
        disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert written == count, (written, count)
    return {"mode": mode, "instructions": count, "peak_rss_mb": round(_rss_mb(), 1),
            "rss_before_generation_mb": round(before, 1), "seconds": round(time.perf_counter() - start, 1),
            "bytes_on_disk": disk}  # fmt: skip


def machine() -> dict:
    import psutil
    import safetensors
    import torch
    import transformers

    import tagi_hf

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "tagi_hf": tagi_hf.__version__,
        },  # fmt: skip
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000], help="Numbers of instructions.")
    parser.add_argument("--modes", nargs="+", default=["streaming", "in_memory"], choices=["streaming", "in_memory"])
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where to write the JSON results.")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return {}
    runs = []
    for count in args.counts:
        for mode in args.modes:
            command = [sys.executable, __file__, "--child", mode, str(count)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(json.dumps(result))
            runs.append(result)
    report = {
        "benchmark": "peak RSS of generating and saving N adapters (tiny TagiModel, fusion on)",
        "model": "T5 d_model=32, 2+2 layers, vocab 64; lora_rank=4 on q,v of every attention; fusion cross_attention",
        "batch_size": BATCH_SIZE,
        "seeds": {"model": SEED, "instructions": SEED},
        "torch_threads": 1,
        "machine": machine(),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
