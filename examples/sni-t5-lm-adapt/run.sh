#!/usr/bin/env bash
# TAGI on Super-NaturalInstructions with T5-LM-adapt, the paper's recipe. Needs a GPU machine with internet
# access to the Hub (google/t5-base-lm-adapt, allenai/c4) and a clone of allenai/natural-instructions in
# ./natural-instructions. For XL: replace t5-base by t5-xl and the stage-2 learning rate by 5e-5 (--learning-rate).
set -euo pipefail
cd "$(dirname "$0")"
tagi-hf train-baseline --config baseline.yaml
tagi-hf train-teachers --config teachers.yaml
tagi-hf pretrain --config pretrain.yaml
tagi-hf train --config train.yaml
tagi-hf evaluate --config evaluate.yaml
tagi-hf evaluate --config evaluate.yaml --setting def --output runs/sni-base/metrics-def.json \
    --predictions-file runs/sni-base/predictions-def.jsonl
