#!/usr/bin/env bash
# The Fashion-MNIST demo of `dualsight train`: a tiny dual encoder made by
# `dualsight init` is trained from scratch on the 60,000 training photos
# with captions "a photo of a {class}", then its zero-shot accuracy on the
# 10,000 test photos is measured by dualsight and by transformers. With
# --reference, PyTorch + transformers train the same recipe from the same
# starting weights on the same machine, for BENCHMARKS.md.
#
#   scripts/fashion-demo.sh [WORK_DIR] [--reference] [--epochs N]
#
# Needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist);
# --reference and the transformers check need torch, transformers and pillow.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=/tmp/dualsight-fashion
REFERENCE=0
EPOCHS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --reference) REFERENCE=1 ;;
    --epochs) EPOCHS="$2"; shift ;;
    *) WORK="$1" ;;
  esac
  shift
done
DATA=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  echo "no $DATA: apt-get install dataset-fashion-mnist" >&2
  exit 1
fi
RECIPE=(--batch-size 128 --learning-rate 1e-3 --warmup-steps 100 --epochs "$EPOCHS")

cargo build --release -q
cargo build --release -q -p dualsight-bench --example fashion_mnist
BIN=target/release/dualsight
[ -d "$WORK/photos/train" ] || target/release/examples/fashion_mnist --from "$DATA" --out "$WORK/photos"
rm -rf "$WORK/init" "$WORK/trained"
"$BIN" init --vision-config tests/fixtures/fashion/vision_config.json \
  --text-config tests/fixtures/fashion/text_config.json --projection-dim 64 \
  --tokenizer tests/fixtures/fashion/model --out "$WORK/init"
"$BIN" train --model "$WORK/init" --data "$WORK/photos/train" --caption-template "a photo of a {}" \
  --eval-data "$WORK/photos/test" --out "$WORK/trained" --logging-steps 100 "${RECIPE[@]}"
if python3 -c "import transformers, torch, PIL" 2>/dev/null; then
  echo "transformers on dualsight's checkpoint:"
  python3 scripts/train_reference.py eval --model "$WORK/trained" --data "$WORK/photos/test"
fi
if [ "$REFERENCE" = 1 ]; then
  echo "PyTorch + transformers, same recipe and starting weights:"
  python3 scripts/train_reference.py train --model "$WORK/init" --data "$WORK/photos/train" \
    --out "$WORK/reference" "${RECIPE[@]}"
  python3 scripts/train_reference.py eval --model "$WORK/reference" --data "$WORK/photos/test"
fi
