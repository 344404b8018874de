#!/usr/bin/env bash
# fer-edge on aarch64 (Raspberry Pi OS 64-bit, Jetson) by user-mode emulation, with output parity
# against x86_64. Needs root on an x86_64 Debian/Ubuntu host (chroot, mount, binfmt_misc).
#
#   sudo scripts/arm64_check.sh            # full check, writes docs/results/arm64.json
#   sudo scripts/arm64_check.sh --quick    # 70 faces, one emulated CPU, no test suite
#
# Builds (once) a Debian arm64 root with debootstrap + qemu-user-static from the apt mirror this
# host uses, and a venv in it with fer-edge's aarch64 wheels from pip's configured index, pinned
# by constraints.txt; both are cached in $FER_EDGE_ARM64_CACHE (default /var/cache/fer-edge-arm64,
# outside the repo) so a second run only reinstalls the fer-edge wheel. Then, under emulation:
#   1. the README's run command (fer-edge predict) on the sample photos, vs the same on x86;
#   2. every shipped bundle except the pytorch one on a fixed class-stratified set of FER-2013
#      test faces, vs the same faces scored on x86 by the same script (scripts/arm64_parity.py),
#      emulating a Cortex-A72 (Raspberry Pi 4) and a Cortex-A76 (Raspberry Pi 5);
#   3. the torch-free test files (SDK, runtimes, detection, bundle, stream, ...);
#   4. fer-edge bench --json (emulated: NOT a device figure).
# Everything it mounts or registers is undone on exit, failure included.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FER_EDGE_ARM64_CACHE:-/var/cache/fer-edge-arm64}"
SHARED="${FER_EDGE_SHARED:-$(cd "$REPO/.." && pwd)/shared}"
HOST_PY="${PYTHON:-python3}"
QUICK=0
FACES=300
CPUS="cortex-a72 cortex-a76"
TESTS=1
TEST_TIMEOUT=420
OUT=""
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --faces) FACES="$2"; shift ;;
    --cpus) CPUS="$2"; shift ;;
    --no-tests) TESTS=0 ;;
    --test-timeout) TEST_TIMEOUT="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "arm64_check: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  FACES=70; CPUS="cortex-a72"; TESTS=0
  OUT="${OUT:-$CACHE/arm64_quick.json}"
fi
OUT="${OUT:-$REPO/docs/results/arm64.json}"
COMMAND="scripts/arm64_check.sh $*"

[ "$(id -u)" = 0 ] || { echo "arm64_check: needs root (chroot, mount, binfmt_misc)" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || { echo "arm64_check: the host must be x86_64" >&2; exit 1; }
[ -d "$SHARED/data/fer2013/test" ] || { echo "arm64_check: no $SHARED/data/fer2013/test" >&2; exit 1; }

ROOT="$CACHE/root"
RUN="$CACHE/run"
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -n 9 || { echo "arm64_check: another run holds $CACHE/lock" >&2; exit 1; }
rm -rf "$RUN"
mkdir -p "$RUN"
: > "$RUN/times.tsv"
say() { echo "[arm64_check $(date +%H:%M:%S)] $*" >&2; }
T0=0
stage_start() { T0=$(date +%s%N); say "$1"; }
stage_end() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '%s\t%d.%d\n' "$1" $((ms / 1000)) $((ms % 1000 / 100)) >> "$RUN/times.tsv"
  # what building the cache cost, kept with the cache: the first run's time in the report
  case "$1" in debootstrap|apt_python|venv|x86_venv) tail -1 "$RUN/times.tsv" >> "$CACHE/build_times.tsv" ;; esac
}

