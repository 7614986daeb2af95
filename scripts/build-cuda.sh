#!/usr/bin/env bash
# Builds dualsight with candle's CUDA backend (`--features cuda`) on a machine
# with no GPU and no system CUDA, from pinned NVIDIA wheels on PyPI.
#
#   scripts/build-cuda.sh [--bundle DIR] [--with-bench] [extra cargo args...]
#
# What it does (see docs/cuda.md for the why):
#   1. creates/reuses a venv (.venv-cuda/) and pip-installs the CUDA 13.0 wheels
#      pinned below (nvcc, headers, cudart, cublas, curand, nvrtc, cccl);
#   2. assembles a CUDA_HOME-like tree (.venv-cuda/cuda-home/) whose lib64/ has
#      the unversioned .so names the linker wants, plus lib64/stubs/libcuda.so,
#      a generated libcuda stub: the driver library is not in any wheel;
#   3. runs `cargo build --release --features cuda` with CUDA_COMPUTE_CAP=90
#      (H100) and an rpath of $ORIGIN/lib, in its own target dir;
#   4. prints the binary, what it needs at run time, and with --bundle DIR
#      copies the binary and those libraries into DIR (DIR/dualsight,
#      DIR/lib/*.so.*, DIR/stub/libcuda.so.1) for carrying to the GPU machine;
#      --with-bench builds dualsight-bench with CUDA too (DIR/dualsight-bench),
#      which scripts/gpu-check.sh runs beside it.
#
# Environment (all optional):
#   CARGO_TARGET_DIR   target dir (default: target/cuda, apart from CPU builds)
#   CUDA_VENV          the venv (default: .venv-cuda in the repo root)
#   CUDA_COMPUTE_CAP   GPU arch for the kernels (default 90 = H100/H200, which
#                      candle's build turns into sm_90a)
#   PYTHON             interpreter for the venv (default python3)
#   NICE               niceness for cargo (default 19: builds share 2 cores)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

bundle=""
with_bench=0
cargo_args=()
while (($#)); do
    case "$1" in
        --bundle) bundle="${2:?--bundle needs a directory}"; shift 2 ;;
        --bundle=*) bundle="${1#--bundle=}"; shift ;;
        --with-bench) with_bench=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) cargo_args+=("$1"); shift ;;
    esac
done

# CUDA 13.0 (the set of the `cuda-toolkit==13.0.2` meta-package). 13.0 and not
# newer: the GPU machine's driver is 580 (CUDA 13.0). candle ships its kernels
# as PTX that the driver JIT-compiles at load time, and a driver rejects PTX
# from a newer nvcc (CUDA_ERROR_UNSUPPORTED_PTX_VERSION); cudarc also binds the
# driver API of the nvcc version it detects.
WHEELS=(
    nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary (bin/)
    nvidia-cuda-crt==13.0.88      # crt/ headers nvcc includes
    nvidia-nvvm==13.0.88          # cicc + libdevice (nvcc's front end)
    nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, cuda.h, libcudart.so.13
    nvidia-cuda-cccl==13.0.85     # cub/thrust/libcu++ headers
    nvidia-cublas==13.1.0.3       # libcublas.so.13, libcublasLt.so.13
    nvidia-curand==10.4.0.35      # libcurand.so.10
    nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13 (+ builtins)
)

venv="${CUDA_VENV:-$repo/.venv-cuda}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/cuda}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
nice_level="${NICE:-19}"

log() { printf '==> %s\n' "$*" >&2; }

# 1. venv + wheels ------------------------------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
    log "creating venv $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi
log "installing pinned CUDA 13.0 wheels into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${WHEELS[@]}"

cu13="$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[[ -x "$cu13/bin/nvcc" ]] || { echo "no nvcc under $cu13" >&2; exit 1; }

# 2. a CUDA_HOME the build scripts understand -------------------------------
# The cu13 wheels share one tree (bin/, include/, lib/, nvvm/) but ship only
# versioned sonames (libcublas.so.13): `-lcublas` needs libcublas.so.
home="$venv/cuda-home"
log "assembling CUDA_HOME at $home"
rm -rf "$home"
mkdir -p "$home/lib64/stubs"
for d in bin include nvvm; do ln -s "$cu13/$d" "$home/$d"; done
for f in "$cu13"/lib/*.so*; do ln -s "$f" "$home/lib64/$(basename "$f")"; done
for pair in cudart:libcudart.so.13 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 \
            curand:libcurand.so.10 nvrtc:libnvrtc.so.13; do
    name="${pair%%:*}" soname="${pair#*:}"
    [[ -e "$home/lib64/$soname" ]] || { echo "missing $soname in $cu13/lib" >&2; exit 1; }
    ln -s "$soname" "$home/lib64/lib$name.so"
done

# The driver API (libcuda.so.1) comes with the NVIDIA driver, not with any
# toolkit wheel, and the toolkit's lib64/stubs/libcuda.so is only in NVIDIA's
# .deb/.run installers. So generate the same kind of stub: one exported
# function per driver-API name in this cuda.h (legacy, _v2.._v4, _ptds/_ptsz
# variants), each returning CUDA_ERROR_STUB_LIBRARY (34), soname libcuda.so.1.
# It satisfies the linker; at run time the real driver's libcuda.so.1 is used.
# The binary is checked below to need no cu* symbol the stub lacks.
log "generating libcuda stub from $cu13/include/cuda.h"
stubdir="$home/lib64/stubs"
{
    echo '/* generated by scripts/build-cuda.sh: libcuda.so.1 link stub */'
    echo 'static const char msg[] = "CUDA driver stub: no NVIDIA driver (libcuda.so.1) on this machine";'
    echo 'static const char name[] = "CUDA_ERROR_STUB_LIBRARY";'
    echo 'int cuGetErrorString(int e, const char **s) { (void)e; *s = msg; return 0; }'
    echo 'int cuGetErrorName(int e, const char **s) { (void)e; *s = name; return 0; }'
    for flags in "" "-D__CUDA_API_VERSION_INTERNAL" "-DCUDA_API_PER_THREAD_DEFAULT_STREAM"; do
        cc -E -P $flags -I"$cu13/include" "$cu13/include/cuda.h"
    done | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
         | grep -vxE 'cuGetError(String|Name)' \
         | sed 's/.*/int &(void) { return 34; }/'
} >"$stubdir/libcuda_stub.c"
cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$stubdir/libcuda.so" "$stubdir/libcuda_stub.c"
ln -s libcuda.so "$stubdir/libcuda.so.1"

