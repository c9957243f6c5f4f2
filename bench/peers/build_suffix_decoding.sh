#!/usr/bin/env bash
# Build SuffixDecoding (Arctic Inference 0.3.0's suffix-tree speculator, vLLM's method="suffix")
# for the bench-only peer drafter bench/peers/suffix_decoding.py. Not a dependency of restdecode:
# everything lands under bench/peers/build/ (gitignored); nothing is installed into .venv.
#
#   bench/peers/build_suffix_decoding.sh [PATH/TO/arctic_inference-0.3.0.tar.gz]
#
# Without an argument the sdist is fetched from PyPI (pip download, no dependencies). Needs
# python3 (same minor version as .venv), cmake >= 3.18 and a C++20 compiler (g++ 12 works).
# Result: bench/peers/build/arctic_inference-0.3.0/arctic_inference/suffix_decoding/_C.*.so
# beside cache.py; the adapter puts bench/peers/build/arctic_inference-0.3.0 on sys.path.
set -euo pipefail

VERSION=0.3.0
NANOBIND=2.9.2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="$HERE/build"
SRC="$BUILD/arctic_inference-$VERSION"
PYTHON="${PYTHON:-$HERE/../../.venv/bin/python}"  # interpreter the extension is built for
[ -x "$PYTHON" ] || PYTHON=python3
NICE="nice -n 10"  # low priority: the machine is shared
JOBS="${JOBS:-2}"

mkdir -p "$BUILD"
start=$(date +%s)

# 1. A throwaway venv for the build tool (nanobind), from the same interpreter as .venv.
BASE_PYTHON="$("$PYTHON" -c 'import sys; print(sys._base_executable)')"
if [ ! -x "$BUILD/venv/bin/python" ]; then
    "$BASE_PYTHON" -m venv "$BUILD/venv"
fi
$NICE "$BUILD/venv/bin/python" -m pip install --quiet "nanobind==$NANOBIND"

# 2. The sdist (PyPI has only the sdist; pass its path to skip the download).
SDIST="${1:-}"
if [ -z "$SDIST" ]; then
    SDIST="$BUILD/arctic_inference-$VERSION.tar.gz"
    if [ ! -f "$SDIST" ]; then
        # pip prepares the sdist's metadata, which installs its build requirements (torch
        # included) in a temporary isolated environment: about a minute and a half. Not
        # --no-binary :all:, which would extend to those requirements (torch from source).
        $NICE "$BUILD/venv/bin/python" -m pip download --quiet --no-deps \
            "arctic-inference==$VERSION" -d "$BUILD"
    fi
fi
rm -rf "$SRC"
tar -xzf "$SDIST" -C "$BUILD"

# 3. csrc/suffix_decoding alone (its CMakeLists finds nanobind through the build venv's python).
$NICE cmake -S "$SRC/csrc/suffix_decoding" -B "$BUILD/cmake" \
    -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$BUILD/venv/bin/python" >/dev/null
$NICE cmake --build "$BUILD/cmake" -j "$JOBS"
cp "$BUILD"/cmake/_C.*.so "$SRC/arctic_inference/suffix_decoding/"

# 4. Smoke test with the interpreter the bench runs under.
PYTHONPATH="$SRC" "$PYTHON" - <<'EOF'
from arctic_inference.suffix_decoding import SuffixDecodingCache
cache = SuffixDecodingCache(max_tree_depth=24)
cache.start_request("a", [1, 2, 3, 4, 1, 2, 3])
draft = cache.speculate("a", [1, 2], max_spec_tokens=24, max_spec_factor=2.0)
assert draft.token_ids[:2] == [3, 4], draft
print("SuffixDecodingCache OK:", draft)
EOF
echo "built in $(( $(date +%s) - start )) s: $SRC"
