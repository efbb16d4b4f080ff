#!/bin/bash
# The accuracy report of README's "Accuracy report" section, regenerated end to end on this machine:
# B1 1024^2 rows built with 4 CamVid train images as calibration and the 3 held-out frames of samples/heldout/
# (CamVid test, Seq05VD: never trained on, not among the evaluated ones), served by the pip Triton, evaluated
# on the first 12 CamVid test images (0001TP) against FP32, one image at a time -> docs/results/accuracy_b1_camvid/.
# Every row's calibration and guard frames are prepared by the input policy clients send by default (`fit`).
#   bash bench/accuracy_camvid.sh [CAMVID_DIR]      (HTTP_PORT/GRPC_PORT/METRICS_PORT: other ports, as for make)
set -euo pipefail
data=${1:-../shared/datasets/camvid}
work=out/accuracy_camvid
rm -rf "$work" && mkdir -p "$work/calib" "$work/holdout"
ls "$data/train/images" | head -4 | while read -r f; do cp "$data/train/images/$f" "$work/calib/"; done
cp samples/heldout/*.jpg "$work/holdout/"
rows=segformer_b1,segformer_b1_fp16,segformer_b1_int8,segformer_b1_best,segformer_b1_best_cpu
make repo VARIANTS=$rows CALIB="$work/calib" HOLDOUT="$work/holdout"
make serve
trap 'make stop' EXIT
.venv/bin/python -m client.evaluate --images "$data/test/images" --labels "$data/test/labels" --label-format camvid \
  --limit 12 --concurrency 1 --url "localhost:${HTTP_PORT:-8000}" --models ${rows#segformer_b1,} --reference segformer_b1 --out "$work/report"
dest=docs/results/accuracy_b1_camvid
mkdir -p $dest
cp "$work/report/report.md" "$work/report/report.json" "$work/report/disagreement.png" "$work/report/iou.png" $dest/
for m in int8 best best_cpu; do cp model_repository/segformer_b1_$m/build.json $dest/build_$m.json 2>/dev/null || true; done
printf '\n(Written by `bash bench/accuracy_camvid.sh`; the worst-image overlays and per-image heatmaps it also writes are left out here.)\n' >> $dest/report.md
