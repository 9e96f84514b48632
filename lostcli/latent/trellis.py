"""TRELLIS stage-1 compatible sparse-structure VAE: 64^3 occupancy -> [8, 16, 16, 16] latent -> 64^3 logits.

A re-implementation of microsoft/TRELLIS `trellis/models/sparse_structure_vae.py` (dense Conv3d, no
attention) with the same module names, so the released `ss_{enc,dec}_conv3d_16l8_fp16` checkpoints load
strictly (`load_trellis_pair`). `SparseStructureVAE` wraps the pair behind the `ShapeVAE` interface:

- frames: our shapes live in [-1, 1]^3 with +Y up; TRELLIS voxelises [-0.5, 0.5]^3 with +Z up (its data
  comes through Blender, and its `to_glb` rotates z-up -> y-up with (x, y, z) -> (x, z, -y)). With
  `zup=True` a point (x, y, z) of ours is (x, -z, y) / 2 in TRELLIS's frame; with `zup=False` it is
  (x, y, z) / 2. Voxel index i = floor((p + 0.5) * R) clipped to [0, R - 1], TRELLIS's convention.
- voxelisation: TRELLIS marks every voxel a mesh triangle touches (Open3D). `voxelize` marks the voxels of
  dense surface samples instead, which gives the same one-voxel shell once samples are dense (tested on
  an analytic sphere); no mesh is needed below the data layer.
- LoST layout: the [C, S, S, S] latent (S = 16) is tiled into a [C, 4S, 4S] = [8, 64, 64] mosaic
  (`to_grid` / `from_grid`), so 2x2 patches give 1024 spatially local tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..persist import load_strict, read_state_dict
from .base import DiagonalGaussian, ShapeVAE, register_vae

# ----------------------------------------------------------------------------------------------------
# Layers (names and maths as in TRELLIS's modules/norm.py, modules/spatial.py, sparse_structure_vae.py)
# ----------------------------------------------------------------------------------------------------


class ChannelLayerNorm32(nn.LayerNorm):
    """LayerNorm over the channel dim of [B, C, *spatial], computed in fp32 and cast back; contiguous result.

    Contiguous as in TRELLIS, so the next Conv3d sees the same strides and gives the same values bit for bit
    (on channels-last strides oneDNN picks other kernels, ~1e-5 away). `keep_strides = True` skips the copy:
    at the tiny preset's widths the CPU then runs forward + backward ~1.7x faster, so the training task
    (`train.vae.SparseVaeTask`) turns it on; a loaded or freshly built model has it off.
    """

    keep_strides: bool = False  # return the channels-last view as is (training speed) instead of a copy

    def forward(self, x: Tensor) -> Tensor:
        dims = x.dim()
        h = x.permute(0, *range(2, dims), 1)  # channels last: [B, *spatial, C]
        h = super().forward(h.float()).type(x.dtype)
        h = h.permute(0, dims - 1, *range(1, dims - 1))
        return h if self.keep_strides else h.contiguous()


def keep_norm_strides(module: nn.Module, keep: bool = True) -> None:
    """Set `keep_strides` on every ChannelLayerNorm32 in `module` (see there: speed against exact parity)."""
    for m in module.modules():
        if isinstance(m, ChannelLayerNorm32):
            m.keep_strides = keep


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back (TRELLIS's `norm_type="group"`)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def norm_layer(norm_type: str, channels: int) -> nn.Module:
    """The norm TRELLIS builds for `norm_type` ("layer" or "group")."""
    if norm_type == "group":
        return GroupNorm32(32, channels)
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)
    raise ConfigError(f"norm_type: expected 'layer' or 'group', got {norm_type!r}")


def pixel_shuffle_3d(x: Tensor, scale_factor: int) -> Tensor:
    """[B, C*s^3, H, W, D] -> [B, C, sH, sW, sD].

    Input channel c*s^3 + a*s^2 + b*s + d at (h, w, d') goes to output (c, s*h + a, s*w + b, s*d' + d).
    """
    B, Cs, H, W, D = x.shape
    s = scale_factor
    C = Cs // s**3
    x = x.reshape(B, C, s, s, s, H, W, D)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, C, H, a, W, b, D, d]
    return x.reshape(B, C, H * s, W * s, D * s)


class ResBlock3d(nn.Module):
    """norm -> SiLU -> conv3 -> norm -> SiLU -> zero-init conv3, plus the input (identity at init).

    The encoder and decoder build every block with the default "layer" norm, as TRELLIS does: their
    `norm_type` picks the output layer's norm only.
    """

    def __init__(self, channels: int, out_channels: int | None = None, norm_type: str = "layer"):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = norm_layer(norm_type, channels)
        self.norm2 = norm_layer(norm_type, out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        # Only a channel change needs a projection; every TRELLIS block keeps its width (no keys).
        self.skip_connection = (
            nn.Conv3d(channels, out_channels, 1) if out_channels != channels else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    """Halve each spatial side with a stride-2, kernel-2 Conv3d."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class UpsampleBlock3d(nn.Module):
    """Double each spatial side: Conv3d to 8 * out_channels, then `pixel_shuffle_3d(., 2)`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


def _convs_to(module: nn.Module, dtype: torch.dtype) -> None:
    # TRELLIS's FP16_MODULES among what these networks hold: Conv3d only (norms stay fp32).
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            m.to(dtype)


# ----------------------------------------------------------------------------------------------------
# Encoder and decoder (TRELLIS's SparseStructureEncoder / SparseStructureDecoder)
# ----------------------------------------------------------------------------------------------------


class _HalfConvs(nn.Module):
    """The release's precision switch, shared by encoder and decoder: convs of `blocks` and `middle_block`."""

    blocks: nn.ModuleList
    middle_block: nn.Module

    def convert_to_fp16(self) -> None:
        """Half-precision convs in `blocks` and `middle_block` (the release layout)."""
        self.use_fp16, self.dtype = True, torch.float16
        _convs_to(self.blocks, torch.float16)
        _convs_to(self.middle_block, torch.float16)

    def convert_to_fp32(self) -> None:
        """Undo `convert_to_fp16`."""
        self.use_fp16, self.dtype = False, torch.float32
        _convs_to(self.blocks, torch.float32)
        _convs_to(self.middle_block, torch.float32)


