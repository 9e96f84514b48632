"""The web app's work without the web: tokenize an uploaded mesh, decode its prefixes (each once, then
from the cache), generate and complete shapes; every result is a file in the session's folder.

`AppSession` is what `lost app`'s page calls, and what its tests call directly. It holds one
`LostPipeline` and serialises its use: the page queues requests (one at a time on a CPU), and the
session's own lock keeps a second caller (a script beside the page) from running the model at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from ..batch.samples import write_samples
from ..data.mesh import SUPPORTED, export_mesh, load_mesh, normalize_mesh
from ..data.render import render_views, save_grid, views_strip
from ..errors import DataError, LostError
from ..eval.geometry import point_metrics, surface_points, surface_tree
from ..pipeline import GenerateConfig, LostPipeline, Tokens, load_tokens, save_tokens, to_source_frame

TOKENS_SUFFIX = ".safetensors"
MESH_FORMATS = ("glb", "obj", "ply")  # downloads of each generated sample; the viewer shows the GLB


def prefix_ladder(num_tokens: int) -> list[int]:
    """1, 2, 4, ... up to and including R (R itself even when it is not a power of two)."""
    ks, k = [], 1
    while k < num_tokens:
        ks.append(k)
        k *= 2
    return ks + [num_tokens]


@dataclass
class Upload:
    """One tokenized upload: its tokens (a file to download) and what the decodes are compared with."""

    key: str  # sha256 of the file's bytes (and the up axis): the cache key of its decodes
    name: str  # the uploaded file's name
    tokens: Tokens
    tokens_file: Path
    ladder: list[int]  # prefix lengths the page offers: 1, 2, 4, ..., R
    reference: np.ndarray | None = None  # surface samples of the unit-frame input (None: a tokens upload)
    tree: object = None  # their nearest-neighbour tree


@dataclass
class PrefixDecode:
    """The decode of the first k tokens of an upload."""

    k: int
    mesh: Path | None  # GLB in the input's frame; None when the decoded latent holds no surface
    preview: Path  # the four views side by side (white when empty)
    chamfer: float | None  # raw Chamfer to the input in the unit frame (None: no input mesh, or no surface)
    seconds: float  # time the decode took when it was made
    cached: bool = False  # this answer came from the cache


@dataclass
class Samples:
    """Generated (or completed) shapes: one record per sample (`batch.samples.write_samples`), plus the grid."""

    folder: Path
    records: list[dict]
    grid: Path
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0


class AppSession:
    """One bundle, one work folder, a cache of decodes.

    Args:
        pipe: the bundle's pipeline (`LostPipeline.from_pretrained`).
        workdir: where uploads' tokens, decodes and samples are written (one sub-folder per request).
        resolution: marching-cubes grid of every decode.
        max_faces: uploads with more triangles are refused (a one-line error).
        chamfer_points: surface samples per mesh for the Chamfer to the input (docs/protocols.md uses
            100,000 for reports; the page shows a quicker estimate).
        cache_size: uploads whose decodes are kept (least recently used dropped first).
    """

    def __init__(self, pipe: LostPipeline, workdir: str | Path, resolution: int = 128, max_faces: int = 500_000,
                 chamfer_points: int = 20_000, cache_size: int = 16) -> None:
        self.pipe = pipe
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.resolution = int(resolution)
        self.max_faces = int(max_faces)
        self.chamfer_points = int(chamfer_points)
        self.cache_size = int(cache_size)
        self.uploads: OrderedDict[str, Upload] = OrderedDict()
        self.decodes: dict[tuple[str, int], PrefixDecode] = {}
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self.active = 0  # model calls running now
        self.peak = 0  # the most that ever ran at once (1: requests were queued, never overlapped)
        self.calls = 0

    @contextmanager
    def _model(self) -> Iterator[None]:
        """One model call at a time. `active` and `peak` count callers that arrived, before the lock: a peak
        of 1 means the requests reached the session one after another (the page's queue did its job)."""
        with self._count:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.calls += 1
        try:
            with self._lock:
                yield
        finally:
            with self._count:
                self.active -= 1

    # -- uploads ------------------------------------------------------------------------------------

    def _folder(self, kind: str, key: str) -> Path:
        folder = self.workdir / kind / key[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def tokenize(self, path: str | Path, name: str | None = None, up: str = "y") -> Upload:
        """An uploaded mesh -> all R tokens (written as a tokens file), or a tokens file -> itself.

        Raises:
            MeshError / DataError: one line naming the upload (corrupt, empty, too many faces, not a mesh,
                tokens of another model).
        """
        path = Path(path)
        name = name or path.name
        key = hashlib.sha256(path.read_bytes() + up.encode()).hexdigest() if path.is_file() else ""
        if key in self.uploads:
            self.uploads.move_to_end(key)
            return self.uploads[key]
        if path.suffix.lower() == TOKENS_SUFFIX:
            tokens = _renamed(lambda: load_tokens(path, pipeline=self.pipe), path, name)
            upload = Upload(key, name, tokens, path, prefix_ladder(tokens.k))
        else:
            upload = self._tokenize_mesh(path, name, key, up)
        self.uploads[key] = upload
        while len(self.uploads) > self.cache_size:
            old, _ = self.uploads.popitem(last=False)
            self.decodes = {ck: d for ck, d in self.decodes.items() if ck[0] != old}
        return upload

    def _tokenize_mesh(self, path: Path, name: str, key: str, up: str) -> Upload:
        if path.suffix.lower() not in SUPPORTED:
            raise DataError(f"{name}: not a mesh or tokens file (expected {', '.join(SUPPORTED)} or {TOKENS_SUFFIX})")
        mesh = _renamed(lambda: load_mesh(path, max_faces=self.max_faces), path, name)
        with self._model():
            tokens = self.pipe.tokenize(mesh, up=up, source=name)
        tokens_file = save_tokens(self._folder("uploads", key) / f"{Path(name).stem}_tokens{TOKENS_SUFFIX}", tokens)
        unit, _ = normalize_mesh(mesh, up=up)
        reference = surface_points(unit, self.chamfer_points, seed=1)
        return Upload(key, name, tokens, tokens_file, prefix_ladder(tokens.k), reference, surface_tree(reference))

    # -- decodes ------------------------------------------------------------------------------------

    def upload(self, key: str) -> Upload:
        """The upload `key`; DataError when it was never made here or has left the cache."""
        upload = self.uploads.get(key)
        if upload is None:
            raise DataError("this upload is no longer in the session: upload the file again")
        return upload

    def decode(self, key: str, k: int) -> PrefixDecode:
        """The first k tokens of upload `key` -> mesh, preview and Chamfer; made once, then from the cache."""
        upload = self.upload(key)
        if not 1 <= k <= upload.tokens.k:
            raise DataError(f"{upload.name}: holds {upload.tokens.k} tokens; k = {k} is outside 1..{upload.tokens.k}")
        hit = self.decodes.get((key, k))
        if hit is not None:
            return dataclasses.replace(hit, cached=True)
        t0 = time.time()
        with self._model():
            mesh = self.pipe.decode(upload.tokens.tokens, k=k, seed=0, resolution=self.resolution)[0]
        folder = self._folder("uploads", key)
        stem = Path(upload.name).stem
        chamfer, glb = None, None
        if mesh is not None:
            glb = export_mesh(to_source_frame(mesh, upload.tokens.normalization), folder / f"{stem}_k{k}.glb")
            if upload.reference is not None:
                pred = surface_points(mesh, self.chamfer_points, seed=0)
                chamfer = point_metrics(pred, upload.reference, gt_tree=upload.tree).chamfer
        preview = save_grid([_strip(mesh)], folder / f"{stem}_k{k}.png", labels=[_label(k, mesh)], ncols=1)
        made = PrefixDecode(k, glb, preview, chamfer, time.time() - t0)
        self.decodes[(key, k)] = made
        return made

    def prefix_tokens(self, key: str, k: int) -> Path:
        """A tokens file of the first k tokens of upload `key` (what `lost tokenize --tokens k` writes)."""
        upload = self.upload(key)
        t = upload.tokens
        path = self._folder("uploads", key) / f"{Path(upload.name).stem}_tokens_k{k}{TOKENS_SUFFIX}"
        if not path.is_file():
            save_tokens(path, Tokens(t.tokens[:k].clone(), k, t.normalization, t.source, t.model_id))
        return path

    def strip(self, key: str) -> Path:
        """All decoded ladder prefixes side by side, front view over labels "k = ..." (one PNG)."""
        upload = self.upload(key)
        done = [self.decodes[(key, k)] for k in upload.ladder if (key, k) in self.decodes]
        from PIL import Image

        fronts = [np.asarray(Image.open(d.preview).convert("RGB"))[:224, :224] for d in done]
        labels = [f"k = {d.k}" + ("" if d.chamfer is None else f", CD {100 * d.chamfer:.2f}") for d in done]
        return save_grid(fronts, self._folder("uploads", key) / "strip.png", labels=labels, ncols=len(fronts))

    # -- generation ---------------------------------------------------------------------------------

    def generate(self, prompt: str, n: int = 1, seed: int = 0, guidance: float | None = None,
                 temperature: float | None = None, tokens: int | None = None, prefix: Upload | None = None,
                 keep: int | None = None) -> Samples:
        """Text -> n samples (LoST-GPT), or with `prefix` its first `keep` tokens completed by the GPT; each
        sample written as GLB, OBJ and PLY with its preview and tokens."""
        config = GenerateConfig(guidance=guidance, temperature=temperature, num_tokens=tokens,
                                resolution=self.resolution)
        t0 = time.time()
        with self._model():
            result = self.pipe.generate(prompt, n=n, seed=seed, config=config,
                                        prefix=prefix.tokens if prefix is not None else None, keep=keep)
        what = f"{prompt}|{n}|{seed}|{guidance}|{temperature}|{tokens}|{prefix.key if prefix else ''}|{keep}"
        folder = self._folder("generated" if prefix is None else "completed",
                              hashlib.sha256(what.encode()).hexdigest())
        records = write_samples(result, folder, MESH_FORMATS, self.pipe.model_id, n,
                                {"prompts": [prompt], "prefix": prefix.name if prefix else None})
        return Samples(folder, records, folder / "grid.png", result.settings, time.time() - t0)


def _renamed(load: Callable, path: Path, name: str):
    """Run `load`; an error that names the temporary upload path names the uploaded file instead."""
    try:
        return load()
    except LostError as e:
        raise type(e)(str(e).replace(str(path), name)) from None


def _strip(mesh: trimesh.Trimesh | None) -> np.ndarray:
    return views_strip(render_views(mesh)) if mesh is not None else np.full((224, 4 * 224, 3), 255, np.uint8)


def _label(k: int, mesh: trimesh.Trimesh | None) -> str:
    return f"k = {k}" + (" (no surface)" if mesh is None else "")
