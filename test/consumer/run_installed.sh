#!/usr/bin/env bash
# Installs a kin build into a staging directory, builds test/consumer/main.cpp against it with
# plain `$CXX $(pkg-config --cflags --libs kin)`, runs it, and checks it exits 0.
# Usage: run_installed.sh KIN_BUILD_DIR [extra compiler flags, e.g. -fsanitize=address,undefined]
# Exit status: 0 pass, 77 skip (meson, pkg-config or the compiler missing), anything else fail.
set -euo pipefail

me=$(basename "$0")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fail() { echo "$me: FAIL: $*" >&2; exit 1; }

(($# >= 1)) || { echo "usage: $me KIN_BUILD_DIR [compiler flags...]" >&2; exit 2; }
build_dir=$(cd "$1" && pwd)
shift
read -r -a cxx <<<"${CXX:-g++}"  # CXX may carry a launcher, e.g. "ccache g++"
for tool in meson pkg-config "${cxx[0]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$me: SKIP: $tool not found" >&2; exit 77; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kin-consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
stage=$tmp/stage

meson install -C "$build_dir" --no-rebuild --quiet --destdir "$stage" \
  || fail "meson install -C $build_dir --destdir $stage failed"
pc=$(find "$stage" -path '*/pkgconfig/kin.pc' -print -quit)
[[ -n $pc ]] || fail "the staged install has no pkgconfig/kin.pc"

# The staged kin.pc comes first on the path and the sysroot maps its prefix into the stage;
# the ALLOW_SYSTEM_* variables keep -I/-L that pkg-config would drop for a prefix of /usr.
pc_dir=$(dirname "$pc")
export PKG_CONFIG_PATH="$pc_dir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_SYSROOT_DIR=$stage PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
flags=$(pkg-config --cflags --libs kin) || fail "pkg-config --cflags --libs kin failed"
libdir=$(pkg-config --libs-only-L kin) || fail "pkg-config --libs-only-L kin failed"
libdir=${libdir#-L}
libdir=${libdir%% *}
[[ $libdir == "$stage"/* ]] || fail "kin.pc's -L ($libdir) is not inside the stage"
echo "$me: pkg-config --cflags --libs kin: $flags"

# $flags is word-split on purpose: it is a list of compiler arguments.
# shellcheck disable=SC2086
"${cxx[@]}" -std=c++20 "$here/main.cpp" -o "$tmp/kin-consumer" $flags "$@" \
  || fail "compiling main.cpp against the installed kin failed"

run=()
if command -v timeout >/dev/null 2>&1; then run=(timeout 60); fi
status=0
LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "${run[@]}" "$tmp/kin-consumer" \
  || status=$?
((status == 0)) || fail "kin-consumer exited with status $status"
echo "$me: PASS"
