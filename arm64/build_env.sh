#!/usr/bin/env bash
# Build (or reuse) an emulated arm64 Python with exactly what `phosphene[edge]` puts on a board.
#
#   bash arm64/build_env.sh            # prints the launcher paths when done
#
# What it makes, under $PHOSPHENE_ARM64_CACHE (default arm64/.cache, git-ignored):
#   qemu/      Debian trixie's qemu-user 10.0 (a static x86-64 binary), unpacked, not installed
#   root/      Debian bookworm arm64 sysroot: python3.11 3.11.2 + glibc 2.36 (= Raspberry Pi OS
#              bookworm), from .debs fetched by apt-get with a private arm64 configuration
#   site-litert/  arm64 wheels: numpy 2, click, pyserial, ai-edge-litert 2.3.0
#   site-tflite/  arm64 wheels: numpy 1.26.4, click, pyserial, tflite-runtime 2.14.0
#   site-phosphene/  this working tree's phosphene wheel (pure Python), rebuilt on every run
#   bin/py-litert, bin/py-tflite   launchers: `bin/py-litert -m phosphene verify BUNDLE`
# Nothing is installed into the system and the system's dpkg architecture list is untouched,
# except with PHOSPHENE_ARM64_QEMU=bookworm, which apt-get installs bookworm's
# qemu-user-static 7.2 (needs root) and adds the /proc/cpuinfo workaround (docs/deploy.md).
# Idempotent: every step is guarded by a stamp that names its inputs; a second run takes seconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PHOSPHENE_ARM64_CACHE:-$REPO/arm64/.cache}"
HOST_PY="${PHOSPHENE_HOST_PYTHON:-$REPO/.venv/bin/python}"
QEMU_FLAVOUR="${PHOSPHENE_ARM64_QEMU:-trixie}"
MIRROR="${PHOSPHENE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# The board's Python: Debian bookworm's, the same 3.11.2 and glibc 2.36 as Raspberry Pi OS.
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1
      libstdc++6 libgcc-s1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1
      libncursesw6 libtinfo6 libreadline8 libdb5.3 libcrypt1 media-types)
# Pinned so x86 and arm64 run the same versions; LiteRT works with numpy 1.26 and 2.x,
# tflite-runtime 2.14 needs numpy < 2 (docs/toolchain.md).
LITERT_WHEELS=(numpy==2.4.6 click==8.5.1 pyserial==3.5 ai-edge-litert==2.3.0)
TFLITE_WHEELS=(numpy==1.26.4 click==8.5.1 pyserial==3.5 tflite-runtime==2.14.0)
PLATFORMS=(manylinux_2_27_aarch64 manylinux_2_34_aarch64 manylinux2014_aarch64
           manylinux_2_17_aarch64)

log() { echo "[arm64 env] $*" >&2; }
die() { echo "[arm64 env] error: $*" >&2; exit 1; }
stamp_ok() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

[[ -x "$HOST_PY" ]] || die "no host Python at $HOST_PY: run 'make venv' first (or set PHOSPHENE_HOST_PYTHON)"
command -v dpkg >/dev/null && command -v apt-get >/dev/null || die "needs Debian's apt-get and dpkg"
[[ -r "$KEYRING" ]] || die "missing $KEYRING (apt-get install debian-archive-keyring)"
mkdir -p "$CACHE/bin"
start_s=$SECONDS
# One build at a time per cache (make arm64-check and the CI test may share it).
exec 9> "$CACHE/.lock"
flock 9

# apt-get with a private state: its own sources, lists, cache and an empty dpkg status, so it
# neither reads nor changes the host's package database or architecture list.
apt_private() {  # apt_private DIR ARCH SUITES -- apt-get args...
  local dir="$1" arch="$2" suites="$3"; shift 4
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/parts"
  : > "$dir/sources.list"
  for suite in $suites; do
    echo "deb [arch=$arch signed-by=$KEYRING] $MIRROR $suite main" >> "$dir/sources.list"
  done
  touch "$dir/status"
  apt-get -qq -oAPT::Architecture="$arch" -oAPT::Architectures="$arch" \
    -oDir::State::Lists="$dir/lists" -oDir::Etc::SourceList="$dir/sources.list" \
    -oDir::Etc::SourceParts="$dir/parts" -oDir::Cache="$dir/cache" \
    -oDir::State::status="$dir/status" -oDebug::NoLocking=1 \
    -oAPT::Sandbox::User=root "$@"
}