class SparseStructureEncoder(_HalfConvs):
    """Occupancy [B, in, R, R, R] -> posterior moments [B, latent, R/2^L, ...] (L = len(channels) - 1)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        use_fp16: bool = False,
    ):
        super().__init__()
        self.latent_channels = latent_channels
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32  # torso dtype
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.middle_block = nn.Sequential(
            *[ResBlock3d(channels[-1], channels[-1]) for _ in range(num_res_blocks_middle)]
        )
        self.out_layer = nn.Sequential(
            norm_layer(norm_type, channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], latent_channels * 2, 3, padding=1),
        )
        if use_fp16:
            self.convert_to_fp16()

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Occupancy [B, in, R, R, R] -> (mean, logvar), each [B, latent, S, S, S] in x's dtype."""
        h = self.input_layer(x)
        h = h.type(self.dtype)  # torso in fp16 when use_fp16
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        h = h.type(x.dtype)
        h = self.out_layer(h)  # [B, 2 * latent, S, S, S]
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar

    def forward(self, x: Tensor, sample_posterior: bool = False, return_raw: bool = False):
        """TRELLIS's call: z = mean (or a posterior sample); `return_raw` adds (mean, logvar)."""
        mean, logvar = self.moments(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample_posterior else mean
        return (z, mean, logvar) if return_raw else z


class SparseStructureDecoder(_HalfConvs):
    """Latent [B, latent, S, S, S] -> occupancy logits [B, out, S*2^L, ...] (L = len(channels) - 1)."""

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        use_fp16: bool = False,
    ):
        super().__init__()
        self.latent_channels = latent_channels
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32  # torso dtype
        # Registration order gives TRELLIS's key order: input_layer, middle_block, blocks, out_layer.
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(
            *[ResBlock3d(channels[0], channels[0]) for _ in range(num_res_blocks_middle)]
        )
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = nn.Sequential(
            norm_layer(norm_type, channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], out_channels, 3, padding=1),
        )
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, z: Tensor) -> Tensor:
        """Latent [B, latent, S, S, S] -> logits [B, out, R, R, R] in z's dtype."""
        h = self.input_layer(z)
        h = h.type(self.dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        h = h.type(z.dtype)
        return self.out_layer(h)


# ----------------------------------------------------------------------------------------------------
# Frames, voxels and the LoST grid layout
# ----------------------------------------------------------------------------------------------------


def to_trellis_frame(xyz: Tensor, zup: bool = True) -> Tensor:
    """Our [-1, 1]^3 (+Y up) -> TRELLIS's normalised [-1, 1]^3 axes (x, -z, y) if zup; [..., 3] -> [..., 3].

    Multiply by 1/2 for TRELLIS's [-0.5, 0.5]^3 coordinates; the result is also grid_sample's frame.
    """
    if not zup:
        return xyz
    x, y, z = xyz.unbind(-1)
    return torch.stack([x, -z, y], dim=-1)


def from_trellis_frame(uvw: Tensor, zup: bool = True) -> Tensor:
    """Inverse of `to_trellis_frame`: [..., 3] -> [..., 3]."""
    if not zup:
        return uvw
    u, v, w = uvw.unbind(-1)
    return torch.stack([u, w, -v], dim=-1)


def voxel_centers(index: Tensor, resolution: int, zup: bool = True) -> Tensor:
    """Integer voxel indices [..., 3] (TRELLIS x, y, z) -> their centres in our frame [..., 3]."""
    uvw = (index.float() + 0.5) * (2.0 / resolution) - 1.0  # = 2 * ((i + 0.5) / R - 0.5)
    return from_trellis_frame(uvw, zup)


def voxelize(points: Tensor, resolution: int = 64, zup: bool = True) -> Tensor:
    """Mark the voxels that surface points fall in: [B, N, 3] (our frame) -> float 0/1 [B, 1, R, R, R].

    Index i = floor((p + 0.5) * R) with p in TRELLIS's [-0.5, 0.5]^3, clipped to [0, R - 1]; dims 2, 3, 4
    are TRELLIS's x, y, z.
    """
    B = points.shape[0]
    p = to_trellis_frame(points.float(), zup) * 0.5
    idx = ((p + 0.5) * resolution).floor().long().clamp_(0, resolution - 1)  # [B, N, 3]
    flat = (idx[..., 0] * resolution + idx[..., 1]) * resolution + idx[..., 2]  # [B, N]
    vox = torch.zeros(B, resolution**3, device=points.device, dtype=torch.float32)
    vox.scatter_(1, flat, 1.0)
    return vox.view(B, 1, resolution, resolution, resolution)


def _tiles(side: int) -> int:
    t = math.isqrt(side)
    if t * t != side:
        raise ValueError(f"latent side {side} is not a perfect square: its slices do not tile a square grid")
    return t


def to_grid(z5: Tensor) -> Tensor:
    """[B, C, S, S, S] -> [B, C, tS, tS] with t = sqrt(S): the S slices along TRELLIS x, tiled t x t.

    Slice x goes to tile (row, col) = divmod(x, t); within a tile, rows are TRELLIS y and columns TRELLIS z:
    grid[b, c, row*S + y, col*S + z] = z5[b, c, x, y, z]. S = 16 gives [B, 8, 64, 64]; since S is even, a
    2x2 patch never straddles two slices.
    """
    B, C, S = z5.shape[:3]
    t = _tiles(S)
    g = z5.reshape(B, C, t, t, S, S).permute(0, 1, 2, 4, 3, 5)  # [B, C, row, y, col, z]
    return g.reshape(B, C, t * S, t * S)


def from_grid(z: Tensor) -> Tensor:
    """Inverse of `to_grid`: [B, C, tS, tS] -> [B, C, S, S, S]."""
    B, C, H = z.shape[:3]
    t = round(H ** (1 / 3))  # H = t * S = t^3
    S = t * t
    if t**3 != H or z.shape[3] != H:
        raise ValueError(f"grid of shape {tuple(z.shape[2:])} is not a tiled [S, S, S] latent")
    g = z.reshape(B, C, t, S, t, S).permute(0, 1, 2, 4, 3, 5)  # [B, C, row, col, y, z]
    return g.reshape(B, C, S, S, S)


# ----------------------------------------------------------------------------------------------------
# Losses (TRELLIS trainers/vae/sparse_structure_vae.py)
# ----------------------------------------------------------------------------------------------------


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice over the whole batch: 1 - (2 sum(s*y) + 1) / (sum(s) + sum(y) + 1), s = sigmoid(logits)."""
    s = torch.sigmoid(logits.float())
    y = target.float()
    return 1 - (2 * (s * y).sum() + 1) / (s.sum() + y.sum() + 1)


# ----------------------------------------------------------------------------------------------------
# The ShapeVAE
# ----------------------------------------------------------------------------------------------------


@dataclass
class SSVAEConfig:
    in_channels: int = 1  # occupancy channels fed to the encoder
    out_channels: int = 1  # logit channels the decoder returns
    latent_channels: int = 8  # C of the 3-D latent [C, S, S, S]
    num_res_blocks: int = 2  # ResBlock3d per resolution level
    num_res_blocks_middle: int = 2  # ResBlock3d at the coarsest level (encoder end, decoder start)
    enc_channels: list[int] = field(default_factory=lambda: [32, 128, 512])  # encoder widths, fine -> coarse
    dec_channels: list[int] = field(default_factory=lambda: [512, 128, 32])  # decoder widths, coarse -> fine
    norm_type: str = "layer"  # out_layer norm: "layer" (ChannelLayerNorm32, default) or "group" (GroupNorm32(32))
    use_fp16: bool = False  # fp16 torso convs as released; fp32 by default (fp16 Conv3d is very slow on CPU)
    resolution: int = 64  # voxel grid side R; latent side S = R / 2^(len(enc_channels) - 1)
    zup: bool = True  # voxelise in TRELLIS's +Z-up frame (x, -z, y); False keeps our +Y-up axes

    def __post_init__(self) -> None:
        if len(self.enc_channels) != len(self.dec_channels):
            raise ConfigError("enc_channels and dec_channels must have the same number of levels")
        if self.resolution % 2 ** (len(self.enc_channels) - 1):
            levels = len(self.enc_channels) - 1
            raise ConfigError(f"resolution {self.resolution} is not divisible by 2^{levels}")
        if math.isqrt(self.latent_side) ** 2 != self.latent_side:
            raise ConfigError(f"latent side {self.latent_side} (resolution / 2^levels) is not a square")

    @property
    def latent_side(self) -> int:
        return self.resolution // 2 ** (len(self.enc_channels) - 1)


PRESETS: dict[str, SSVAEConfig] = {
    # ss_vae_conv3d_16l8: encoder 59,298,192 + decoder 73,671,201 = 132,969,393 params; latent [8, 64, 64].
    "trellis": SSVAEConfig(),
    # CPU-trainable, same 64^3 grid and latent [8, 16^3] -> [8, 64, 64]: 147,696 + 274,009 = 421,705 params.
    "tiny": SSVAEConfig(
        num_res_blocks=1, num_res_blocks_middle=1, enc_channels=[8, 16, 32], dec_channels=[32, 16, 8]
    ),
}


@register_vae
class SparseStructureVAE(ShapeVAE):
    """TRELLIS stage-1 VAE behind the ShapeVAE interface; LoST sees the latent as [8, 64, 64]."""

    config_class = SSVAEConfig
    presets = PRESETS

    def __init__(self, config: SSVAEConfig, preset: str | None = None):
        super().__init__(config, preset)
        self.encoder = SparseStructureEncoder(
            config.in_channels,
            config.latent_channels,
            config.num_res_blocks,
            list(config.enc_channels),
            config.num_res_blocks_middle,
            config.norm_type,
            config.use_fp16,
        )
        self.decoder = SparseStructureDecoder(
            config.out_channels,
            config.latent_channels,
            config.num_res_blocks,
            list(config.dec_channels),
            config.num_res_blocks_middle,
            config.norm_type,
            config.use_fp16,
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = _tiles(self.config.latent_side) * self.config.latent_side
        return (self.config.latent_channels, side, side)

    # -- encoding -------------------------------------------------------------------------------------

    def voxelize(self, points: Tensor) -> Tensor:
        """Surface points [B, N, 3] in [-1, 1]^3 -> float occupancy [B, 1, R, R, R] (see module doc)."""
        return voxelize(points, self.config.resolution, self.config.zup)

    def encode_voxels(self, vox: Tensor) -> DiagonalGaussian:
        """Occupancy [B, 1, R, R, R] -> posterior over the grid latent, mean/logvar [B, C, 64, 64]."""
        mean, logvar = self.encoder.moments(vox)
        return DiagonalGaussian(to_grid(mean.float()), to_grid(logvar.float()))

    def posterior(self, points: Tensor, normals: Tensor | None = None) -> DiagonalGaussian:
        """Surface points [B, N, 3] -> posterior [B, C, 64, 64]; normals are unused (occupancy only)."""
        return self.encode_voxels(self.voxelize(points))

    # -- decoding -------------------------------------------------------------------------------------

    def decode_logits(self, z: Tensor) -> Tensor:
        """Grid latent [B, C, 64, 64] -> occupancy logits [B, 1, R, R, R] (TRELLIS voxel order)."""
        return self.decoder(from_grid(z))

    def sample_logits(self, volume: Tensor, xyz: Tensor) -> Tensor:
        """Trilinear lookup of logits [B, 1, R, R, R] at points [B, M, 3] of our frame -> [B, M].

        Voxel i's centre sits at -1 + (2i + 1) / R in TRELLIS's normalised frame, which is exactly
        grid_sample's align_corners=False convention; "border" padding repeats the outermost voxels (empty
        in practice) instead of blending towards logit 0, which is the surface threshold.
        """
        uvw = to_trellis_frame(xyz.to(volume.dtype), self.config.zup)  # [B, M, 3] = (x, y, z) of dims 2, 3, 4
        grid = uvw.flip(-1)[:, None, None]  # grid_sample wants (W, H, D) = (z, y, x): [B, 1, 1, M, 3]
        out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[:, 0, 0, 0]  # [B, M]

    def occupancy(self, z: Tensor, xyz: Tensor) -> Tensor:
        """Grid latent [B, C, 64, 64], points [B, M, 3] -> logits [B, M] (decodes the full 64^3 volume)."""
        return self.sample_logits(self.decode_logits(z).float(), xyz)

    def mesh_query(self, z: Tensor):
        """For one latent [1, C, 64, 64]: decode the 64^3 logits once, return xyz [M, 3] -> logits [M].

        `to_mesh` (base class) runs `extract_mesh` on this trilinear field over [-1, 1]^3, so its default
        resolution 128 gives a smoother surface than marching cubes on the raw 64^3 voxels.
        """
        volume = self.decode_logits(z).float()  # [1, 1, R, R, R]
        return lambda xyz: self.sample_logits(volume, xyz[None])[0]


# ----------------------------------------------------------------------------------------------------
# Loading the released TRELLIS checkpoints
# ----------------------------------------------------------------------------------------------------

_ARGS = {
    "SparseStructureEncoder": {"in_channels", "latent_channels", "num_res_blocks", "channels",
                               "num_res_blocks_middle", "norm_type", "use_fp16"},
    "SparseStructureDecoder": {"out_channels", "latent_channels", "num_res_blocks", "channels",
                               "num_res_blocks_middle", "norm_type", "use_fp16"},
}
_REQUIRED = {"latent_channels", "num_res_blocks", "channels"}


def _pair_paths(prefix: Path) -> tuple[Path, Path]:
    stem = prefix.with_suffix("") if prefix.suffix in (".json", ".safetensors") else prefix
    json_path, weights = stem.parent / (stem.name + ".json"), stem.parent / (stem.name + ".safetensors")
    for p in (json_path, weights):
        if not p.is_file():
            raise CheckpointError(f"{p}: not found (a TRELLIS checkpoint is a .json + .safetensors pair)")
    return json_path, weights


def _find_in_dir(folder: Path, kind: str) -> Path:
    hits = sorted(folder.glob(f"ss_{kind}_*.json")) or sorted(folder.glob(f"ckpts/ss_{kind}_*.json"))
    if len(hits) != 1:
        found = ", ".join(p.name for p in hits) or "none"
        raise CheckpointError(f"{folder}: expected one ss_{kind}_*.json (+ .safetensors), found: {found}")
    return hits[0]


def _read_args(json_path: Path, name: str) -> dict[str, Any]:
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: unreadable TRELLIS model json ({e})") from None
    if not isinstance(meta, dict) or meta.get("name") != name or not isinstance(meta.get("args"), dict):
        got = meta.get("name") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{json_path}: expected {{'name': '{name}', 'args': {{...}}}}, name is {got!r}")
    args = meta["args"]
    unknown = sorted(set(args) - _ARGS[name])
    missing = sorted(_REQUIRED - set(args))
    if unknown or missing:
        raise CheckpointError(f"{json_path}: {name} args: unknown {unknown}, missing {missing}")
    return args


def load_trellis_pair(
    prefix_or_dir: str | Path, dec_prefix: str | Path | None = None, use_fp16: bool | None = None
) -> SparseStructureVAE:
    """Build and strictly load a SparseStructureVAE from TRELLIS's released encoder/decoder pairs.

    Args:
        prefix_or_dir: a directory holding `ss_enc_*.{json,safetensors}` and `ss_dec_*` (or a `ckpts/`
            subfolder with them, as in TRELLIS-image-large), or the encoder prefix
            (e.g. `.../ss_enc_conv3d_16l8_fp16`) when `dec_prefix` is given.
        dec_prefix: the decoder prefix.
        use_fp16: override the json's `use_fp16` (None keeps it; False is much faster on CPU).

    Returns:
        The VAE (resolution 64); weights are cast to each parameter's dtype on load.
    """
    root = Path(prefix_or_dir)
    if dec_prefix is None:
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a directory (give a folder, or encoder and decoder prefixes)")
        enc_json, enc_w = _pair_paths(_find_in_dir(root, "enc"))
        dec_json, dec_w = _pair_paths(_find_in_dir(root, "dec"))
    else:
        enc_json, enc_w = _pair_paths(root)
        dec_json, dec_w = _pair_paths(Path(dec_prefix))
    ea = _read_args(enc_json, "SparseStructureEncoder")
    da = _read_args(dec_json, "SparseStructureDecoder")
    if ea["latent_channels"] != da["latent_channels"] or ea["num_res_blocks"] != da["num_res_blocks"]:
        raise CheckpointError(f"{dec_json}: latent_channels/num_res_blocks differ from {enc_json.name}")
    fp16 = bool(ea.get("use_fp16", False)) if use_fp16 is None else use_fp16
    try:
        cfg = SSVAEConfig(
            in_channels=ea.get("in_channels", 1),
            out_channels=da.get("out_channels", 1),
            latent_channels=ea["latent_channels"],
            num_res_blocks=ea["num_res_blocks"],
            num_res_blocks_middle=ea.get("num_res_blocks_middle", 2),
            enc_channels=list(ea["channels"]),
            dec_channels=list(da["channels"]),
            norm_type=ea.get("norm_type", "layer"),
            use_fp16=fp16,
        )
    except ConfigError as e:
        raise CheckpointError(f"{enc_json}: {e}") from None
    dec_shared = (da.get("num_res_blocks_middle", 2), da.get("norm_type", "layer"))
    if dec_shared != (cfg.num_res_blocks_middle, cfg.norm_type):
        raise CheckpointError(f"{dec_json}: num_res_blocks_middle/norm_type differ from {enc_json.name}")
    vae = SparseStructureVAE(cfg)
    load_strict(vae.encoder, read_state_dict(enc_w), source=str(enc_w))
    load_strict(vae.decoder, read_state_dict(dec_w), source=str(dec_w))
    return vae
