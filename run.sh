#!/usr/bin/env bash
# Set up .venv with the on-device SDK and predict the emotions of the faces in the sample photo
# with the shipped default model. Pass a path (image, folder or video) to use your own.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh "tflite"
if [ "$#" -eq 0 ]; then
  echo "no input given: playing the bundled sample photo examples/media/solvay_conference.jpg" >&2
  set -- examples/media/solvay_conference.jpg --annotate runs/solvay_annotated.png
fi
fer-edge predict "$@"
