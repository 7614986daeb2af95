#!/usr/bin/env bash
# The GPU check (issue 22), in one go, on a machine with a GPU but without a
# Rust toolchain or network: run from the repository root with the binaries
# that `scripts/build-cuda.sh --bundle DIR` made (plus dualsight-bench built
# with `--features dualsight/cuda`), and Python with torch + transformers
# (+ onnxruntime for the CPU figures).
#
#   scripts/gpu-check.sh --bin DIR [--out DIR] [--device cuda] [--python PY] [--quick]
#
# Writes under --out (default: $OUT, else ./gpu-check-out) one JSON per step
# and summary.md. A failing step is recorded and the next one runs; the exit
# status is 1 if any step failed or any parity check did not pass.
#   1. machine.json     GPU, driver, CPU flags
#   2. parity-*.json    `dualsight parity` on every fixture: f32 against
#                       transformers (<= 1e-4), f16 and bf16 (cosine >= 0.999)
#   3. files.json       embeddings of the fixture photos and texts on the
#                       device against the CPU build's path (cosine >= 0.999)
#   4. vision-*.json    the vision tower at batches 32/128/256 in f32 and bf16,
#                       beside PyTorch on the same GPU (autocast for bf16)
#   5. ingest.json      end to end over generated 12 MP JPEGs with every core
#                       decoding: decode rate against indexing rate
#   6. cpu-vision.json  the vision tower on the CPU with every core, beside
#                       PyTorch and ONNX Runtime
# Rehearse it anywhere with the CPU build: --device cpu --quick.
set -uo pipefail

bin="" out="${OUT:-./gpu-check-out}" device="cuda" py="python3" quick=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin="${2:?--bin needs a directory}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --device) device="${2:?--device needs cpu, cuda or cuda:N}"; shift 2 ;;
        --python) py="${2:?--python needs an interpreter}"; shift 2 ;;
        --quick) quick=1; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n "$bin" ]] || { echo "gpu-check: --bin DIR (with dualsight and dualsight-bench) is required" >&2; exit 2; }
for b in dualsight dualsight-bench; do
    [[ -x "$bin/$b" ]] || { echo "gpu-check: $bin/$b is missing or not executable" >&2; exit 2; }
