#!/usr/bin/env bash
# The embedded default: the whole offline pipeline implemented so far, on the built-in procedural dataset
# with the tiny recipes. No internet, no GPU. About 20 minutes on a 2-core laptop. Resumable: run it again
# after an interruption and finished stages are skipped (training continues from its last checkpoint).
#
#   bash examples/embedded_default.sh [RUN_DIR]
set -euo pipefail
RUN="${1:-runs/default}"
export HF_HUB_OFFLINE=1
mkdir -p "$RUN"

stage() { printf '\n== %s ==\n' "$1"; }

stage "1/5 built-in dataset (1008 shapes, 18 categories)"
[ -f "$RUN/synth/metadata.jsonl" ] || lost dataset synth --out "$RUN/synth" --n 1008 --seed 0
lost dataset preview "$RUN/synth" --out "$RUN/synth_categories.png"

stage "2/5 prepare: normalise, sample, label, render (resumable)"
lost dataset prepare "$RUN/synth" --out "$RUN/prepared" --workers 2
lost dataset info "$RUN/prepared"

stage "3/5 tiny Direct3D-style triplane VAE (recipes/tiny/vae.yaml)"
if [ -f "$RUN/vae/export/model.safetensors" ]; then echo "already trained: $RUN/vae/export"
elif [ -d "$RUN/vae/checkpoints" ]; then lost vae train --recipe recipes/tiny/vae.yaml --data "$RUN/prepared" --out "$RUN/vae" --resume
else lost vae train --recipe recipes/tiny/vae.yaml --data "$RUN/prepared" --out "$RUN/vae"; fi

stage "4/5 reconstruction on the test split vs. the random-other-shape baseline"
lost vae eval --vae "$RUN/vae/export" --data "$RUN/prepared" --split test --out "$RUN/vae/eval"

stage "5/5 latents of every shape (for the tokenizer) + per-channel statistics"
lost dataset latents "$RUN/prepared" --vae "$RUN/vae/export"

printf '\nDone. Report: %s   Inputs vs reconstructions: %s\n' "$RUN/vae/eval/vae_eval.md" "$RUN/vae/eval/recon_grid.png"
