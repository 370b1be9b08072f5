#!/usr/bin/env bash
# Provide a real Asterisk for the integration tests (tests/integration/), plus the tools
# they use to make test audio (sox, espeak-ng).
#
#   bash .ci/asterisk.sh            # build or reuse, print the asterisk binary path last
#
# Asterisk is built from the pinned source tarball in ../shared/asterisk (no network
# needed for the build itself) into a cached prefix, so a second run costs nothing.
# Env:
#   ASTERISK_PREFIX   where to install (default ~/.cache/audiosocket-ai/asterisk-22.10.1);
#                     the tests read the same variable to find the binary
#   FORCE=1           rebuild even if the prefix already holds an Asterisk
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared_asterisk=${AUDIOSOCKET_AI_ASTERISK_SRC:-$repo/../shared/asterisk}
PREFIX=${ASTERISK_PREFIX:-$HOME/.cache/audiosocket-ai/asterisk-22.10.1}

if [ ! -x "$shared_asterisk/build.sh" ] && [ ! -f "$shared_asterisk/build.sh" ]; then
  echo "error: $shared_asterisk/build.sh not found (set AUDIOSOCKET_AI_ASTERISK_SRC)" >&2
  exit 1
fi

# Test-audio tools. apt-get needs root; say what is missing instead of failing obscurely.
missing=()
command -v sox >/dev/null 2>&1 || missing+=(sox)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: need ${missing[*]} (apt-get install ${missing[*]}) and cannot install without root" >&2
    exit 1
  fi
fi

mkdir -p "$(dirname "$PREFIX")"
# build.sh is itself idempotent (it returns at once when PREFIX/sbin/asterisk exists) and
# prints the binary's path on its last line; keep only that line as ours.
binary=$(bash "$shared_asterisk/build.sh" "$PREFIX" | tail -n 1)
if [ ! -x "$binary" ]; then
  echo "error: build finished but $binary is not an executable" >&2
  exit 1
fi
# Modules our tests need beyond what build.sh enables, built from the same tarball into
# the same prefix (pbx_spool: call files in the outgoing spool, for `audiosocket-ai dial`;
# func_uri: URIENCODE() for the per-call context recipe).
extra_modules=(pbx/pbx_spool funcs/func_uri)
need=()
for module in "${extra_modules[@]}"; do
  [ -f "$PREFIX/lib/asterisk/modules/$(basename "$module").so" ] || need+=("$module")
done
if [ ${#need[@]} -gt 0 ]; then
  tarball=$(ls "$shared_asterisk"/asterisk-*.tar.xz | tail -n 1)
  version=$(basename "$tarball" .tar.xz); version=${version#asterisk-}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "building extra Asterisk modules: ${need[*]}" >&2
  tar -xJf "$tarball" -C "$work"
  (
    cd "$work/asterisk-$version"
    log=$work/extra.log
    # the same configure line as build.sh, so the module matches the installed core
    ./configure --prefix="$PREFIX" --without-pjproject-bundled --without-pjproject \
      --with-jansson-bundled=no --without-libjwt-bundled >>"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
    make menuselect.makeopts >>"$log" 2>&1
    dirs=()
    for module in "${need[@]}"; do
      dir=$(dirname "$module")
      menuselect/menuselect --disable-category "MENUSELECT_$(echo "$dir" | tr a-z A-Z)" menuselect.makeopts >>"$log" 2>&1
      dirs+=("$dir")
    done
    for module in "${need[@]}"; do
      menuselect/menuselect --enable "$(basename "$module")" menuselect.makeopts >>"$log" 2>&1
    done
    # the top-level make builds a module directory with the flags the core was built with
    make "${dirs[@]}" >>"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
    for module in "${need[@]}"; do
      install -m 755 "$module.so" "$PREFIX/lib/asterisk/modules/$(basename "$module").so"
    done
  )
fi

"$binary" -V >&2
echo "$binary"
