"""Resolve a `--vae` argument: our exported folder, a bare checkpoint + preset, a TRELLIS pair, or a hub name."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError
from .base import ShapeVAE, load_vae

COMBINED_PARTS = ("vae", "dit")  # the halves of Direct3D's image-to-3D model.ckpt
PRESET_CLASS = {"direct3d": "TriplaneVAE", "tiny": "TriplaneVAE", "trellis": "SparseStructureVAE"}

# Hub repositories of released weights and the files in them.
HUB_FILES = {
    "DreamTechAI/Direct3D": ("direct3d", ["vae.ckpt"]),
    "microsoft/TRELLIS-image-large": (
        "trellis",
        ["ckpts/ss_enc_conv3d_16l8_fp16.json", "ckpts/ss_enc_conv3d_16l8_fp16.safetensors",
         "ckpts/ss_dec_conv3d_16l8_fp16.json", "ckpts/ss_dec_conv3d_16l8_fp16.safetensors"],
    ),
}


def _is_trellis_dir(path: Path) -> bool:
    return path.is_dir() and (any(path.glob("ss_enc*.json")) or any(path.glob("ckpts/ss_enc*.json")))


def _download(repo: str) -> Path:
    from huggingface_hub import hf_hub_download

    _, files = HUB_FILES[repo]
    try:
        local = [Path(hf_hub_download(repo, f)) for f in files]
    except Exception as e:  # offline, missing, no access: one line
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set: download the files elsewhere and pass the local path)" if offline else ""
        raise CheckpointError(f"{repo}: could not fetch {files[0]}: {type(e).__name__}{hint}") from None
    return local[0] if len(local) == 1 else local[0].parent


def resolve_vae(spec: str | Path, preset: str | None = None, device: str | None = None) -> ShapeVAE:
    """Load a shape VAE from any of the forms users hand us.

    Args:
        spec: folder written by `lost vae train` (config.json + model.safetensors); a bare weights file
            (.ckpt/.pt/.safetensors, e.g. Direct3D's vae.ckpt) with `preset`; a folder holding TRELLIS'
            ss_enc_*/ss_dec_* json+safetensors pairs; or a hub repo id from `HUB_FILES` (when online).
        preset: architecture preset for a bare weights file ("direct3d", "tiny", "trellis").
    """
    path = Path(spec)
    if not path.exists() and str(spec) in HUB_FILES:
        hub_preset, _ = HUB_FILES[str(spec)]
        path, preset = _download(str(spec)), preset or hub_preset
    if not path.exists():
        raise CheckpointError(f"{spec}: no such file or folder (and not a known hub repo: {', '.join(HUB_FILES)})")
    if _is_trellis_dir(path):
        from .trellis import load_trellis_pair

        on_gpu = str(device or "cpu").startswith("cuda")
        return load_trellis_pair(path, use_fp16=on_gpu).to(device or "cpu").eval()  # fp16 Conv3d is slow on CPU
    if path.is_file() and not (path.parent / "config.json").is_file():
        if preset is None:
            raise CheckpointError(f"{path}: a bare checkpoint needs --preset ({', '.join(PRESET_CLASS)})")
        if preset not in PRESET_CLASS:
            raise CheckpointError(f"--preset {preset}: unknown (known: {', '.join(PRESET_CLASS)})")
        return load_vae(path, class_name=PRESET_CLASS[preset], preset=preset, device=device)
    return load_vae(path, device=device)


def check_checkpoint(path: str | Path, preset: str) -> dict:
    """Compare a downloaded checkpoint with a preset, key by key, without loading any values.

    Returns:
        {part name: StateDictReport}: for Direct3D "vae", or "vae" and "dit" when the file is the image-to-3D
        `model.ckpt` ({"vae": ..., "dit": ...}); for TRELLIS "encoder" and "decoder".
    """
    import torch

    from ..persist import PICKLE_SUFFIXES, compare_state_dict, read_state_dict, read_state_dict_parts

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if preset in ("direct3d", "tiny"):
        from .direct3d import TriplaneVAE
        from .direct3d_dit import Direct3DDiT

        with torch.device("meta"):  # shapes only: no 119M / 950M-parameter allocation
            vae, dit = TriplaneVAE.from_preset(preset), Direct3DDiT.from_preset(preset)
        parts = read_state_dict_parts(path, COMBINED_PARTS) if path.suffix.lower() in PICKLE_SUFFIXES else {}
        if "dit" not in parts:  # vae.ckpt, a bare or safetensors VAE state dict: the VAE alone
            return {"vae": compare_state_dict(vae, parts["vae"] if "vae" in parts else read_state_dict(path))}
        # model.ckpt {"vae": ..., "dit": ...}: both halves, a missing half reported as all of its keys missing
        return {"vae": compare_state_dict(vae, parts.get("vae", {})), "dit": compare_state_dict(dit, parts["dit"])}
    if preset == "trellis":
        from .trellis import PRESETS, SparseStructureDecoder, SparseStructureEncoder, _find_in_dir

        cfg = PRESETS["trellis"]
        with torch.device("meta"):
            enc = SparseStructureEncoder(cfg.in_channels, cfg.latent_channels, cfg.num_res_blocks, cfg.enc_channels,
                                         cfg.num_res_blocks_middle, cfg.norm_type)
            dec = SparseStructureDecoder(cfg.out_channels, cfg.latent_channels, cfg.num_res_blocks, cfg.dec_channels,
                                         cfg.num_res_blocks_middle, cfg.norm_type)
        if path.is_dir():
            files = {"encoder": _find_in_dir(path, "enc"), "decoder": _find_in_dir(path, "dec")}
        else:  # one file: an encoder or a decoder, told apart by its name
            part = "encoder" if "enc" in path.name else "decoder" if "dec" in path.name else None
            if part is None:
                raise CheckpointError(f"{path}: cannot tell encoder from decoder; pass the folder holding both")
            files = {part: path}
        out = {}
        for part, file in files.items():
            file = Path(file)
            weights = file if file.suffix == ".safetensors" else file.with_suffix(".safetensors")
            out[part] = compare_state_dict(enc if part == "encoder" else dec, read_state_dict(weights))
        return out
    raise CheckpointError(f"--preset {preset}: unknown (known: direct3d, tiny, trellis)")
