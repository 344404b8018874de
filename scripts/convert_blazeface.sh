#!/usr/bin/env bash
# Development time only: convert the vendored BlazeFace .tflite detectors to ONNX, so that the
# base install (ONNX Runtime, no LiteRT or OpenVINO) runs the fast detector. tflite2onnx is a
# pure-Python converter (Apache-2.0) that installs into a throw-away venv; nothing of it ships.
# After running, update the sha256 table in fer_edge/assets/NOTICE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q tflite2onnx==0.4.1 onnx==1.23.2
for v in short full; do
  "$venv/bin/tflite2onnx" "fer_edge/assets/face_detection_${v}_range.tflite" \
    "fer_edge/assets/face_detection_${v}_range.onnx" 2>&1 | grep -v "float16 not supported" || true
done
sha256sum fer_edge/assets/*.onnx