# 1. qemu ---------------------------------------------------------------------------------
# bookworm's qemu-user-static 7.2 shows the guest the host's x86 /proc/cpuinfo, which makes
# ai-edge-litert segfault on Interpreter(); qemu 10 emulates an arm64 /proc/cpuinfo.
case "$QEMU_FLAVOUR" in
  trixie)
    QEMU="$CACHE/qemu/usr/bin/qemu-aarch64"
    if ! stamp_ok "$CACHE/qemu/.stamp" "trixie qemu-user"; then
      log "fetching Debian trixie qemu-user (static qemu 10) ..."
      rm -rf "$CACHE/qemu" "$CACHE/apt-qemu/debs"; mkdir -p "$CACHE/apt-qemu/debs"
      apt_private "$CACHE/apt-qemu" amd64 "trixie" -- update >&2 \
        || die "cannot reach $MIRROR with apt-get (Debian mirror unreachable?)"
      (cd "$CACHE/apt-qemu/debs" && apt_private "$CACHE/apt-qemu" amd64 "trixie" -- download qemu-user >&2)
      dpkg -x "$CACHE"/apt-qemu/debs/qemu-user_*.deb "$CACHE/qemu"
      # keep the one emulator used (the package holds ~30 of them, 450 MB)
      find "$CACHE/qemu/usr/bin" -mindepth 1 ! -name qemu-aarch64 -delete
      rm -rf "$CACHE/apt-qemu/debs" "$CACHE/apt-qemu/cache"  # 70 MB .deb, not needed again
      echo "trixie qemu-user" > "$CACHE/qemu/.stamp"
    fi
    SYSROOT="$CACHE/root" ;;
  bookworm)
    if ! command -v qemu-aarch64-static >/dev/null; then
      [[ $EUID -eq 0 ]] || die "qemu-user-static is missing; as root: apt-get install qemu-user-static"
      log "installing Debian bookworm qemu-user-static (qemu 7.2) ..."
      apt-get -q update >&2 && apt-get -q install -y qemu-user-static >&2
    fi
    QEMU="$(command -v qemu-aarch64-static)"
    SYSROOT="$CACHE/root-qemu7" ;;
  *) die "PHOSPHENE_ARM64_QEMU must be trixie or bookworm, not '$QEMU_FLAVOUR'" ;;
esac
"$QEMU" --version >/dev/null || die "$QEMU does not run"

