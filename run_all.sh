#!/usr/bin/env bash
# geolocal: bootstrap .venv if needed, then run the notebooks (default) or the tests (--test).
#   ./run_all.sh [--profile smoke|default|full] [-p NAME VALUE]... [--only NN] [--from NN --to NN]
#   ./run_all.sh --test [pytest args]
#   ./run_all.sh --install        (bootstrap only)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${PYTHON:-python3}

bootstrap() {
  local stamp="$VENV/.geolib-install" want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0  # nothing changed since the last install
  fi
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "error: geolocal needs Python >= 3.10; set PYTHON=/path/to/python3.11" >&2; exit 1; }
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  echo "installing geolib and its dependencies into $VENV (a few minutes the first time; log: $VENV/install.log)"
  if ! "$VENV/bin/python" -m pip install -e '.[dev]' -c constraints.txt >"$VENV/install.log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$VENV/install.log" | tail -n 30 >&2
    echo "error: pip install failed; full log in $VENV/install.log" >&2
    exit 1
  fi
  "$VENV/bin/nbstripout" --is-installed >/dev/null 2>&1 || "$VENV/bin/nbstripout" --install >/dev/null 2>&1 || true
  echo "$want" >"$stamp"
}

case "${1:-}" in
  --install) bootstrap ;;
  --test)
    shift
    bootstrap
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
    # Two workers, one per core; the notebooks' pipeline stays on one worker, in order.
    exec "$VENV/bin/python" -m pytest -n "${GEOLIB_TEST_WORKERS:-2}" --dist loadgroup "$@"
    ;;
  -h|--help)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    bootstrap
    exec "$VENV/bin/python" -m geolib run --help
    ;;
  *)
    bootstrap
    exec "$VENV/bin/python" -m geolib run "$@"
    ;;
esac
