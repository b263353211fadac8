#!/usr/bin/env bash
# Build PLUMED 2.10.1 (with PYTORCH and OPES) from vendor/ into a cache folder, once, and
# openmm-plumed 2.1 (PlumedForce) against the venv's OpenMM, its Python module into the venv.
#
#   scripts/install_plumed.sh [VENV]      (VENV defaults to .venv)
#
# The folder is $LATF_PLUMED_HOME, or ~/.cache/latf_openmm/plumed-2.10.1-<key>, the key naming
# the venv's torch folder (PLUMED's kernel links that libtorch); a rerun with the same venv
# finds it built and costs seconds. Run the binary with DIR/lib on LD_LIBRARY_PATH. With
# PLUMED_KERNEL already set, that PLUMED is used and nothing is built. Prints the folder's bin/plumed path last.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$(cd "${1:-$ROOT/.venv}" && pwd)"  # absolute: the builds below change directory
if [[ -n "${PLUMED_KERNEL:-}" ]]; then
    echo "install_plumed: PLUMED_KERNEL is set ($PLUMED_KERNEL): using that PLUMED, building nothing" >&2
    exit 0
fi
TORCH="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
KEY="$(printf '%s' "$TORCH" | sha256sum | cut -c1-12)"
PREFIX="${LATF_PLUMED_HOME:-$HOME/.cache/latf_openmm/plumed-2.10.1-$KEY}"
build_plumed() {
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
}

# openmm-plumed's Python module is SWIG-made and must come from the SWIG release that made
# OpenMM's own (else OpenMM refuses a PlumedForce as "not an OpenMM::Force"): pip's swig
# of that version. Its libraries carry RPATHs (not RUNPATHs), so that PLUMED's kernel,
# which libplumed.so needs, is found without LD_LIBRARY_PATH.
build_openmm_plumed() {
    local openmm_dir swig_version source
    openmm_dir="$("$VENV/bin/python" -c 'import os, openmm; print(os.path.join(os.path.dirname(openmm.__file__), os.pardir, "OpenMM.libs"))')"
    swig_version="$(sed -n 's/^# Version //p' "$openmm_dir/../openmm/openmm.py" | head -1)"
    "$VENV/bin/python" -m pip install --quiet "swig==$swig_version" wheel \
        || { echo "install_plumed: could not install swig==$swig_version (OpenMM's) from PyPI" >&2; exit 1; }
    tar -xzf "$ROOT/vendor/openmm-plumed-2.1.tar.gz" -C "$BUILD"
    source="$BUILD/openmm-plumed-2.1"
    local rpath="-Wl,--disable-new-dtags -Wl,-rpath,$PREFIX/openmm-plumed/lib -Wl,-rpath,$PREFIX/lib -Wl,-rpath,$openmm_dir/lib"
    mkdir -p "$source/build"
    cd "$source/build"
    { cmake .. -DOPENMM_DIR="$openmm_dir" -DPLUMED_INCLUDE_DIR="$PREFIX/include/plumed" \
        -DPLUMED_LIBRARY_DIR="$PREFIX/lib" -DCMAKE_INSTALL_PREFIX="$PREFIX/openmm-plumed" \
        -DCMAKE_SHARED_LINKER_FLAGS="$rpath" -DSWIG_EXECUTABLE="$VENV/bin/swig" \
        -DPYTHON_EXECUTABLE="$VENV/bin/python" -Wno-dev \
        && make -j"$(nproc)" && make install \
        && cd python && "$VENV/bin/swig" -python -c++ -o PlumedPluginWrapper.cpp -I"$openmm_dir/include" \
            "$source/python/plumedplugin.i" \
        && LDFLAGS="$rpath" "$VENV/bin/python" -m pip install --no-build-isolation --no-deps --force-reinstall . ; \
    } > "$BUILD/openmm-plumed.log" 2>&1 || { tail -30 "$BUILD/openmm-plumed.log" >&2; echo "install_plumed: openmm-plumed failed (log above)" >&2; exit 1; }
    "$VENV/bin/python" -c 'import latf_openmm, openmmplumed' \
        || { echo "install_plumed: openmmplumed was built but does not import" >&2; exit 1; }
}

BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
if [[ -f "$PREFIX/.complete" ]] && LD_LIBRARY_PATH="$PREFIX/lib" "$PREFIX/bin/plumed" config has libtorch > /dev/null; then
    echo "install_plumed: PLUMED already built in $PREFIX" >&2
else
    build_plumed
fi
"$VENV/bin/python" -c 'import latf_openmm, openmmplumed' 2> /dev/null || build_openmm_plumed
echo "$PREFIX/bin/plumed"
