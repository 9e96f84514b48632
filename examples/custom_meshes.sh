#!/usr/bin/env bash
# Your own meshes with a trained bundle: prepare a folder of meshes, then tokenize, decode and evaluate them.
#
#   bash examples/custom_meshes.sh MESH_FOLDER BUNDLE [OUT]      e.g.  bash examples/custom_meshes.sh tests/data runs/demo/bundle runs/mine
#
# MESH_FOLDER: any obj/glb/gltf/ply/stl/off files (sub-folders too); pass UP=z for Z-up sources.
# BUNDLE: a bundle folder (`lost demo` leaves one in DIR/bundle). Broken meshes are recorded in
# OUT/prepared/failures/ and the rest goes on. Everything resumes when run again.
set -euo pipefail
MESHES="${1:?usage: custom_meshes.sh MESH_FOLDER BUNDLE [OUT]}"
BUNDLE="${2:?usage: custom_meshes.sh MESH_FOLDER BUNDLE [OUT]}"
OUT="${3:-runs/custom}"
UP="${UP:-y}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

# 1. normalise, sample, label (winding numbers: open meshes are fine), render; failures are listed, not fatal
lost dataset prepare "$MESHES" --out "$OUT/prepared" --up "$UP" --workers 2
lost dataset info "$OUT/prepared"

# 2. tokens of every shape (e.g. to train LoST-GPT on them), with the bundle's VAE and tokenizer
lost dataset tokens "$OUT/prepared" --model "$BUNDLE"

# 3. one mesh by hand: 16 tokens, then decode prefixes 1, 4 and 16 back into the mesh's own frame
first="$(find "$MESHES" -type f \( -iname '*.glb' -o -iname '*.obj' -o -iname '*.ply' -o -iname '*.stl' -o -iname '*.off' -o -iname '*.gltf' \) | sort | head -n 1)"
lost tokenize "$first" --model "$BUNDLE" --tokens 16 --up "$UP" --out "$OUT/first.safetensors"
lost decode "$OUT/first.safetensors" --model "$BUNDLE" --progressive 1,4,16 --out "$OUT/first.glb"

# 4. the reconstruction table on every prepared shape (split "all": a mesh folder has no splits)
lost eval recon --model "$BUNDLE" --data "$OUT/prepared" --split all --tokens 1,4,16,all --guidance 1.0 \
    --points 100000 --out "$OUT/recon"
echo "done: $OUT/recon/recon.md, $OUT/first_k*.glb"
