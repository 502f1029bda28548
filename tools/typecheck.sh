#!/usr/bin/env bash
# mypy over every product package, as the installed package sees itself (hepascope.*): the
# repository root is the package but has no __init__.py (pyproject maps its folders), so
# the sources are copied under a scratch hepascope/ first. Usage: tools/typecheck.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/hepascope"
(cd "$root" && git ls-files -co --exclude-standard | grep -E '\.(py|pyi)$|py\.typed$' \
    | grep -v '^tests/' | tar cf - -T - | tar xf - -C "$tmp/hepascope")
touch "$tmp/hepascope/__init__.py"
cd "$tmp"
MYPYPATH="$tmp" mypy --config-file "$root/pyproject.toml" -p hepascope.core \
    -p hepascope.engines -p hepascope.stream -p hepascope.train -p hepascope.bench \
    -p hepascope.phantom -p hepascope.cli
