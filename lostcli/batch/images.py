"""`lost dataset images`: the data engine's first stage, one FLUX image per prompt of a prompts file.

The LoST authors render every prompt with diffusers' `FluxPipeline` (FLUX.1-dev, bf16, 512 x 512,
guidance 3.5, 50 steps, max_sequence_length 512, batches of 8) after wrapping it as `WRAPPER`; Direct3D then
turns each image into a shape. FLUX.1-schnell (Apache-2.0, timestep-distilled: 4 steps, no guidance, T5
sequences of at most 256 tokens) is the permissive alternative to FLUX.1-dev (non-commercial weights).

Output folder:

    DIR/settings.json           model, variant, steps, guidance, size, max_seq_len, wrapper, seed, dtype
    DIR/images/000000.png       prompt 0 (index among the file's prompts), ...
    DIR/images.jsonl            one row per finished image, sorted by index, written at the end of a run
    DIR/parts/r000.jsonl        rows appended by process 0 as its images finish (merged into images.jsonl)
    DIR/failures/r000.jsonl     prompts (or batches) that raised or gave non-finite pixels, with the reason

Prompt i is drawn with seed `prompt_seed(seed, i)` on its own CPU generator, so its image does not depend on
the batch it lands in, on the process that draws it or on the device count. A PNG is written under a temporary
name and renamed; only then is its row appended, so a killed run never counts a half-written image. A re-run
(or `accelerate launch` with any number of processes: process r draws the prompts with i % world == r) skips
every prompt whose row and PNG are in place and redoes the rest, failures included.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.prompts import PromptLine
from ..data.store import FailureLog, dumps_line
from ..errors import CheckpointError, ConfigError, DataError
from ..persist import atomic_path, bind_settings, atomic_write_text

# The authors' wrapper (scripts/generate_images.py), applied to every prompt unless --no-wrapper.
WRAPPER = ("3D render of a {prompt}, isometric view, trending on ArtStation, Unreal Engine 5, V-Ray render, "
           "clean model, white background, hyperrealistic, high detail.")
BARE = "{prompt}"  # the wrapper that keeps the prompt as written
COMPONENTS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
OFFLOAD = ("model", "sequential")
MANIFEST = "images.jsonl"
_ARTICLE = re.compile(r"^(a|an|the)\s", re.IGNORECASE)  # a prompt with its own article
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# ----------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSettings:
    """Everything that decides the pixels of an image (a resumed run must use the same)."""

    model: str  # hub id, or the folder's absolute path
    variant: str  # "dev" (guidance-distilled) or "schnell" (timestep-distilled)
    steps: int  # denoising steps
    guidance: float  # FLUX.1-dev's distilled guidance scale (schnell ignores it)
    size: int  # height = width, pixels
    max_seq_len: int  # T5 tokens per prompt
    wrapper: str  # template with "{prompt}" (BARE: none)
    seed: int  # base seed; prompt i draws with prompt_seed(seed, i)
    dtype: str  # "bfloat16" on a GPU, "float32" on the CPU


# The paper's settings for FLUX.1-dev; the model card's for FLUX.1-schnell.
DEFAULTS: dict[str, dict[str, Any]] = {
    "dev": {"steps": 50, "guidance": 3.5, "size": 512, "max_seq_len": 512},
    "schnell": {"steps": 4, "guidance": 0.0, "size": 512, "max_seq_len": 256},
}


def resolve_settings(model: str, variant: str, *, seed: int, dtype: str, wrapper: bool = True,
                     **overrides: int | float | None) -> ImageSettings:
    """The variant's defaults, with every override that is not None (steps, guidance, size, max_seq_len).

    Raises:
        ConfigError: an override out of range (one line naming the option).
    """
    values = {**DEFAULTS[variant], **{k: v for k, v in overrides.items() if v is not None}}
    settings = ImageSettings(model=model, variant=variant, seed=seed, dtype=dtype,
                             wrapper=WRAPPER if wrapper else BARE, **values)
    if settings.steps < 1:
        raise ConfigError(f"--steps {settings.steps}: must be >= 1")
    if not np.isfinite(settings.guidance) or settings.guidance < 0:
        raise ConfigError(f"--guidance {settings.guidance}: must be a finite number >= 0")
    if settings.size < 16 or settings.size % 16:
        raise ConfigError(f"--size {settings.size}: must be a multiple of 16 (FLUX packs 2 x 2 latent patches)")
    if not 1 <= settings.max_seq_len <= 512:
        raise ConfigError(f"--max-seq-len {settings.max_seq_len}: must be between 1 and 512")
    return replace(settings, guidance=float(settings.guidance))


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt `index` under base `seed`: stable across runs, shards and batch sizes (32 bits)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def wrap(prompt: str, wrapper: str) -> str:
    """The text FLUX sees: `prompt` in `wrapper`. A prompt that brings its own article ("an owl", "the Eiffel
    tower") takes the place of the wrapper's "a {prompt}" (no "3D render of a an owl")."""
    if _ARTICLE.match(prompt) and "a {prompt}" in wrapper:
        wrapper = wrapper.replace("a {prompt}", "{prompt}")
    return wrapper.format(prompt=prompt)


# ----------------------------------------------------------------------------------------------------
# The model: which variant, loading
# ----------------------------------------------------------------------------------------------------


def check_flux_folder(folder: Path) -> None:
    """A local FLUX pipeline folder must hold model_index.json and every component's subfolder.

    Raises:
        CheckpointError: one line naming the folder and what is missing.
    """
    index = folder / "model_index.json"
    if not index.is_file():
        raise CheckpointError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{index}: malformed ({type(e).__name__})") from None
    if name != "FluxPipeline":
        raise CheckpointError(f"{index}: a {name} folder, not a FluxPipeline")
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise CheckpointError(f"{folder}: FLUX pipeline folder without {', '.join(m + '/' for m in missing)}")
    if not (folder / "transformer" / "config.json").is_file():
        raise CheckpointError(f"{folder / 'transformer' / 'config.json'}: not found")


def identify_flux(spec: str) -> tuple[str, str]:
    """(model, variant) of a hub id or a local folder: the hub id or the folder's absolute path, and "dev" or
    "schnell".

    A folder (or a hub id named neither way) is told by its transformer's config: FLUX.1-dev is
    guidance-distilled and embeds the guidance scale (`guidance_embeds: true`), FLUX.1-schnell does not.
    A hub id is told by its name ("...-schnell", "...-dev") without downloading anything.

    Raises:
        CheckpointError: a folder that is not a complete FLUX pipeline, a path that does not exist, or a hub
            id whose transformer config cannot be fetched.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        check_flux_folder(path)
        model, config = str(path.resolve()), path / "transformer" / "config.json"
    elif _HUB_ID.match(spec) and not path.exists():
        name = spec.split("/")[1].lower()
        for variant in ("schnell", "dev"):
            if variant in name:
                return spec, variant
        model, config = spec, Path(_hub_transformer_config(spec))
    else:
        raise CheckpointError(f"{spec}: no such folder (nor a hub id owner/name)")
    try:
        guidance = json.loads(config.read_text(encoding="utf-8")).get("guidance_embeds")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{config}: unreadable transformer config ({type(e).__name__})") from None
    return model, "dev" if guidance else "schnell"


def _hub_transformer_config(repo: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, "transformer/config.json")
    except Exception as e:  # offline, gated, missing: all say the same thing to the user
        raise CheckpointError(f"{repo}: cannot read transformer/config.json to tell FLUX.1-dev from -schnell "
                              f"({type(e).__name__}); name a local folder or a repo called *-dev / *-schnell") from None


def default_device(world_size: int = 1) -> str:
    """This process's device: Accelerate's under a multi-process launch, else cuda when there is one."""
    import torch

    if world_size > 1:
        from accelerate import PartialState

        return str(PartialState().device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype_for(device: str) -> str:
    """bfloat16 on a GPU (the authors' choice), float32 on the CPU (bfloat16 matmuls are slow there)."""
    return "bfloat16" if device.startswith("cuda") else "float32"


def check_offload(offload: str | None, device: str) -> None:
    """Offloading moves components between the CPU and a GPU: it needs a GPU.

    Raises:
        ConfigError: an unknown mode, or a mode on a process without a GPU.
    """
    if offload is not None and offload not in OFFLOAD:
        raise ConfigError(f"--offload {offload}: must be one of {', '.join(OFFLOAD)}")
    if offload is not None and not device.startswith("cuda"):
        raise ConfigError(f"--offload {offload}: needs a GPU (this process runs on {device})")


def load_flux(spec: str, device: str, offload: str | None = None) -> Any:
    """A diffusers `FluxPipeline` from a hub id or a folder, on `device` in `dtype_for(device)`.

    Args:
        offload: None (all on `device`), "model" (one component at a time on the GPU) or "sequential"
            (layer by layer: the least memory, the slowest).

    Raises:
        ConfigError: offloading without a GPU. CheckpointError: the pipeline cannot be loaded.
    """
    import torch
    import transformers
    from diffusers import FluxPipeline
    from diffusers.utils import deprecation_utils
    from diffusers.utils import logging as diffusers_logging

    check_offload(offload, device)
    diffusers_logging.disable_progress_bar()  # per-component loading bars would tear through the rich one
    transformers.utils.logging.disable_progress_bar()
    # diffusers renamed torch_dtype to dtype (its deprecation helper came with the new name); older ones know
    # only torch_dtype and would ignore dtype, loading FLUX in float32.
    key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    path = Path(spec).expanduser()
    try:
        pipe = FluxPipeline.from_pretrained(str(path) if path.is_dir() else spec,
                                            **{key: getattr(torch, dtype_for(device))})
    except Exception as e:  # diffusers and the hub raise many types; the first line says which file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"{spec}: cannot load the FLUX pipeline ({type(e).__name__}: {first})") from None
    pipe.set_progress_bar_config(disable=True)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


# ----------------------------------------------------------------------------------------------------
# Manifest: rows per process, merged at the end
# ----------------------------------------------------------------------------------------------------


def image_file(index: int) -> str:
    """The PNG of prompt `index`, relative to the output folder."""
    return f"images/{index:06d}.png"


def _read_rows(path: Path) -> list[dict]:
    """Rows of a manifest or part file; a torn last line (a kill mid-append has no newline) is dropped."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]  # a complete line always ends in "\n"
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"{path}:{lineno}: malformed row") from None
    return rows


def finished_rows(out: Path) -> dict[int, dict]:
    """{index: row} of every image whose row was written and whose PNG is in place with the recorded size."""
    sources = [out / MANIFEST] + sorted((out / "parts").glob("r*.jsonl"))
    rows: dict[int, dict] = {}
    for path in sources:
        if path.is_file():
            rows.update((row["index"], row) for row in _read_rows(path))
    return {i: row for i, row in rows.items() if _png_intact(out / row["file"], row["bytes"])}


def _png_intact(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def check_settings(out: Path, settings: ImageSettings, write: bool) -> None:
    """Bind the folder to one set of settings (`persist.bind_settings` on OUT/settings.json)."""
    bind_settings(out / "settings.json", asdict(settings), "images made", write)


def check_prompts(done: dict[int, dict], items: list[PromptLine], source: Path) -> None:
    """Images already made must belong to the same prompts (the file may grow, not change).

    Raises:
        DataError: a finished image was made for another prompt than the file now holds at its index.
    """
    for index, item in enumerate(items):
        row = done.get(index)
        if row is not None and row["prompt"] != item.prompt:
            raise DataError(f"{source}:{item.line}: prompt {index} is {item.prompt!r}, but {row['file']} was made "
                            f"for {row['prompt']!r}; use another --out for another prompts file")


def merge_manifest(out: Path) -> int:
    """Write `images.jsonl` (every finished row, sorted by index) atomically, then drop the merged part files.

    Returns:
        rows in the manifest.
    """
    rows = finished_rows(out)
    atomic_write_text(out / MANIFEST, "".join(dumps_line(rows[i]) + "\n" for i in sorted(rows)))
    for part in sorted((out / "parts").glob("r*.jsonl")):
        part.unlink()
    return len(rows)


def _drop_torn_tail(path: Path) -> None:
    """Cut a part file back to its last complete line, so the next row does not continue a torn one."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _append_row(path: Path, row: dict) -> None:
    """One write per row, flushed to disk: a crash loses at most this line (and leaves it torn, not merged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(dumps_line(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------


@dataclass
class ImagesResult:
    done: int  # images written by this process in this run
    skipped: int  # this process's prompts already finished
    failed: list[dict] = field(default_factory=list)  # failure records written by this process
    total: int = 0  # prompts in the file


def plan_images(items: list[PromptLine], out: Path, settings: ImageSettings, source: Path, rank: int = 0,
                world_size: int = 1) -> tuple[list[int], int]:
    """(indices this process still has to draw, how many of its share are finished), after checking that
    the folder's settings and finished prompts agree with this run."""
    check_settings(out, settings, write=rank == 0)
    done = finished_rows(out)
    check_prompts(done, items, source)
    mine = [i for i in range(len(items)) if i % world_size == rank]
    todo = [i for i in mine if i not in done]
    return todo, len(mine) - len(todo)


def _draw(pipe: Any, texts: list[str], seeds: list[int], settings: ImageSettings) -> np.ndarray:
    """[B, H, W, 3] float images in [0, 1] (NaN where the pipeline produced it)."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # per prompt, independent of batching
    result = pipe(texts, height=settings.size, width=settings.size, guidance_scale=settings.guidance,
                  num_inference_steps=settings.steps, max_sequence_length=settings.max_seq_len,
                  generator=generators, output_type="np")
    return np.asarray(result.images, dtype=np.float32)


def draw_batch(pipe: Any, texts: list[str], seeds: list[int], settings: ImageSettings) -> list[np.ndarray | str]:
    """One image per text, or the reason it failed; a batch that raises is retried one prompt at a time,
    so a single bad prompt (or an out-of-memory batch) costs only itself."""
    try:
        images = _draw(pipe, texts, seeds, settings)
    except Exception as e:  # KeyboardInterrupt and SystemExit still end the run
        if len(texts) > 1:
            return [r for t, s in zip(texts, seeds) for r in draw_batch(pipe, [t], [s], settings)]
        return [" ".join(f"{type(e).__name__}: {e}".split())[:500]]
    return [img if np.isfinite(img).all() else "the image holds NaN or inf values" for img in images]


def save_png(image: np.ndarray, path: Path) -> int:
    """Write a [H, W, 3] image in [0, 1] as an 8-bit PNG, atomically; its size in bytes."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return path.stat().st_size


def generate_images(items: list[PromptLine], out: Path, settings: ImageSettings, *, source: Path, device: str,
                    offload: str | None = None, batch_size: int = 8, rank: int = 0, world_size: int = 1,
                    progress: Callable | None = None) -> ImagesResult:
    """Draw this process's unfinished prompts in batches and write their PNGs and rows (see the module doc).

    The pipeline is loaded only when something is left to draw. Call `merge_manifest` once every process is
    done.

    Raises:
        DataError: the folder holds another run's settings or prompts. CheckpointError / ConfigError: the
            model cannot be loaded.
    """
    out.mkdir(parents=True, exist_ok=True)
    todo, skipped = plan_images(items, out, settings, source, rank, world_size)
    result = ImagesResult(done=0, skipped=skipped, total=len(items))
    if not todo:
        return result
    pipe = load_flux(settings.model, device, offload)
    failures = FailureLog(out, rank)
    part = out / "parts" / f"r{rank:03d}.jsonl"
    _drop_torn_tail(part)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        texts = [wrap(items[i].prompt, settings.wrapper) for i in chunk]
        seeds = [prompt_seed(settings.seed, i) for i in chunk]
        for i, text, seed, image in zip(chunk, texts, seeds, draw_batch(pipe, texts, seeds, settings)):
            row = {"index": i, "line": items[i].line, "category": items[i].category, "prompt": items[i].prompt,
                   "text": text, "seed": seed, "file": image_file(i)}
            if isinstance(image, str):
                result.failed.append(failures.add(f"{source}:{items[i].line}", image, index=i, seed=seed))
                continue
            row["bytes"] = save_png(image, out / row["file"])
            _append_row(part, {**row, **_row_settings(settings)})
            result.done += 1
        if progress:
            progress(start + len(chunk), len(todo), items[chunk[-1]].prompt)
    return result


def _row_settings(settings: ImageSettings) -> dict:
    """The settings each manifest row carries (the wrapper is already in its "text")."""
    return {k: v for k, v in asdict(settings).items() if k not in ("wrapper", "seed")}