# 2. arm64 sysroot from Debian bookworm ---------------------------------------------------
want="bookworm arm64: ${DEBS[*]}"
if ! stamp_ok "$CACHE/root/.stamp" "$want"; then
  log "fetching Debian bookworm arm64 packages (${#DEBS[@]}) ..."
  rm -rf "$CACHE/root" "$CACHE/apt-arm64/debs"; mkdir -p "$CACHE/apt-arm64/debs"
  apt_private "$CACHE/apt-arm64" arm64 "bookworm bookworm-updates" -- update >&2 \
    || die "cannot reach $MIRROR with apt-get (Debian mirror unreachable?)"
  (cd "$CACHE/apt-arm64/debs" && apt_private "$CACHE/apt-arm64" arm64 "bookworm bookworm-updates" -- download "${DEBS[@]}" >&2)
  for deb in "$CACHE"/apt-arm64/debs/*.deb; do dpkg -x "$deb" "$CACHE/root"; done
  echo "$want" > "$CACHE/root/.stamp"
  rm -rf "$CACHE/root-qemu7"
fi
if [[ "$QEMU_FLAVOUR" == bookworm && ! -f "$SYSROOT/proc/cpuinfo" ]]; then
  # qemu 7.2 resolves guest paths under -L first, so a file here replaces the host's x86
  # /proc/cpuinfo for the guest (hard links: no second copy of the sysroot).
  cp -al "$CACHE/root" "$SYSROOT"
  mkdir -p "$SYSROOT/proc"
  cp "$REPO/arm64/cpuinfo-cortex-a76.txt" "$SYSROOT/proc/cpuinfo"
fi

# 3. arm64 wheels, unzipped into one site folder per interpreter --------------------------
fetch_site() {  # fetch_site NAME wheel-specs...
  local name="$1"; shift
  local site="$CACHE/site-$name" want="$name: $* on ${PLATFORMS[*]}"
  stamp_ok "$site/.stamp" "$want" && return 0
  log "fetching arm64 wheels for $name: $*"
  rm -rf "$site" "$CACHE/wheels-$name"; mkdir -p "$site" "$CACHE/wheels-$name"
  local platform_args=(); for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
  "$HOST_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp "${platform_args[@]}" \
    -d "$CACHE/wheels-$name" "$@" 2> >(grep -v "is ignored: it is neither" >&2)
  for whl in "$CACHE/wheels-$name"/*.whl; do
    "$HOST_PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$site"
  done
  rm -rf "$CACHE/wheels-$name"
  echo "$want" > "$site/.stamp"
}
fetch_site litert "${LITERT_WHEELS[@]}"
fetch_site tflite "${TFLITE_WHEELS[@]}"

# 4. phosphene itself: the wheel a board would install, built from this working tree -------
# Rebuilt whenever the sources change (pure Python, a few seconds); train/ and quantize/ ship
# in the same wheel, as on a board, but the edge path never imports them (no torch/TF here).
src="$(mktemp -d)"; trap 'rm -rf "$src"' EXIT
(cd "$REPO" && cp -r pyproject.toml README.md phosphene edge firmware_bridge train quantize "$src"/) 2>/dev/null \
  || die "cannot copy the phosphene sources from $REPO"
find "$src" \( -name __pycache__ -o -name '*.egg-info' -o -name '*.so' \) -prune -exec rm -rf {} +
src_hash="$(cd "$src" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
if ! stamp_ok "$CACHE/site-phosphene/.stamp" "$src_hash"; then
  rm -rf "$CACHE/wheels-phosphene" "$CACHE/site-phosphene.new"; mkdir -p "$CACHE/site-phosphene.new"
  "$HOST_PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$CACHE/wheels-phosphene" "$src" > "$CACHE/phosphene-wheel.log" 2>&1 \
    || { cat "$CACHE/phosphene-wheel.log" >&2; die "building the phosphene wheel failed"; }
  "$HOST_PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$CACHE"/wheels-phosphene/phosphene-*.whl "$CACHE/site-phosphene.new"
  echo "$src_hash" > "$CACHE/site-phosphene.new/.stamp"
  rm -rf "$CACHE/site-phosphene"; mv "$CACHE/site-phosphene.new" "$CACHE/site-phosphene"
  log "phosphene wheel rebuilt from the working tree ($src_hash)"
fi

# 5. launchers ------------------------------------------------------------------------------
# qemu 7.2's "max" core has SME, and XNNPACK's SME int8 kernels then give wrong outputs under
# it (docs/deploy.md): under qemu 7.2 emulate the Pi 5's Cortex-A76 unless told otherwise.
cpu_default=""; [[ "$QEMU_FLAVOUR" == bookworm ]] && cpu_default='QEMU_CPU="${QEMU_CPU:-cortex-a76}"'
for name in litert tflite; do
  launcher="$CACHE/bin/py-$name"
  [[ "$QEMU_FLAVOUR" == bookworm ]] && launcher="$CACHE/bin/py-$name-qemu7"
  cat > "$launcher" <<EOF
#!/bin/sh
# arm64 Python 3.11 under $QEMU_FLAVOUR qemu with the $name site; QEMU_CPU picks the emulated core.
# PYTHONSAFEPATH: the repository root's phosphene/ (core only) must not shadow the installed wheel.
exec env $cpu_default -u PYTHONHOME PYTHONPATH="$CACHE/site-phosphene:$CACHE/site-$name" PYTHONNOUSERSITE=1 PYTHONSAFEPATH=1 \\
  "$QEMU" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" "\$@"
EOF
  chmod +x "$launcher"
  echo "$launcher"
done
log "ready in $((SECONDS - start_s)) s ($("$QEMU" --version | head -1))"
