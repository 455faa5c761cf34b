#!/usr/bin/env bash
# Builds test/consumer as its own Meson project with kin as its subproject, runs it, and checks
# it exits 0. Usage: run_subproject.sh SRC_ROOT BUILD_TMP [extra meson setup args...]
# Exit status: 0 pass, 77 skip (meson or ninja missing), anything else fail.
set -euo pipefail

me=$(basename "$0")
fail() { echo "$me: FAIL: $*" >&2; exit 1; }

(($# >= 2)) || { echo "usage: $me SRC_ROOT BUILD_TMP [meson setup args...]" >&2; exit 2; }
src_root=$(cd "$1" && pwd)
build_tmp=$2
shift 2
for tool in meson ninja; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$me: SKIP: $tool not found" >&2; exit 77; }
done

mkdir -p "$build_tmp"
tmp=$(mktemp -d "$build_tmp/consumer-subproject.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/src/subprojects"
cp "$src_root/test/consumer/meson.build" "$src_root/test/consumer/main.cpp" "$tmp/src/"
ln -s "$src_root" "$tmp/src/subprojects/kin"

# --force-fallback-for: a kin installed on this machine must not stand in for the one under test.
meson setup --wrap-mode=nodownload --force-fallback-for=kin "$@" "$tmp/build" "$tmp/src" \
  || fail "meson setup of the consumer project failed (extra args: $*)"
ninja -C "$tmp/build" || fail "building the consumer project (kin as a subproject) failed"

run=()
if command -v timeout >/dev/null 2>&1; then run=(timeout 60); fi
status=0
"${run[@]}" "$tmp/build/kin-consumer" || status=$?
((status == 0)) || fail "kin-consumer exited with status $status"
echo "$me: PASS"
