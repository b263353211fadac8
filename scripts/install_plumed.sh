#!/usr/bin/env bash
# Build PLUMED 2.10.1 (with PYTORCH and OPES) from vendor/ into a cache folder, once.
#
#   scripts/install_plumed.sh [VENV]      (VENV defaults to .venv)
#
# The folder is $LATF_PLUMED_HOME, or ~/.cache/latf_openmm/plumed-2.10.1-<key>, the key naming
# the venv's torch folder (PLUMED's kernel links that libtorch); a rerun with the same venv
# finds it built and costs seconds. Run the binary with DIR/lib on LD_LIBRARY_PATH. With PLUMED_KERNEL already
# set, that PLUMED is used and nothing is built. Prints the folder's bin/plumed path last.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
if [[ -n "${PLUMED_KERNEL:-}" ]]; then
    echo "install_plumed: PLUMED_KERNEL is set ($PLUMED_KERNEL): using that PLUMED, building nothing" >&2
    exit 0
fi
TORCH="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
KEY="$(printf '%s' "$TORCH" | sha256sum | cut -c1-12)"
PREFIX="${LATF_PLUMED_HOME:-$HOME/.cache/latf_openmm/plumed-2.10.1-$KEY}"
if [[ -f "$PREFIX/.complete" ]] && LD_LIBRARY_PATH="$PREFIX/lib" "$PREFIX/bin/plumed" config has libtorch > /dev/null; then
    echo "install_plumed: PLUMED already built in $PREFIX" >&2
    echo "$PREFIX/bin/plumed"
    exit 0
fi
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
tar -xzf "$ROOT/vendor/plumed-2.10.1-src.tar.gz" -C "$BUILD"
cd "$BUILD"/plumed-2.10.1
# Only the modules the package uses (METAD, OPES_METAD, restraints, distances, torsions,
# coordination, CUSTOM, PYTORCH_MODEL, the driver and its trajectory readers). BLAS and
# LAPACK are PLUMED's own: libtorch exports a partial BLAS that configure would otherwise
# pick up, and the link then fails on the single-precision routines.
./configure --prefix="$PREFIX" --enable-libtorch --disable-doc \
    --enable-modules=none:+bias:+colvar:+function:+generic:+setup:+cltools:+opes:+pytorch:+molfile:+xdrfile:+vatom:+gridtools \
    --disable-external-blas --disable-external-lapack --disable-python \
    CXXFLAGS="-O2 -std=c++17" \
    CPPFLAGS="-I$TORCH/include -I$TORCH/include/torch/csrc/api/include" \
    LDFLAGS="-L$TORCH/lib -Wl,-rpath,$TORCH/lib -Wl,-rpath,$PREFIX/lib" \
    LIBS="-ltorch -lc10 -ltorch_cpu" > configure.log 2>&1 \
    || { tail -20 configure.log >&2; echo "install_plumed: configure failed (log above)" >&2; exit 1; }
make -j"$(nproc)" > make.log 2>&1 || { tail -30 make.log >&2; echo "install_plumed: make failed (log above)" >&2; exit 1; }
make install > install.log 2>&1 || { tail -30 install.log >&2; echo "install_plumed: make install failed" >&2; exit 1; }
LD_LIBRARY_PATH="$PREFIX/lib" "$PREFIX/bin/plumed" config has libtorch > /dev/null \
    || { echo "install_plumed: the installed PLUMED has no libtorch" >&2; exit 1; }
touch "$PREFIX/.complete"
echo "$PREFIX/bin/plumed"
