#!/usr/bin/env bash
# Installs a Debian package the tests need (a server or a browser) when its program is missing and
# this user may install (root with apt-get); elsewhere says how, and the tests that need it skip
# (CI requires them: PIPELINE_REQUIRE_*). Usage: system-package.sh <package> <why> <program-or-glob>...
set -uo pipefail
package=$1 why=$2
shift 2
for program in "$@"; do
  if command -v "$program" >/dev/null 2>&1 || compgen -G "$program" >/dev/null; then exit 0; fi
done
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's $package for $why"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "$package" >/dev/null \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "$package" >/dev/null; }
else
  echo "no $package here: $why will skip (Debian/Ubuntu: sudo apt-get install $package)"
fi
