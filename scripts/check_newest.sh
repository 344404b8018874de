#!/usr/bin/env bash
# Check fer-edge against the newest dependency versions pyproject.toml allows, on demand: build a
# throw-away venv without constraints.txt, list every package whose resolved version differs
# from the lock, and run what CI runs (./test.sh) in that venv. With --update, a passing run
# writes the new versions into constraints.txt (review and commit it). Arguments after the
# options go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATE=0
if [ "${1:-}" = "--update" ]; then
  UPDATE=1
  shift
fi
WORK="$(mktemp -d -t fer-edge-newest-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export FER_EDGE_VENV="$WORK/venv" FER_EDGE_CONSTRAINTS=
source scripts/env.sh "train,tflite,openvino,dev"
"$FER_EDGE_VENV/bin/python" -m pip freeze --exclude-editable | grep -v '^fer-edge' | sort > "$WORK/newest.txt"
python3 - constraints.txt "$WORK/newest.txt" <<'PY'
import sys

def pins(path):
    rows = (line.strip().split("==") for line in open(path) if "==" in line and not line.startswith("#"))
    return {name.lower(): version for name, version in rows}

lock, newest = pins(sys.argv[1]), pins(sys.argv[2])
changed = {n: (lock.get(n, "(not locked)"), v) for n, v in newest.items() if lock.get(n) != v}
print(f"{len(changed)} of {len(newest)} packages differ from constraints.txt (lock -> newest):")
for name, (old, new) in sorted(changed.items()):
    print(f"  {name}: {old} -> {new}")
PY
./test.sh "$@"
if [ "$UPDATE" = 1 ]; then
  { sed -n '/^#/p' constraints.txt; cat "$WORK/newest.txt"; } > constraints.txt.new
  mv constraints.txt.new constraints.txt
  echo "constraints.txt updated to the newest versions: review with git diff and commit" >&2
fi
