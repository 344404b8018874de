# Sourced by run.sh and test.sh: create .venv once and (re)install fer-edge with the given
# extras only when pyproject.toml or the extras changed, so both commands are idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FER_EDGE_VENV:-$ROOT/.venv}"
EXTRAS="$1"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
STAMP="$VENV/.fer-edge-$(echo "$EXTRAS" | tr ',' '-')"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "installing fer-edge[$EXTRAS] into $VENV (first run takes a few minutes)" >&2
  LOG="$VENV/pip-install.log"
  if ! "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "pip install failed (log above, also in $LOG)" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
