#!/usr/bin/env bash
# The paper preset end to end on one accelerator, one seed, time-boxed (issue 17 item 1).
#
#   OUT=/tmp/paper bash benchmarks/gpu_paper.sh          # report under $OUT/paper (default ./gpu_paper)
#   TIME_BOX=540 OUT=... bash benchmarks/gpu_paper.sh     # seconds before it is stopped (default 570)
#   bash benchmarks/gpu_paper.sh --config.classifier.plain.steps=3180 ...   # more overrides
#
# Runs `jaxthyroid reproduce --preset paper --seeds 1` with only jax/flax/optax/orbax/numpy/
# pillow/matplotlib/ml_collections needed: where tensorflow_datasets is not installed the
# phantom is simulated on the device into an array data set (NumPy files, the same images
# as the TFDS build) and, without grain, batches come from the NumPy loader
# (jaxthyroid.data.pipeline.NumpyLoader). Offline; installs nothing.
#
# Budget (chosen to fit 10 minutes on one H200 with compilation, not measured there yet):
# the paper's data (2,400 / 600 / 600 images at 128², batch 64) and networks (ResNet-18 at
# full width, DCGAN 64², SRResNet/SRGAN 16 blocks), with fewer optimiser steps:
#   classifier  phase 1 600 + phase 2 600 steps, the plain control 1,200 (step-matched),
#               a validation round every 300 steps; the paper preset: 1,680 + 1,500 / 3,180
#   arms        full, plain control, no_gan (the GAN's judge); no baselines, no scarcity study
#   GAN         DCGAN 1,000 steps, SRResNet 1,000 + SRGAN 500 steps (paper preset 1,875, 3,750 + 1,500)
#   data        no augmentation (augmenting on the host in NumPy would cost more than the step)
# The report says what ran: every arm's steps, batch and images seen are in report.md.
# A run stopped by the time box keeps its finished stages; rerunning the same command
# resumes (finished stages are skipped).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=".${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
OUT="${OUT:-gpu_paper}"
mkdir -p "$OUT"
start=$(date +%s)
set +e
timeout --signal=TERM --kill-after=20 "${TIME_BOX:-570}" "${PYTHON:-python3}" -m jaxthyroid reproduce \
    --preset paper --seeds 1 --out "$OUT/paper" \
    --config.classifier.data.data_dir="$OUT/data" \
    --config.classifier.data.augment=False \
    --config.classifier.phase1.steps=600 \
    --config.classifier.phase2.steps=600 \
    --config.classifier.plain.steps=1200 \
    --config.classifier.eval_every_steps=300 \
    --config.gan.dcgan.steps=1000 \
    --config.gan.srgan.pretrain_steps=1000 \
    --config.gan.srgan.gan_steps=500 \
    --config.ablations='["no_gan"]' \
    --config.baselines='[]' \
    --config.scarcity.per_set='[]' \
    "$@" 2>&1 | tee "$OUT/gpu_paper.log"
rc=${PIPESTATUS[0]}
set -e
echo "gpu_paper: exit $rc after $(( $(date +%s) - start )) s; report: $OUT/paper/report.md" | tee -a "$OUT/gpu_paper.log"
exit "$rc"
