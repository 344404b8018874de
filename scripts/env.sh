# Sourced by run.sh and test.sh: create .venv once and (re)install fer-edge with the given
# extras only when pyproject.toml, constraints.txt or the extras changed, so both commands are
# idempotent. Installs are pinned by constraints.txt, the versions the suite was verified with,
# so a new release on the registry does not change what a fresh clone runs;
# FER_EDGE_CONSTRAINTS= (empty) resolves the newest versions pyproject.toml allows instead
# (scripts/check_newest.sh does that in a throw-away venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FER_EDGE_VENV:-$ROOT/.venv}"
CONSTRAINTS="${FER_EDGE_CONSTRAINTS-$ROOT/constraints.txt}"
EXTRAS="$1"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIN=()
if [ -n "$CONSTRAINTS" ]; then
  PIN=(-c "$CONSTRAINTS")
fi
STAMP="$VENV/.fer-edge-$(echo "$EXTRAS" | tr ',' '-')"
WANT="$( (cat "$ROOT/pyproject.toml"; [ -z "$CONSTRAINTS" ] || cat "$CONSTRAINTS") | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "installing fer-edge[$EXTRAS] into $VENV (first run takes a few minutes)" >&2
  LOG="$VENV/pip-install.log"
  if ! "$VENV/bin/python" -m pip install -q "${PIN[@]}" -e "$ROOT[$EXTRAS]" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "pip install failed (log above, also in $LOG)" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
