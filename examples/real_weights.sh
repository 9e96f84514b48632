#!/usr/bin/env bash
# Real pretrained weights (DINOv2, OpenCLIP, Direct3D, TRELLIS) instead of the built-in tiny models.
# Nothing here runs in the tests or in `lost demo`; it is the recipe for a machine that has the weights.
#
#   bash examples/real_weights.sh online  PREPARED_DIR     # a machine that reaches the Hugging Face hub
#   bash examples/real_weights.sh offline PREPARED_DIR     # an offline cluster: local files under $LOST_WEIGHTS
#
# Online, hub ids download once into the HF cache; offline (HF_HUB_OFFLINE=1), every model is a local path and
# a hub id fails at once with one line instead of waiting ~47 s per lookup. `lost info` lists what this
# machine can see (the LOST_WEIGHTS folder and the HF cache).
set -euo pipefail
MODE="${1:?usage: real_weights.sh online|offline PREPARED_DIR}"
DATA="${2:?usage: real_weights.sh online|offline PREPARED_DIR}"
W="${LOST_WEIGHTS:-$HOME/.cache/lost/weights}"

if [ "$MODE" = online ]; then
    unset HF_HUB_OFFLINE
    VAE="DreamTechAI/Direct3D"                                   # vae.ckpt, checked key for key before use
    TRELLIS="microsoft/TRELLIS-image-large"                      # ckpts/ss_{enc,dec}_conv3d_16l8_fp16.*
    DINO="timm:vit_base_patch14_dinov2.lvd142m"                 # teacher + metric network (ViT-B/14)
    CLIP="open_clip:ViT-H-14/laion2b_s32b_b79k"                  # text tower for LoST-GPT (the paper's)
else
    export HF_HUB_OFFLINE=1
    # Download once elsewhere (huggingface-cli download REPO FILE --local-dir ...), copy to $W:
    VAE="$W/direct3d/vae.ckpt"                                   # + --preset direct3d (no config.json beside it)
    TRELLIS="$W/trellis/ckpts"                                   # the folder holding ss_enc_* / ss_dec_*
    DINO="timm:vit_base_patch14_dinov2.lvd142m@$W/dinov2/vit_base_patch14_dinov2.safetensors"
    CLIP="open_clip:ViT-H-14@$W/open_clip/open_clip_pytorch_model.bin"
fi

# 1. does the checkpoint fit our Direct3D / TRELLIS classes? (lists every missing, unexpected or mis-shaped key)
lost info
lost vae check "$VAE" --preset direct3d
lost vae check "$TRELLIS" --preset trellis

# 2. latents with the real VAE, DINOv2 features (global + 4x4 pooled patch tokens per view)
lost dataset latents "$DATA" --vae "$VAE" --preset direct3d
lost dataset features "$DATA" --teacher "$DINO" --image-size 224 --grid 4

# 3. paper recipes (GPU; use examples/cluster/ for many GPUs): RIDA, tokenizer, bundle, tokens, GPT
lost rida train --recipe recipes/paper/rida.yaml --data "$DATA" --out runs/rida_paper
lost train-tokenizer --recipe recipes/paper/tokenizer.yaml --data "$DATA" --rida runs/rida_paper/export --out runs/tok_paper
lost tokenizer export runs/tok_paper --vae "$VAE" --preset direct3d --out runs/bundle_paper
lost dataset tokens "$DATA" --model runs/bundle_paper
lost gpt train --recipe recipes/paper/gpt.yaml --data "$DATA" --model runs/bundle_paper --text-encoder "$CLIP" --out runs/gpt_paper
lost gpt export runs/gpt_paper --into runs/bundle_paper

# 4. the paper's tables, with DINOv2 as the feature-similarity network
lost eval recon --model runs/bundle_paper --data "$DATA" --split test --tokens 1,4,16,64,all --teacher "$DINO" --out runs/recon_paper
lost generate "a brass telescope" --model runs/bundle_paper -n 4 --out runs/samples_paper
