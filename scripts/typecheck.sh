#!/usr/bin/env bash
# Type-checks the package as it installs: backends/ inside loops/ as
# loops/backends (pyproject maps it there with package-dir; mypy reads
# folders, not setuptools' mapping, so the check runs on a copy laid out so).
# Paths in messages are the repository's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/loops" "$tmp/loops"
cp -r "$root/backends" "$tmp/loops/backends"
cd "$tmp"
python -m mypy --config-file "$root/pyproject.toml" --cache-dir "$tmp/.mypy_cache" loops 2>&1 \
  | sed -e 's#^loops/backends/#backends/#'
exit "${PIPESTATUS[0]}"