done
[[ -d tests/fixtures/models ]] || { echo "gpu-check: run from the repository root (no tests/fixtures/models here)" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
ds="$bin/dualsight"
bench="$bin/dualsight-bench"
cores="$(nproc)"
failed=()

log() { echo "gpu-check [$(date +%H:%M:%S)]: $*" >&2; }
# step NAME CMD...: runs CMD, its stderr into NAME.log; a failure is recorded.
step() {
    local name="$1"; shift
    log "$name"
    if ! "$@" 2>"$out/$name.log"; then
        failed+=("$name")
        log "$name FAILED (see $name.log)"
    fi
}

if [[ $quick == 1 ]]; then
    batches_gpu="1,2" images=4 size="640x480" ingest_batch=2 timing=(--quick)
else
    batches_gpu="32,128,256" images=$((cores * 8)) size="4000x3000" ingest_batch=64 timing=(--min-secs 3 --min-iters 3)
fi

# 1. The machine.
machine() {
    {
        echo '{'
        echo "\"device\": \"$device\", \"cores\": $cores,"
        echo "\"cpu_flags\": \"$(grep -m1 -o 'avx512[a-z_0-9]*\|amx[a-z_0-9]*\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')\","
        if command -v nvidia-smi >/dev/null; then
            echo "\"gpus\": \"$(nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv,noheader | tr '\n' ';')\","
        fi
        echo "\"dualsight\": \"$("$ds" --version)\""
        echo '}'
    } >"$out/machine.json"
}
step machine machine

# 2. Parity against transformers' recorded numbers, every fixture.
parity_all() {
    local rc=0 m name dt
    for m in tests/fixtures/models/*/; do
        [[ -f "$m/reference.safetensors" ]] || continue
        name="$(basename "$m")"
        for dt in f32 f16 bf16; do
            "$ds" parity --model "$m" --device "$device" --dtype "$dt" >"$out/parity-$name-$dt.json" || rc=1
        done
    done
    return $rc
}
step parity parity_all

# 3. From files: photos and texts on the device against the CPU.
files_check() {
    local args=() f
    for f in tests/fixtures/images/*.jpg tests/fixtures/images/*.png; do args+=(--image "$f"); done
    local texts=(--text "a photo of a cat" --text "a rocket" --text "a cup of coffee on a table")
    for d in "$device" cpu; do
        "$ds" embed --model tests/fixtures/models/vit-bert --device "$d" --json "${texts[@]}" "${args[@]}" \
            >"$out/embed-$d.json" || return 1
    done
    "$py" - "$out/embed-$device.json" "$out/embed-cpu.json" "$out/files.json" <<'EOF'
import json, math, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def cos(x, y):
    return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
out = {k: min(cos(x, y) for x, y in zip(a[k], b[k])) for k in ("image_embeds", "text_embeds")}
out["pass"] = all(v >= 0.999 for v in out.values())
json.dump(out, open(sys.argv[3], "w"), indent=1)
sys.exit(0 if out["pass"] else 1)
EOF
}
step files files_check

# 4. The vision tower on the device, f32 and bf16, beside PyTorch there.
for dt in f32 bf16; do
    step "vision-$dt" "$bench" --device "$device" --dtype "$dt" --only vision --batches "$batches_gpu" \
        "${timing[@]}" --reference --python "$py" --json "$out/vision-$dt.json"
done

# 5. End to end: every core decoding large JPEGs into the device's batches.
step ingest "$bench" --device "$device" --only ingest --threads "$cores" --images "$images" \
    --image-size "$size" --ingest-batch "$ingest_batch" "${timing[@]}" --json "$out/ingest.json"

# 6. The CPU with every core, beside PyTorch and ONNX Runtime.
step cpu-vision "$bench" --device cpu --threads "$cores" --only vision \
    "${timing[@]}" --reference --python "$py" --json "$out/cpu-vision.json"

# The summary.
"$py" - "$out" "${failed[@]}" <<'EOF' >"$out/summary.md"
import glob, json, os, sys
out, failed = sys.argv[1], sys.argv[2:]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return None
print("# GPU check\n")
m = load("machine.json") or {}
print(f"machine: {m.get('gpus', 'no nvidia-smi')} | {m.get('cores')} cores | {m.get('cpu_flags', '')} | {m.get('dualsight', '')}\n")
print("## Parity (dualsight parity)\n")
print("| model | dtype | image max abs / min cos | text max abs / min cos | pass |")
print("| --- | --- | --- | --- | --- |")
bad = 0
for f in sorted(glob.glob(os.path.join(out, "parity-*.json"))):
    r = load(os.path.basename(f))
    if not r:
        print(f"| {os.path.basename(f)} | | unreadable | | no |"); bad += 1; continue
    c = {x["name"]: x for x in r["checks"]}
    cell = lambda k: f"{c[k]['max_abs_diff']:.2e} / {c[k]['min_cosine']:.6f}" if k in c else "-"
    print(f"| {os.path.basename(r['model'].rstrip('/'))} | {r['dtype']} | {cell('image_embeds')} | {cell('text_embeds')} | {'yes' if r['pass'] else '**no**'} |")
    bad += not r["pass"]
fl = load("files.json")
print(f"\nfrom files, device against CPU: {fl}\n")
def figures(name):
    r = load(name)
    return {f["key"]: f for f in r["figures"]} if r else {}
print("## Vision tower (images/s)\n")
print("| run | figure | dualsight | reference | ratio |")
print("| --- | --- | --- | --- | --- |")
for name in ("vision-f32.json", "vision-bf16.json", "cpu-vision.json"):
    for k, f in figures(name).items():
        if k.startswith("vision.") and f.get("dualsight"):
            ref = f.get("reference")
            ratio = f"{f['dualsight'] / ref:.2f}×" if ref else ""
            print(f"| {name[:-5]} | {k} | {f['dualsight']:.2f} | {ref or ''} | {ratio} |")
ing = figures("ingest.json")
dec, e2e = (ing.get(k, {}).get("dualsight") for k in ("decode.images_per_s", "ingest.images_per_s"))
print("\n## End to end\n")
if dec and e2e:
    verdict = "decoding" if e2e >= 0.85 * dec else "the model (device)"
    print(f"decode + preprocess {dec:.1f} images/s with every core; indexing {e2e:.1f} images/s: bound by {verdict}")
else:
    print("no ingest figures")
print(f"\nsteps failed: {failed or 'none'}; parity checks not passed: {bad}")
sys.exit(1 if failed or bad else 0)
EOF
status=$?
cat "$out/summary.md" >&2
exit $status
