#!/usr/bin/env bash
# The release as a user gets it: build the wheel and the sdist with `python -m build`, install
# the wheel into a fresh virtualenv (no editable install, the repository nowhere on sys.path:
# everything below runs from a temp dir) and run the installed command:
#   audiosocket-ai --version / --help, `config check` on examples/agent.toml, and a real call:
#   `audiosocket-ai serve --agent echo` on 127.0.0.1 answered by the installed package's own
#   `audiosocket-ai call`, whose reply must carry the caller's audio back bit-exact.
#
#   bash .ci/package.sh              # build into a temp dir, check, clean up
#   DIST=dist bash .ci/package.sh    # keep the wheel and sdist in ./dist
#
# About 20 s with a warm pip cache (the fresh venv installs every dependency: ~700 MB).
# Called by .ci/run after the tests. The container image (Dockerfile) is NOT built here:
# the CI machine has no container engine; tests/test_packaging.py checks the recipe instead.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/asa-package.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -INT "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "package check failed: $*" >&2; exit 1; }
quiet_pip() { grep -v "^WARNING: Location" || true; }

version=$("$repo/.venv/bin/python" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$repo/pyproject.toml")

# 1. Build (isolated build environment, as `pip install` would).
dist=${DIST:+$repo/$DIST}
dist=${dist:-$work/dist}
"$repo/.venv/bin/python" -m build --outdir "$dist" "$repo" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; fail "python -m build"; }
wheel=$dist/audiosocket_ai-$version-py3-none-any.whl
sdist=$dist/audiosocket_ai-$version.tar.gz
[ -f "$wheel" ] || fail "no $wheel"
[ -f "$sdist" ] || fail "no $sdist"
"$repo/.venv/bin/python" - "$wheel" "$sdist" <<'EOF' || fail "release contents"
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = set(zipfile.ZipFile(wheel).namelist())
for needed in ("audiosocket_ai/py.typed", "audiosocket_ai/cli.py", "audiosocket_ai/protocol/kinds.py",
               "audiosocket_ai/console/index.html", "audiosocket_ai/console/console.js",
               "audiosocket_ai/console/console.css"):
    assert needed in names, f"{wheel} lacks {needed}"
entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
assert "audiosocket-ai = audiosocket_ai.cli:main" in entry, entry
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), f"{wheel} lacks the licence text"
assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names), "wheel carries non-package files"
members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
for needed in ("pyproject.toml", "README.md", "LICENSE", "audiosocket_ai/py.typed", "dialplan/extensions.conf",
               "deploy/kubernetes.yaml", "deploy/audiosocket-ai.service", "Dockerfile", "examples/agent.toml",
               "examples/faq.toml", "docs/operations.md"):
    assert needed in members, f"{sdist} lacks {needed}"
print(f"release: {wheel.rsplit('/', 1)[1]} ({len(names)} files), {sdist.rsplit('/', 1)[1]} ({len(members)} files)")
EOF

# 2. A fresh venv with only the wheel (and its dependencies from the index).
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel" 2>&1 | quiet_pip
bin=$work/venv/bin/audiosocket-ai
[ -x "$bin" ] || fail "the wheel installed no audiosocket-ai script"
# The Dockerfile's runtime image is python:3.11-slim: Debian's base system plus Python. Every
# native library the installed wheels load from outside the venv must be one that base
# system has (glibc, libgcc, libstdc++, zlib), or the image would need apt packages.
extra=$(find "$work/venv" -name '*.so*' -type f -exec ldd {} + 2>/dev/null \
  | awk '/=>/ && $3 ~ /^\// {print $3}' | grep -v "^$work/" | sort -u \
  | grep -Ev '/(libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|ld-linux-x86-64|ld-linux-aarch64|libgcc_s|libstdc\+\+|libz)\.so' || true)
[ -z "$extra" ] || fail "the wheels need system libraries the slim image lacks: $extra"

