#!/usr/bin/env bash
# Installs the system packages Bastet's build needs, only those missing:
# clang and libclang-dev (bindgen generates RocksDB's Rust bindings with
# libclang), a C++ compiler (RocksDB itself is C++), systemd-analyze
# (the tests check the unit files in deploy/systemd with it) and Chromium
# (testnet/tests/web.rs renders the testnet's live view headless) and
# libfaketime (the clock-skew chaos scenario runs a node with its clock ahead)
# and nftables (the partition chaos scenario cuts a node's port off),
# pkg-config with libopus-dev and libdav1d-dev (bastet-call links the system
# Opus codec and the AV1 decoder, found through pkg-config) and nasm (the
# AV1 encoder's SIMD assembly, without which it is too slow for a call),
# libasound2-dev (the live microphone and speaker, cargo feature
# `live-audio`, reach ALSA through cpal; the tests build it).
# Debian/Ubuntu (apt-get); runs as root, or through sudo when available.
set -euo pipefail

# libclang itself (libclang.so, libclang-14.so.1, ...), not libclang-cpp,
# which fresh Debian images carry without libclang.
have_libclang_in() {
    compgen -G "$1/libclang.so*" >/dev/null || compgen -G "$1/libclang-[0-9]*.so*" >/dev/null
}

have_libclang() {
    if [ -n "${LIBCLANG_PATH:-}" ] && have_libclang_in "$LIBCLANG_PATH"; then
        return 0
    fi
    dpkg -s libclang-dev >/dev/null 2>&1 && return 0
    for d in /usr/lib/llvm-*/lib /usr/lib/*-linux-gnu /usr/lib64; do
        [ -d "$d" ] && have_libclang_in "$d" && return 0
    done
    return 1
}

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
have_libclang || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(faketime)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
has_pkg() { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists "$1"; }
has_pkg opus || missing+=(libopus-dev)
has_pkg dav1d || missing+=(libdav1d-dev)
command -v nasm >/dev/null 2>&1 || missing+=(nasm)
has_pkg alsa || missing+=(libasound2-dev)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: clang, libclang, a C++ compiler, systemd-analyze, chromium, libfaketime, nft, pkg-config, libopus, libdav1d, nasm and libasound2-dev are present"
else
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: missing ${missing[*]}; install them with your package manager" >&2
        echo "       (or set LIBCLANG_PATH to the directory holding libclang.so)" >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        echo "setup: missing ${missing[*]}; run as root or install sudo" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust (1.89 or newer) from https://rustup.rs" >&2
    exit 1
fi
