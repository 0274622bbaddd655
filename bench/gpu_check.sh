#!/usr/bin/env bash
# The GPU check: on a CUDA machine with torch, transformers, safetensors, pyarrow and numpy
# installed (no network, no datatrove, no virtualenv of this project), run the GPU tests and
# a short training benchmark of `small` and `base` at 1024 tokens (tokens/s and MFU).
#
#   bash bench/gpu_check.sh [STEPS]      # STEPS per model, default 200
#
# Prints everything to the console; exits non-zero if a test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
steps=${1:-200}

$PYTHON - <<'EOF'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE'}")
EOF

echo "== GPU tests"
$PYTHON -m pytest -q -p no:cacheprovider -rs \
    tests/trainer/test_attention.py tests/trainer/test_model.py tests/trainer/test_train_gpu.py
status=$?

echo "== training throughput, eager (bf16, attention backend auto)"
$PYTHON bench/gpu_train.py --models small base --steps "$steps" || status=1
echo "== training throughput, torch.compile"
$PYTHON bench/gpu_train.py --models small --steps "$steps" --compile || status=1
exit $status
