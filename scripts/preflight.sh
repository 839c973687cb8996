#!/usr/bin/env bash
# `make preflight` (run before every `make setup`): what this machine must have before the virtual
# environment is built, each with a one-line fix. Usage:
#   scripts/preflight.sh [PYTHON]        the host: Python 3.11 with venv, Java 17+, and for the tests PostgreSQL and Redis
#   scripts/preflight.sh --venv VENV     after installing: one distribution per package, the runtimes importable
# Exit status 1 when something required is missing; notes (optional tools) never fail it.
set -uo pipefail

failed=0
os="$(uname -s)"
fix() {  # debian-fix, macos-fix
  if [[ "$os" == Darwin ]]; then echo "$2"; else echo "$1"; fi
}
bad() { printf 'preflight: MISSING %s\n           fix: %s\n' "$1" "$2" >&2; failed=1; }
ok() { printf 'preflight: ok      %s\n' "$1"; }
note() { printf 'preflight: note    %s\n' "$1"; }

if [[ "${1:-}" == --venv ]]; then
  # Two wheels that install the same top-level package overwrite each other's files (pyspark and
  # pyspark-client; onnxruntime and onnxruntime-gpu); a later uninstall of one breaks the other.
  "${2:-.venv}/bin/python" - <<'EOF' || failed=1
import importlib.metadata as md
import sys

owners = md.packages_distributions()
bad = False
for package in ("pyspark", "onnxruntime", "torch"):
    dists = sorted(set(owners.get(package, [])))
    if len(dists) > 1:
        bad = True
        print(f"preflight: CONFLICT {' and '.join(dists)} both install the '{package}' package\n"
              f"           fix: rm -rf .venv && make setup   (ORT_EXTRA=gpu for onnxruntime-gpu, never both)",
              file=sys.stderr)
    elif not dists:
        bad = True
        extra = "  (the cpu or gpu extra: pip install -e '.[cpu]')" if package == "onnxruntime" else ""
        print(f"preflight: MISSING the '{package}' package\n           fix: make setup{extra}", file=sys.stderr)
    else:
        print(f"preflight: ok      {package} from {dists[0]} {md.version(dists[0])}")
sys.exit(1 if bad else 0)
EOF
  exit "$failed"
fi

# --- Python 3.11, with venv and pip (Debian and Ubuntu ship them apart) ---
python="${1:-}"
[[ -n "$python" ]] || python="$(command -v python3.11 || command -v python3 || true)"
if [[ -z "$python" ]] || ! command -v "$python" >/dev/null 2>&1; then
  bad "Python 3.11 (no python3.11 or python3 on PATH)" \
      "$(fix 'sudo apt-get install python3.11 python3.11-venv' 'brew install python@3.11')   (or: uv python install 3.11, then make PYTHON=\$(uv python find 3.11))"
else
  version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
  if [[ "$version" != 3.11 ]]; then
    bad "Python 3.11 ($python is ${version:-not runnable}; the lock is for 3.11)" \
        "$(fix 'sudo apt-get install python3.11 python3.11-venv' 'brew install python@3.11'), then make PYTHON=python3.11   (or: uv python install 3.11)"
  elif ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    bad "the venv module with pip for $python" "$(fix 'sudo apt-get install python3.11-venv' 'brew reinstall python@3.11')"
  else
    ok "Python $version ($python)"
  fi
fi

# --- Java 17+: Spark (the features job) runs on it; JAVA_HOME wins over PATH, as for Spark ---
if [[ -n "${JAVA_HOME:-}" ]]; then java="$JAVA_HOME/bin/java"; where="JAVA_HOME=$JAVA_HOME"; else java="$(command -v java || true)"; where=PATH; fi
java_fix="$(fix 'sudo apt-get install openjdk-17-jre-headless' 'brew install openjdk@17 && export JAVA_HOME=$(brew --prefix openjdk@17)')"
if [[ -z "$java" || ! -x "$java" ]]; then
  bad "Java 17+ for Spark (no java on $where)" "$java_fix"
else
  line="$("$java" -version 2>&1 | head -1)"
  major="$(sed -nE 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/p' <<<"$line")"
  read -r first second <<<"$major"
  [[ "${first:-0}" == 1 ]] && first="${second:-0}"
  if [[ -z "$major" || "${first:-0}" -lt 17 ]]; then
    bad "Java 17+ for Spark ($java from $where is: ${line:-unreadable})" "$java_fix"
  else
    ok "Java $first ($java)"
  fi
fi

# --- the tests' own needs (make test) ---
if [[ "${PREFLIGHT_TESTS:-0}" == 1 ]]; then
  # PATH, else Debian's versioned folders (where tests/e2e/test_postgres.py looks too).
  pg="$(command -v initdb || ls -d ${PREFLIGHT_POSTGRES_GLOB:-/usr/lib/postgresql/*/bin/initdb} 2>/dev/null | tail -1 || true)"
  if [[ -n "$pg" ]]; then
    ok "PostgreSQL server binaries ($(dirname "$pg")) for tests/e2e/test_postgres.py"
  elif [[ "${PIPELINE_REQUIRE_POSTGRES:-0}" == 1 ]]; then
    bad "PostgreSQL server binaries (initdb, pg_ctl), required here by PIPELINE_REQUIRE_POSTGRES=1" \
        "$(fix 'sudo apt-get install postgresql' 'brew install postgresql@16')"
  else
    note "no PostgreSQL server binaries: tests/e2e/test_postgres.py will skip ($(fix 'sudo apt-get install postgresql' 'brew install postgresql@16'))"
  fi
  redis="$(command -v redis-server || true)"
  if [[ -n "$redis" ]]; then
    ok "redis-server ($redis) for the Redis online store tests"
  elif [[ "${PIPELINE_REQUIRE_REDIS:-0}" == 1 ]]; then
    bad "redis-server, required here by PIPELINE_REQUIRE_REDIS=1" "$(fix 'sudo apt-get install redis-server' 'brew install redis')"
  else
    note "no redis-server: the Redis online store tests will skip ($(fix 'sudo apt-get install redis-server' 'brew install redis'))"
  fi
fi

# --- room for the virtual environment (~3.5 GB) and a demo run ---
free_kb="$(df -Pk . 2>/dev/null | awk 'NR == 2 {print $4}')"
if [[ -n "$free_kb" && "$free_kb" -lt 5000000 ]]; then
  note "only $((free_kb / 1024)) MB free here: the environment takes ~3.5 GB and a demo run ~1 GB"
fi

exit "$failed"
