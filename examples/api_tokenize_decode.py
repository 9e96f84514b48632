"""The Python API in one page: tokenize a mesh, decode every prefix, generate from text.

    python examples/api_tokenize_decode.py --model runs/demo/bundle --mesh tests/data/penguin.glb --out api_out

`--model` is a bundle folder (`lost demo` leaves one in DIR/bundle; `lost tokenizer export` + `lost gpt export`
build one from your own runs). Runs on a CPU in seconds with the tiny bundle. Prints one line per file written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub lookups (and no 47 s waits) on offline machines

import trimesh  # noqa: E402

from lostcli.pipeline import GenerateConfig, LostPipeline, load_tokens, save_tokens, to_source_frame  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="bundle folder")
    ap.add_argument("--mesh", required=True, help="any mesh trimesh reads (glb, obj, ply, stl, off)")
    ap.add_argument("--out", default="api_out", help="output folder")
    ap.add_argument("--prompt", default="a round table with a single pedestal leg")
    ap.add_argument("--steps", type=int, default=25, help="decoder sampling steps")
    ap.add_argument("--resolution", type=int, default=64, help="marching-cubes grid")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pipe = LostPipeline.from_pretrained(args.model)  # VAE + tokenizer (+ GPT and text encoder if exported)
    print(f"model {pipe.model_id[:12]}: R = {pipe.num_tokens} tokens of {pipe.token_dim} dims")

    # 1. tokenize: the mesh is normalised (the transform is kept with the tokens), sampled and encoded
    mesh = trimesh.load(args.mesh, force="mesh")
    tokens = pipe.tokenize(mesh, source=args.mesh)  # all R tokens, [R, token_dim]
    path = save_tokens(out / "tokens.safetensors", tokens)
    print(f"{path}: {tuple(tokens.tokens.shape)} tokens")

    # 2. decode prefixes: every prefix is a whole shape, coarse first (same seed for a fair comparison)
    again = load_tokens(path, pipe)  # checks the dimension, the count and the model id
    ks = sorted({k for k in (1, 4, 16, pipe.num_tokens) if k <= pipe.num_tokens})
    for k in ks:
        decoded = pipe.decode(again.tokens[:k], k=k, steps=args.steps, guidance=1.0, seed=0,
                              resolution=args.resolution)[0]
        if decoded is None:
            print(f"k = {k}: no surface")
            continue
        decoded = to_source_frame(decoded, again.normalization)  # back into the input mesh's frame
        decoded.export(out / f"decoded_k{k}.glb")
        print(f"{out / f'decoded_k{k}.glb'}: {len(decoded.faces)} faces")

    # 3. generate from text (only when the bundle holds gpt/ and text_encoder/)
    if (Path(args.model) / "gpt").is_dir():
        result = pipe.generate(args.prompt, n=2, seed=0, config=GenerateConfig(resolution=args.resolution))
        for i, m in enumerate(result.meshes):
            if m is not None:
                m.export(out / f"generated_{i}.glb")
                print(f"{out / f'generated_{i}.glb'}: '{result.prompts[i]}', {len(m.faces)} faces")
    else:
        print(f"{args.model}: no gpt/ in the bundle, skipping generation (add it with `lost gpt export`)")


if __name__ == "__main__":
    main()