# 3. Run it from a directory that has nothing to do with the repository.
cd "$work"
unset PYTHONPATH
export PYTHONNOUSERSITE=1 PYTHONSAFEPATH=1
"$work/venv/bin/python" - "$repo" <<'EOF' || fail "the installed package is not the one imported"
import sys, audiosocket_ai
repo = sys.argv[1]
assert not audiosocket_ai.__file__.startswith(repo), f"imported from the repository: {audiosocket_ai.__file__}"
assert not any(p and p.startswith(repo) for p in sys.path), f"repository on sys.path: {sys.path}"
print(f"installed: audiosocket_ai {audiosocket_ai.__version__} from {audiosocket_ai.__file__}")
EOF
# (outputs captured first: `cmd | grep -q` can fail under pipefail when grep exits early)
out=$("$bin" --version); [ "$out" = "audiosocket-ai, version $version" ] || fail "--version said: $out"
out=$("$bin" --help); [[ $out == *serve* && $out == *call* && $out == *config* ]] || fail "--help: $out"
out=$("$bin" serve --help); [[ $out == *--agent* ]] || fail "serve --help: $out"
# The example as shipped, with its /var/lib paths pointed at this temp dir (a CI machine has
# no /var/lib/audiosocket-ai).
sed "s#/var/lib/audiosocket-ai#$work/state#g" "$repo/examples/agent.toml" >"$work/agent.toml"
mkdir -p "$work/state/transcripts" "$work/state/recordings"
"$bin" config check "$work/agent.toml" >"$work/check.out" || { cat "$work/check.out" >&2; fail "config check"; }

# 4. A real call: the installed server (echo agent) and the installed test caller.
ports=$("$work/venv/bin/python" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
read -r port status_port <<<"$ports"
"$bin" serve --agent echo --host 127.0.0.1 --port "$port" --metrics-port "$status_port" >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  grep -q "listening on 127.0.0.1:$port" "$work/serve.log" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; fail "serve exited"; }
  sleep 0.1
done
grep -q "listening on 127.0.0.1:$port" "$work/serve.log" || { cat "$work/serve.log" >&2; fail "serve did not listen"; }
"$work/venv/bin/python" - "$work/in.wav" <<'EOF'
import math, struct, sys, wave
rate = 8000
samples = [int(8000 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(rate)]  # 1 s of 440 Hz
with wave.open(sys.argv[1], "wb") as out:
    out.setnchannels(1); out.setsampwidth(2); out.setframerate(rate)
    out.writeframes(struct.pack(f"<{len(samples)}h", *samples))
EOF
call_id=4f1c2b7e-0000-4000-8000-0000000000aa
"$bin" call "$work/in.wav" --out "$work/reply.wav" --host 127.0.0.1 --port "$port" --tail 500 --uuid "$call_id" \
  || { cat "$work/serve.log" >&2; fail "audiosocket-ai call"; }
"$work/venv/bin/python" - "$work/in.wav" "$work/reply.wav" "$status_port" "$call_id" <<'EOF' \
  || { cat "$work/serve.log" >&2; fail "the echo did not come back"; }
import json, sys, time, urllib.error, urllib.request, wave
sent, heard = (wave.open(p, "rb") for p in sys.argv[1:3])
pcm_in, pcm_out = sent.readframes(sent.getnframes()), heard.readframes(heard.getnframes())
assert heard.getframerate() == 8000, heard.getframerate()
# The echo agent returns every frame it receives, bit-exact, one frame later.
assert pcm_in in pcm_out, f"the {len(pcm_in)} bytes sent are not in the {len(pcm_out)} bytes heard"
url = f"http://127.0.0.1:{sys.argv[3]}"
assert urllib.request.urlopen(f"{url}/healthz", timeout=5).status == 200
outcome: dict[str, object] = {}
for _ in range(50):  # the outcome is complete once the server has seen the call end
    try:
        outcome = json.loads(urllib.request.urlopen(f"{url}/calls/{sys.argv[4]}", timeout=5).read())
    except urllib.error.HTTPError:
        pass
    if outcome.get("end_reason"):
        break
    time.sleep(0.1)
assert outcome.get("end_reason") == "caller_hung_up", outcome
print(f"echo call: {len(pcm_in)} bytes sent came back bit-exact in {len(pcm_out)} bytes; outcome {outcome}")
EOF
kill -INT "$server_pid"
wait "$server_pid" || { cat "$work/serve.log" >&2; fail "serve exited non-zero after SIGINT"; }
server_pid=
echo "package check ok: $(basename "$wheel") installed in a fresh venv, version, help, config check and an echo call"
