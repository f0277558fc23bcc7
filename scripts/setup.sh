#!/usr/bin/env bash
# Installs the system packages Bastet's build needs, only those missing:
# clang and libclang-dev (bindgen generates RocksDB's Rust bindings with
# libclang) and a C++ compiler (RocksDB itself is C++).
# Debian/Ubuntu (apt-get); runs as root, or through sudo when available.
set -euo pipefail

have_libclang() {
    if [ -n "${LIBCLANG_PATH:-}" ] && compgen -G "${LIBCLANG_PATH}/libclang*.so*" >/dev/null; then
        return 0
    fi
    dpkg -s libclang-dev >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null && return 0
    compgen -G "/usr/lib/*/libclang*.so*" >/dev/null && return 0
    compgen -G "/usr/lib64/libclang*.so*" >/dev/null && return 0
    return 1
}

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
have_libclang || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: clang, libclang and a C++ compiler are present"
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
    echo "setup: cargo not found; install Rust (1.88 or newer) from https://rustup.rs" >&2
    exit 1
fi
