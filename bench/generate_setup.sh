#!/usr/bin/env bash
# Installs what bench/generate needs into bench/.venv-gen (reused when already there):
#   - numpy, gguf, aiohttp (conversion and load client)
#   - llama-cpp-python[server], compiled from its source distribution (it vendors llama.cpp),
#     with a build directory kept at bench/.venv-gen/llama-build
#   - llama.cpp's own `llama-server` (continuous batching, --parallel N), built as one more
#     target in that same build directory, so the libraries are compiled once
#   (with GEN_LLAMA_SERVER naming a llama-server binary, only the first line: that is the peer)
# Prints nothing on stdout; progress on stderr. Idempotent. Safe to run alone:
#   bench/generate_setup.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-gen"
py="$venv/bin/python"
pip="$venv/bin/pip"
ver="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
src="$venv/src/llama_cpp_python-$ver"
build="$venv/llama-build"
jobs="${GEN_BUILD_JOBS:-2}"
log() { echo "[generate-setup] $*" >&2; }

[ -x "$py" ] || { log "creating $venv"; python3 -m venv "$venv"; }
if ! "$py" -c 'import numpy, gguf, aiohttp, scikit_build_core' 2>/dev/null; then
    log "pip: numpy gguf aiohttp scikit-build-core cmake ninja"
    "$pip" install --quiet numpy gguf aiohttp scikit-build-core cmake ninja >&2
fi

# A llama-server named by GEN_LLAMA_SERVER (say, the one the tests built from the same source)
# is the peer: nothing more to build.
given="${GEN_LLAMA_SERVER:-}"
if [ -n "$given" ] && [ "$given" != none ]; then
    [ -x "$given" ] || { log "GEN_LLAMA_SERVER=$given is not an executable"; exit 1; }
    log "llama-server: $given (GEN_LLAMA_SERVER)"
    exit 0
fi

# llama-cpp-python from source (kept, so its build directory can be reused for llama-server)
if ! "$py" -c 'import llama_cpp, llama_cpp.server, uvicorn' 2>/dev/null; then
    if [ ! -f "$src/CMakeLists.txt" ]; then
        log "fetching the llama-cpp-python $ver source distribution"
        mkdir -p "$venv/src"
        "$pip" download --quiet --no-deps --no-build-isolation --no-binary llama-cpp-python \
            "llama-cpp-python==$ver" -d "$venv/src" >&2
        tar xzf "$venv/src/llama_cpp_python-$ver.tar.gz" -C "$venv/src"
    fi
    log "building llama-cpp-python $ver (compiles llama.cpp; 10-30 minutes on 2 cores)"
    CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF" \
        "$pip" install --no-build-isolation \
            --config-settings=build-dir="$build" \
            "$src[server]" >&2
fi

# llama.cpp's llama-server from the same build directory
server_bin="$build/bin/llama-server"
if [ ! -x "$server_bin" ]; then
    log "building llama-server in $build"
    cmake="$venv/bin/cmake"
    "$cmake" -S "$src" -B "$build" -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAVA_BUILD=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >&2
    "$cmake" --build "$build" --target llama-server -j "$jobs" >&2
fi
[ -x "$server_bin" ] && log "llama-server: $server_bin" || log "llama-server was not built"
