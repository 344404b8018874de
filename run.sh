#!/usr/bin/env bash
# Set up .venv with the on-device SDK and predict the emotions of the faces in the sample photos
# with the shipped default model, writing them annotated to runs/sample_annotated/ (the last line
# says where). Pass paths (images, folders or videos) to use your own.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh "tflite"
if [ "$#" -eq 0 ]; then
  echo "no input given: predicting on the sample photos in examples/media/" >&2
  set -- examples/media --annotate runs/sample_annotated
fi
# predict says where the annotated pictures were written ("annotated output written to ...")
fer-edge predict "$@"
