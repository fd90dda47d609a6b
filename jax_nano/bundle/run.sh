#!/usr/bin/env bash
# Runs one job of jax-nano from this bundle, with no network and no root:
#   ./run.sh JOB [ARGS] [--out DIR]       (or OUT_DIR=DIR ./run.sh JOB [ARGS])
# JOB: @JOBS@. Every result, log and profile goes under the output folder.
# The first run installs the bundle's wheels into site/ inside the bundle; later runs reuse it.
set -euo pipefail
BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY_WANTED="@PYTHON@"
JOBS="@JOBS@"
PYTHON="${PYTHON:-python3}"
die() { echo "error: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "no job given; usage: run.sh JOB [ARGS] [--out DIR], JOB one of ${JOBS// /, }"
JOB="$1"
shift
case " $JOBS " in
  *" $JOB "*) ;;
  *) die "unknown job '$JOB'; choose one of ${JOBS// /, }" ;;
esac
OUT="${OUT_DIR:-}"
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ -n "$OUT" ] || die "no output folder; pass --out DIR or set OUT_DIR"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON to the target's Python $PY_WANTED"
HAVE="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$HAVE" = "$PY_WANTED" ] || die "this bundle's wheels are for Python $PY_WANTED but $PYTHON is $HAVE; set \
PYTHON=python$PY_WANTED or rebuild the bundle with --python $HAVE"

SITE="$BUNDLE/site"
if [ -d "$BUNDLE/wheels" ] && [ ! -f "$SITE/.installed" ]; then
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip to install the bundle's wheels; install pip"
  TMP="$SITE.tmp.$$"
  rm -rf "$TMP"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-warn-conflicts --target "$TMP" "$BUNDLE"/wheels/*.whl \
    || die "installing the bundle's wheels into $SITE failed (pip's message above); is the bundle folder writable?"
  touch "$TMP/.installed"
  mv -T "$TMP" "$SITE" 2>/dev/null || rm -rf "$TMP"  # another run installed it meanwhile
fi

mkdir -p "$OUT" || die "cannot create the output folder $OUT"
OUT="$(cd "$OUT" && pwd)"
# Relative paths (--data processed_data/offline, the tracks' defaults, results/, runs/) work in the output folder.
[ -e "$OUT/processed_data" ] || [ ! -d "$BUNDLE/processed_data" ] || ln -s "$BUNDLE/processed_data" "$OUT/processed_data"
[ -e "$OUT/LEADERBOARD.md" ] || cp "$BUNDLE/src/LEADERBOARD.md" "$OUT/LEADERBOARD.md"
export PYTHONPATH="$SITE:$BUNDLE/src${PYTHONPATH:+:$PYTHONPATH}"
export JAX_NANO_TOKENIZER="${JAX_NANO_TOKENIZER:-$BUNDLE/tokenizer/tokenizer.json}"
export JAX_NANO_CACHE="${JAX_NANO_CACHE:-$OUT/xla-cache}"
export MPLCONFIGDIR="${MPLCONFIGDIR:-$OUT/.matplotlib}"
cd "$OUT"
exec "$PYTHON" -m jax_nano.bundle.job "$JOB" ${ARGS[@]+"${ARGS[@]}"}
