#!/usr/bin/env bash
# Trains the teacher ensemble of recipes/fer2013_cpu.yaml for many more epochs on a lent GPU, in
# one call of the device tool, and brings the teachers back here for the CPU stages.
#
#   scripts/gpu_teachers.sh pack                  # here: FER-2013 train+val -> .data/fer2013.tar.xz
#   scripts/gpu_teachers.sh train                 # there: run(command=..., carry=[".data"])
#   scripts/gpu_teachers.sh unpack FILES_AT DEST  # here: the teachers -> DEST/teacher_s<seed>/best
#
# Why a script: the device machine is bare and reaches nothing. ../shared does not travel, only
# the checkout and carried paths (64 MiB in all); fer-edge is not installed there (its image has
# torch, numpy, opencv, scikit-learn, matplotlib, pyyaml, tqdm, but not imagesize); what comes
# back is at most 8 files of 16 MiB. So `pack` sends the JPEGs as they are (xz: 46.5 MB, smaller
# than any decoded form) and imagesize (pure Python, copied from this environment, so `pack`
# needs no network), `train` runs fer-edge from the checkout, sizes
# the epochs to the time it has from a measured rate, and returns each teacher as one tar in
# parts of 15 MiB (a `vgg_wide` bundle is 19 MB).
#
# Settings (environment): ARCH (vgg_wide), SEEDS ("1 2"; at most 3, for the 8-file limit),
# EPOCHS (the most, 300), BUDGET_S (training seconds, 420: leaves the start, the benchmark and the
# copies inside one 600 s call), DEVICE (cuda), TRAIN_FLAGS (the CPU teachers' recipe),
# LIMIT_PER_CLASS (empty = all faces; set it for a rehearsal on the CPU), OUT (the device tool's
# folder that comes back), PACK_DIR (.data, which git ignores), WORK (/tmp/gpu_teachers).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK_DIR="${PACK_DIR:-$REPO/.data}"
PACK="$PACK_DIR/fer2013.tar.xz"
SITE="$PACK_DIR/site"
WORK="${WORK:-/tmp/gpu_teachers}"
ARCH="${ARCH:-vgg_wide}"
SEEDS="${SEEDS:-1 2}"
EPOCHS="${EPOCHS:-300}"
BUDGET_S="${BUDGET_S:-420}"
DEVICE="${DEVICE:-cuda}"
TRAIN_FLAGS="${TRAIN_FLAGS:---batch-size 128 --lr 0.05 --label-smoothing 0.1 --ema 0.999}"
LIMIT_PER_CLASS="${LIMIT_PER_CLASS:-}"
PART_BYTES="${PART_BYTES:-$((15 * 1024 * 1024))}"
TREE_LIMIT=$((64 * 1024 * 1024))

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
die() { echo "gpu_teachers: $*" >&2; exit 2; }

