#!/usr/bin/env bash
# Rebuild the bundled backdoored models exactly as shipped (see assets/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -m defense train --dataset mnist5k --attack badnets --target 0 --poison-rate 0.1 --epochs 8 --seed 0 --out assets/models/mnist-badnets
$PY -m defense train --dataset mnist5k --attack blend   --target 3 --poison-rate 0.1 --epochs 8 --seed 1 --out assets/models/mnist-blend
$PY -m defense train --dataset mnist5k --attack sig     --target 5 --poison-rate 0.1 --epochs 8 --seed 2 --out assets/models/mnist-sig
$PY -m defense train --dataset mnist5k --attack wanet   --target 7 --poison-rate 0.1 --epochs 8 --seed 3 --out assets/models/mnist-wanet
# research scale: BackdoorBench's PreAct-ResNet-18 at width 16 (1,200 neurons in 20 conv layers); ~10-40 min on 2 cores
$PY -m defense train --dataset mnist5k --arch preactresnet18 --arch-kwargs '{"width": 16}' --attack badnets --target 0 --poison-rate 0.1 --epochs 30 --shift 2 --seed 0 --out assets/models/mnist-preact-badnets