# --------------------------------------------------------------------- undo on exit
MOUNTS=()
BINFMT_MOUNTED=0
BINFMT_REGISTERED=0
cleanup() {
  local rc=$?
  set +e
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" || echo "could not unmount ${MOUNTS[$i]}" >&2
  done
  if [ "$BINFMT_REGISTERED" = 1 ] && [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64
  fi
  if [ "$BINFMT_MOUNTED" = 1 ]; then
    umount /proc/sys/fs/binfmt_misc
  fi
  [ "$rc" = 0 ] || say "failed (exit $rc); mounts and the binfmt entry were undone; logs in $RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bind() {  # bind SRC DEST [ro]
  [ -e "$2" ] || mkdir -p "$2"
  mount --bind "$1" "$2"
  MOUNTS+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

# --------------------------------------------------------------------- host tools, emulator
stage_start "host packages"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap >/dev/null
fi
stage_end host_packages
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  BINFMT_MOUNTED=1
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
  BINFMT_REGISTERED=1
fi

# --------------------------------------------------------------------- the arm64 root (cached)
SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
MIRROR="$(grep -h -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -1)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOT_KEY="$SUITE $MIRROR"
if [ "$(cat "$ROOT/.fer-edge-root" 2>/dev/null || true)" != "$ROOT_KEY" ]; then
  touch "$CACHE/first_run_pending"
  stage_start "debootstrap arm64 $SUITE from $MIRROR (first run only)"
  rm -rf "$ROOT"
  : > "$CACHE/build_times.tsv"
  debootstrap --arch=arm64 --foreign --variant=minbase "$SUITE" "$ROOT" "$MIRROR" > "$RUN/debootstrap.log" 2>&1
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >> "$RUN/debootstrap.log" 2>&1
  stage_end debootstrap
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/etc/apt/sources.list.d"
# the host's CA bundle (it may hold a proxy's CA) where the root's ca-certificates package
# cannot regenerate it away; pip and Python's ssl are pointed at it
mkdir -p "$ROOT/opt/fer"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/opt/fer/host-ca.crt"
# the host's Debian sources (enabled ones only); the root is Debian, so others do not apply
for f in /etc/apt/sources.list.d/*.sources; do
  if grep -q 'debian' "$f"; then cp "$f" "$ROOT/etc/apt/sources.list.d/" && rm -f "$ROOT/etc/apt/sources.list"; fi
done
# pip's configured index: the host's pip.conf (its file:// indexes hold x86 wheels only and do not
# exist in the root, so pip uses the network index it names or PyPI)
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
bind /proc "$ROOT/proc"
# qemu-user passes the host's /proc/cpuinfo through: x86 text where ONNX Runtime's cpuinfo
# expects ARM's, and its import crashes (SIGSEGV). A Pi shows ARM text, so the root gets the
# /proc/cpuinfo of the emulated CPU (rewritten per command, see in_root)
CPUINFO="$CACHE/cpuinfo"
: > "$CPUINFO"
bind "$CPUINFO" "$ROOT/proc/cpuinfo"
bind /sys "$ROOT/sys"     # ONNX Runtime's cpuinfo reads the processor lists there
bind /dev "$ROOT/dev"
bind /dev/pts "$ROOT/dev/pts"  # apt and dpkg open pseudo-terminals
bind "$SHARED" "$ROOT/work/shared" ro

arm_cpuinfo() {  # arm_cpuinfo CPU: /proc/cpuinfo of a Linux arm64 machine with that core
  local part features
  case "$1" in
    cortex-a72) part=0xd08; features="fp asimd evtstrm crc32 cpuid" ;;
    *) part=0xd0b; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
  esac
  for ((i = 0; i < $(nproc); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$features"
    printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 0\n\n' "$part"
  done
}
in_root() {  # in_root CPU CMD...: run CMD in the root emulating CPU, with a clean environment
  local cpu="$1"; shift
  arm_cpuinfo "$cpu" > "$CPUINFO"  # same file, new text: the bind mount shows it
  chroot "$ROOT" /usr/bin/env -i PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 PIP_CERT=/opt/fer/host-ca.crt SSL_CERT_FILE=/opt/fer/host-ca.crt \
    REQUESTS_CA_BUNDLE=/opt/fer/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    QEMU_CPU="$cpu" OMP_NUM_THREADS=1 /bin/bash -c "$*"
}

if [ ! -x "$ROOT/usr/bin/python3" ] || ! in_root max "python3 -c 'import venv, ensurepip'" 2>/dev/null; then
  stage_start "python3 in the root (first run only)"
  in_root max "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates > /dev/null"
  stage_end apt_python
fi
echo "$ROOT_KEY" > "$ROOT/.fer-edge-root"  # a complete root: the next run reuses it

# --------------------------------------------------------------------- the wheel, both venvs
stage_start "fer-edge wheel from $REPO"
rm -rf "$CACHE/wheel"
"$HOST_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$CACHE/wheel" "$REPO" > "$RUN/wheel.log" 2>&1 \
  || "$HOST_PY" -m pip wheel -q --no-deps -w "$CACHE/wheel" "$REPO" >> "$RUN/wheel.log" 2>&1
WHEEL="$(ls "$CACHE"/wheel/fer_edge-*.whl)"
stage_end wheel
rm -f "$ROOT"/opt/fer/*.whl
cp "$WHEEL" "$REPO/constraints.txt" "$ROOT/opt/fer/"
AWHEEL="/opt/fer/$(basename "$WHEEL")"
TEST_DEPS="pytest pytest-timeout hypothesis onnx"
# the venvs are rebuilt only when what they install changes: the project's dependencies and
# extras (not the rest of pyproject.toml), constraints.txt or the test packages
DEPS="$("$HOST_PY" -c 'import json, sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True))' "$REPO/pyproject.toml")"
DEPS_KEY="$( (echo "$DEPS"; cat "$REPO/constraints.txt"; echo "$TEST_DEPS") | sha256sum | cut -c1-16)"

if [ "$(cat "$ROOT/opt/venv/.fer-edge-deps" 2>/dev/null || true)" != "$DEPS_KEY" ]; then
  stage_start "aarch64 venv with fer-edge[tflite,openvino] (first run, or constraints changed)"
  touch "$CACHE/first_run_pending"
  rm -rf "$ROOT/opt/venv"
  in_root max "python3 -m venv /opt/venv && pip install -q --upgrade pip" > "$RUN/venv.log" 2>&1
  NOTE=""
  if in_root max "pip install -c /opt/fer/constraints.txt '$AWHEEL[tflite,openvino]' $TEST_DEPS" >> "$RUN/venv.log" 2>&1; then
    NOTE="all pinned by constraints.txt, openvino included"
  elif in_root max "pip install -c /opt/fer/constraints.txt '$AWHEEL[tflite]' $TEST_DEPS" >> "$RUN/venv.log" 2>&1; then
    NOTE="pinned by constraints.txt; the openvino extra did not install on aarch64 (venv.log)"
  else
    in_root max "pip install '$AWHEEL[tflite]' $TEST_DEPS" >> "$RUN/venv.log" 2>&1
    NOTE="constraints.txt could not be met on aarch64; newest compatible versions installed"
  fi
  echo "$NOTE" > "$ROOT/opt/venv/.fer-edge-constraints-note"
  echo "$DEPS_KEY" > "$ROOT/opt/venv/.fer-edge-deps"
  stage_end venv
fi
stage_start "reinstall the fer-edge wheel in the aarch64 venv"
in_root max "pip install -q --no-deps --force-reinstall '$AWHEEL'" > "$RUN/reinstall.log" 2>&1
# which pinned versions the aarch64 venv does not have (none where every pin has an aarch64 wheel)
in_root max "pip freeze" > "$RUN/freeze_aarch64.txt"
{
  cat "$ROOT/opt/venv/.fer-edge-constraints-note"
  "$HOST_PY" - "$REPO/constraints.txt" "$RUN/freeze_aarch64.txt" <<'EOF'
import re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
pins = dict(l.split("==") for l in open(sys.argv[1]) if "==" in l and not l.startswith("#"))
pins = {norm(k): v.strip() for k, v in pins.items()}
got = {norm(k): v.strip() for k, v in (l.split("==") for l in open(sys.argv[2]) if "==" in l)}
diff = [f"{k} {got[k]} (pinned {pins[k]})" for k in sorted(got) if k in pins and got[k] != pins[k]]
unpinned = [f"{k} {got[k]}" for k in sorted(got) if k not in pins and k != "fer-edge"]
print("differs from constraints.txt: " + (", ".join(diff) or "nothing"))
print("not in constraints.txt: " + (", ".join(unpinned) or "nothing"))
EOF
} > "$RUN/constraints_note.txt"
stage_end reinstall

X86="$CACHE/x86-venv"
if [ "$(cat "$X86/.fer-edge-deps" 2>/dev/null || true)" != "$DEPS_KEY" ]; then
  stage_start "x86_64 reference venv (first run, or constraints changed)"
  rm -rf "$X86"
  "$HOST_PY" -m venv "$X86"
  "$X86/bin/pip" install -q -c "$REPO/constraints.txt" "$WHEEL[tflite,openvino]" > "$RUN/x86-venv.log" 2>&1 \
    || "$X86/bin/pip" install -q -c "$REPO/constraints.txt" "$WHEEL[tflite]" >> "$RUN/x86-venv.log" 2>&1
  echo "$DEPS_KEY" > "$X86/.fer-edge-deps"
  stage_end x86_venv
fi
"$X86/bin/pip" install -q --no-deps --force-reinstall "$WHEEL" > "$RUN/x86-reinstall.log" 2>&1

# --------------------------------------------------------------------- the repo's files for the run
# tracked + untracked-not-ignored files, minus the SDK's Python sources, so that the tests and
# commands import the installed wheel and never the checkout
stage_start "copy tests, examples and bundles into the root"
rm -rf "$ROOT/work/fer-edge"
mkdir -p "$ROOT/work/fer-edge"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
  | grep -z -v -E '^(fer_edge|runtimes|train|compress)/.*\.py$' \
  | xargs -0 tar -cf - --ignore-failed-read 2>/dev/null) | tar -xf - -C "$ROOT/work/fer-edge"
stage_end copy

# --------------------------------------------------------------------- 1. the README's run command
# the README's command (run.sh) as it is, then `predict --json` on a folder of the sample photos
rm -rf "$CACHE/photos" "$ROOT/opt/fer/photos"
mkdir -p "$CACHE/photos"
find "$REPO/examples/media" -maxdepth 1 -type f \( -name '*.jpg' -o -name '*.png' \) -exec cp {} "$CACHE/photos/" \;
for p in portrait.jpg group_selfie.jpg solvay_conference.jpg grace_hopper.jpg astronaut.png no-faces.jpg; do
  [ -f "$SHARED/data/media/$p" ] && cp "$SHARED/data/media/$p" "$CACHE/photos/"
done
cp -r "$CACHE/photos" "$ROOT/opt/fer/photos"
stage_start "fer-edge predict on the sample photos (x86, then emulated aarch64)"
"$X86/bin/fer-edge" predict "$CACHE/photos" --json > "$RUN/predict_x86_64.jsonl" 2> "$RUN/predict_x86_64.err"
in_root cortex-a72 "cd /work/fer-edge && timeout 1200 fer-edge predict examples/media --annotate /tmp/sample_annotated && timeout 1200 fer-edge predict /opt/fer/photos --json > /opt/fer/predict.jsonl" \
  > "$RUN/predict_aarch64.out" 2>&1
mv "$ROOT/opt/fer/predict.jsonl" "$RUN/predict_aarch64.jsonl"
stage_end predict

# --------------------------------------------------------------------- 2. parity of every bundle
stage_start "scores of $FACES faces on x86_64"
cp "$REPO/scripts/arm64_parity.py" "$ROOT/opt/fer/"
"$X86/bin/python" "$REPO/scripts/arm64_parity.py" scores --data "$SHARED/data/fer2013/test" \
  --faces "$FACES" --out "$RUN/scores_x86_64.json" > "$RUN/scores_x86_64.log" 2>&1
stage_end scores_x86
for cpu in $CPUS; do
  stage_start "scores of $FACES faces on emulated aarch64 ($cpu)"
  in_root "$cpu" "timeout 3000 python /opt/fer/arm64_parity.py scores --data /work/shared/data/fer2013/test --faces $FACES --qemu-cpu $cpu --out /opt/fer/scores.json" \
    > "$RUN/scores_aarch64_$cpu.log" 2>&1
  mv "$ROOT/opt/fer/scores.json" "$RUN/scores_aarch64_$cpu.json"
  stage_end "scores_aarch64_$cpu"
done

# --------------------------------------------------------------------- 3. torch-free tests
# the test files that import neither torch nor fer_edge.train / fer_edge.compress (checked here,
# so a file that starts importing torch drops out instead of failing), minus those that need the
# eval extra (matplotlib)
if [ "$TESTS" = 1 ]; then
  # fastest and most device-relevant first; files not reached within the budget are reported
  ORDER="bundle runtimes aarch64 openvino_precision detect recognizer stream concurrency install data arm64_tools cli_predict_bench calibration hardening"
  ELIGIBLE="$(cd "$REPO/tests" && grep -L -E '(import torch|from torch|fer_edge\.(train|compress)|train_helpers|matplotlib|fer_edge\.plots)' test_*.py | grep -v -E '^test_plot_')"
  : > "$RUN/test_files.txt"
  for t in $ORDER; do echo "$ELIGIBLE" | grep -qx "test_$t.py" && echo "tests/test_$t.py" >> "$RUN/test_files.txt"; done
  for f in $ELIGIBLE; do grep -qx "tests/$f" "$RUN/test_files.txt" || echo "tests/$f" >> "$RUN/test_files.txt"; done
  stage_start "pytest under emulation (cortex-a72), budget ${TEST_TIMEOUT}s: $(tr '\n' ' ' < "$RUN/test_files.txt")"
  DEADLINE=$(($(date +%s) + TEST_TIMEOUT))
  : > "$RUN/tests_not_run.txt"
  mkdir -p "$RUN/junit"
  for f in $(cat "$RUN/test_files.txt"); do
    LEFT=$((DEADLINE - $(date +%s)))
    if [ "$LEFT" -lt 30 ]; then echo "$f" >> "$RUN/tests_not_run.txt"; continue; fi
    name="$(basename "$f" .py)"
    # test_calibration's eval test draws a plot: it needs the eval extra, not installed here
    in_root cortex-a72 "cd /work/fer-edge && FER_EDGE_REQUIRE_DATA=1 timeout -s INT -k 30 $LEFT pytest -p no:cacheprovider -q --timeout 600 --junitxml=/opt/fer/junit_$name.xml --deselect tests/test_calibration.py::test_eval_reports_ece_and_draws_the_reliability_diagram $f" \
      >> "$RUN/pytest.log" 2>&1 || true
    if [ -f "$ROOT/opt/fer/junit_$name.xml" ]; then
      mv "$ROOT/opt/fer/junit_$name.xml" "$RUN/junit/"  # on the budget's SIGINT pytest reports what ran
    else
      echo "$f (no report: killed at the time budget)" >> "$RUN/tests_not_run.txt"
    fi
    say "$f: $(tail -1 "$RUN/pytest.log")"
  done
  stage_end tests
fi

# --------------------------------------------------------------------- 4. the benchmark (emulated)
stage_start "fer-edge bench --json under emulation (not a device figure)"
in_root cortex-a72 "cd /work/fer-edge && timeout 1200 fer-edge bench --model default --threads 1 --frames 30 --warmup 5 --json" \
  > "$RUN/bench.json" 2> "$RUN/bench.err" || say "bench failed: $(tail -2 "$RUN/bench.err")"
stage_end bench

# --------------------------------------------------------------------- report
QUICKFLAG=()
[ "$QUICK" = 1 ] && QUICKFLAG=(--quick)
cp "$CACHE/build_times.tsv" "$RUN/build_times.tsv" 2>/dev/null || true
# the first run is the one that built the cache and got this far (a failed try's stages count)
[ -e "$CACHE/first_run_pending" ] && touch "$RUN/cold"
"$X86/bin/python" "$REPO/scripts/arm64_parity.py" report --run "$RUN" --out "$OUT" \
  --command "$COMMAND" "${QUICKFLAG[@]}"
rm -f "$CACHE/first_run_pending"
say "done in $(awk -F'\t' '{s += $2} END {printf "%.0f", s}' "$RUN/times.tsv") s; report $OUT"