pack() {
  local shared="${FER_EDGE_SHARED:-$(cd "$REPO/.." && pwd)/shared}"
  local src="$shared/data/fer2013"
  [ -d "$src/train" ] && [ -d "$src/val" ] || die "no FER-2013 train/ and val/ under $src"
  mkdir -p "$PACK_DIR"
  tar cf - -C "$src" train val | xz -9 -T0 >"$PACK.tmp"
  mv "$PACK.tmp" "$PACK"
  rm -rf "$SITE" && mkdir -p "$SITE"
  cp -r "$(python3 -c 'import imagesize, os; print(os.path.dirname(imagesize.__file__))')" "$SITE/"
  local pack_bytes tree_bytes
  pack_bytes=$(du -sb "$PACK_DIR" | cut -f1)
  tree_bytes=$(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
  echo "pack: $pack_bytes bytes; the checkout that travels with it: $tree_bytes bytes"
  [ $((pack_bytes + tree_bytes)) -le "$TREE_LIMIT" ] \
    || die "checkout + pack = $((pack_bytes + tree_bytes)) bytes, over the device tool's 64 MiB"
}

train() {
  [ -f "$PACK" ] || die "$PACK is missing: run 'scripts/gpu_teachers.sh pack' here and carry .data"
  [ -n "${OUT:-}" ] || die "OUT is not set (the device tool sets it)"
  local seeds=($SEEDS)
  [ "${#seeds[@]}" -le 3 ] || die "at most 3 seeds: each teacher comes back as 2 of the 8 files"
  local work="$WORK"
  rm -rf "$work" && mkdir -p "$work/pkg/fer_edge" "$work/data" "$work/runs"
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$PACK" "$work/data"
  # The layout pyproject.toml installs (train/, compress/, runtimes/ under fer_edge), by links.
  for f in "$REPO"/fer_edge/*; do ln -s "$f" "$work/pkg/fer_edge/"; done
  for d in train compress runtimes; do ln -s "$REPO/$d" "$work/pkg/fer_edge/$d"; done
  export PYTHONPATH="$work/pkg:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  local limit=()
  [ -n "$LIMIT_PER_CLASS" ] && limit=(--limit-per-class "$LIMIT_PER_CLASS")
  local common=(--data "$work/data" --arch "$ARCH" --device "$DEVICE" "${limit[@]}" $TRAIN_FLAGS)
  local log="$OUT/log.txt"
  python3 -m fer_edge train "${common[@]}" --benchmark --benchmark-steps 50 | tee "$work/bench.json"
  local faces epochs
  faces=$(python3 -c "
import pathlib, sys
cap = int(sys.argv[2]) if sys.argv[2] else None
print(sum(min(len(list(d.iterdir())), cap or 10**9) for d in pathlib.Path(sys.argv[1]).iterdir()))" \
    "$work/data/train" "$LIMIT_PER_CLASS")
  # The seeds train side by side, so each gets a share of the measured rate; 0.8 leaves the
  # per-epoch validation and the start.
  epochs=$(python3 -c "
import json, sys
rate = json.load(open(sys.argv[1]))['images_per_s']
n = max(1, min(int(sys.argv[2]), int(0.8 * float(sys.argv[3]) * rate / int(sys.argv[4]) / int(sys.argv[5]))))
print(n)" "$work/bench.json" "$EPOCHS" "$BUDGET_S" "${#seeds[@]}" "$faces")
  echo "training ${#seeds[@]} x $ARCH for $epochs epochs on $faces faces" | tee "$log"
  local start=$SECONDS pids=()
  for s in "${seeds[@]}"; do
    timeout "$((BUDGET_S + 60))" python3 -m fer_edge train "${common[@]}" --epochs "$epochs" \
      --seed "$s" --no-progress --out "$work/runs/teacher_s$s" >"$work/train_s$s.log" 2>&1 &
    pids+=($!)
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  echo "training wall time $((SECONDS - start)) s" | tee -a "$log"
  for s in "${seeds[@]}"; do
    { echo "== seed $s"; cat "$work/train_s$s.log"; } >>"$log"
    [ -f "$work/runs/teacher_s$s/best/model.pt" ] || continue
    cp "$work/runs/teacher_s$s/metrics.jsonl" "$work/runs/teacher_s$s/best/"
    tar cf - -C "$work/runs/teacher_s$s" best | split -b "$PART_BYTES" -d - "$OUT/teacher_s$s.tar.part"
  done
  cp "$work/bench.json" "$OUT/bench.json"
  local files
  files=$(find "$OUT" -type f | wc -l)
  [ "$files" -le 8 ] || die "$files files in OUT: the device tool returns 8 (fewer seeds or larger PART_BYTES)"
  return "$failed"
}

unpack() {
  local from="${1:-}" dest="${2:-}"
  [ -d "$from" ] && [ -n "$dest" ] || die "usage: scripts/gpu_teachers.sh unpack FILES_AT DEST"
  local found=0
  for first in "$from"/teacher_s*.tar.part00; do
    [ -f "$first" ] || continue
    local name
    name=$(basename "$first" .tar.part00)
    mkdir -p "$dest/$name"
    cat "$from/$name".tar.part* | tar xf - -C "$dest/$name"
    echo "$dest/$name/best"
    found=1
  done
  [ "$found" = 1 ] || die "no teacher_s*.tar.part00 in $from"
}

case "${1:-}" in
  pack) pack ;;
  train) train ;;
  unpack) shift; unpack "$@" ;;
  -h|--help) usage ;;
  *) usage; exit 2 ;;
esac
