#!/usr/bin/env bash
# Set up .venv with every extra and run the checks CI runs: ruff (lint + format) and pytest.
# Real data is read from ../shared/data (or $FER_EDGE_DATA). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh "train,tflite,openvino,dev"
ruff check .
ruff format --check .
python -m pytest -q -p no:anyio --durations=15 "$@"