# 3. build ------------------------------------------------------------------
export CUDA_HOME="$home" CUDA_PATH="$home" CUDA_ROOT="$home"
export PATH="$home/bin:$PATH"
export LIBRARY_PATH="$home/lib64:$stubdir${LIBRARY_PATH:+:$LIBRARY_PATH}"
# $ORIGIN/lib: the binary finds the libraries carried next to it (bundle);
# rpath-link: lets ld resolve libcublas's own NEEDED libcublasLt.so.13.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C link-arg=-Wl,-rpath,\$ORIGIN/lib -C link-arg=-Wl,-rpath-link,$home/lib64"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
log "nvcc: $(nvcc --version | sed -n 4p)"
log "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
start=$(date +%s)
nice -n "$nice_level" cargo build --release --features cuda --bin dualsight "${cargo_args[@]}"
if [[ $with_bench == 1 ]]; then
    nice -n "$nice_level" cargo build --release -p dualsight-bench --features dualsight/cuda --bin dualsight-bench
fi
log "cargo build took $(( $(date +%s) - start )) s"

bin="$CARGO_TARGET_DIR/release/dualsight"

# 4. what it needs at run time ----------------------------------------------
missing="$(comm -23 <(nm -D --undefined-only "$bin" | awk '{print $2}' | sed 's/@.*//' | grep -E '^cu[A-Z]' | sort -u) \
                     <(nm -D --defined-only "$stubdir/libcuda.so" | awk '{print $3}' | sort -u))"
if [[ -n "$missing" ]]; then
    echo "the binary needs driver symbols the stub lacks (linking worked only by accident):" >&2
    echo "$missing" >&2
    exit 1
fi

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
echo
echo "binary:  $bin ($(du -h "$bin" | cut -f1))"
echo "needs:   $(needed "$bin" | tr '\n' ' ')"
echo "runpath: $(readelf -d "$bin" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')"
echo "resolved here (driver = the stub, CUDA libs = the wheels):"
LD_LIBRARY_PATH="$stubdir:$home/lib64" ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc|stdc' | sed 's/^/  /'

# The CUDA libraries it loads: its NEEDED entries found among the wheels' libs,
# plus theirs (libcublas needs libcublasLt). libnvrtc is linked but dropped by
# --as-needed while nothing in dualsight compiles kernels at run time.
runtime_libs=()
for l in $(needed "$bin"); do
    [[ -e "$home/lib64/$l" ]] || continue
    runtime_libs+=("$l")
    for d in $(needed "$home/lib64/$l"); do [[ -e "$home/lib64/$d" ]] && runtime_libs+=("$d"); done
done
mapfile -t runtime_libs < <(printf '%s\n' "${runtime_libs[@]}" | sort -u)
if [[ -n "$bundle" ]]; then
    log "bundling into $bundle"
    mkdir -p "$bundle/lib" "$bundle/stub"
    cp "$bin" "$bundle/dualsight"
    if [[ $with_bench == 1 ]]; then cp "$CARGO_TARGET_DIR/release/dualsight-bench" "$bundle/"; fi
    for l in "${runtime_libs[@]}"; do cp -L "$home/lib64/$l" "$bundle/lib/"; done
    cp -L "$stubdir/libcuda.so" "$bundle/stub/libcuda.so.1"
    du -sh "$bundle"/*
fi

cat <<EOF

To run on the GPU machine (x86-64, NVIDIA driver >= 580 / CUDA 13.0):
  the driver provides libcuda.so.1. The CUDA 13 libraries ($(echo "${runtime_libs[*]}"))
  come from, in order: LD_LIBRARY_PATH, then lib/ next to the binary (RUNPATH \$ORIGIN/lib),
  then the system. Either carry them (--bundle DIR: ~730 MB, libcublasLt alone ~540 MB),
  or use the ones PyTorch's cu13 wheels installed there:
    LD_LIBRARY_PATH=\$(python3 -c 'import os,nvidia; print(os.path.join(list(nvidia.__path__)[0],"cu13","lib"))') \\
      ./dualsight embed --device cuda ...
  On a machine without the driver, the binary only starts with the stub:
    LD_LIBRARY_PATH=$stubdir:$home/lib64 $bin --help
  (then --device cuda fails cleanly and --device auto uses the CPU).
EOF
