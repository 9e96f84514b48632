"""`lost info`: what this installation is and what it can see."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
from typing import Annotated

import typer
from rich.table import Table

from .. import __version__
from ..weights import visible_weights, weights_home
from .common import console

PACKAGES = ("torch", "accelerate", "diffusers", "timm", "open_clip_torch", "trimesh", "embreex", "libigl",
            "manifold3d", "scikit-image", "safetensors", "torchmetrics", "typer", "rich", "numpy")


def collect() -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "lost": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "precision": "bf16 autocast" if cuda else "fp32",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", "0"),
        "weights_home": str(weights_home()),
        "weights": [w.__dict__ for w in visible_weights()],
    }


def info(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Versions, device, threads and the pretrained weights this machine can see."""
    data = collect()
    if json_out:
        print(json.dumps(data, indent=2))
        return
    console.print(f"[bold]lost {data['lost']}[/bold]  python {data['python']}  {data['platform']}")
    console.print(f"device: {data['device']} ({data['precision']}), torch threads: {data['threads']}, "
                  f"CPUs: {data['cpu_count']}, HF_HUB_OFFLINE={data['hf_hub_offline']}")
    table = Table("package", "version")
    for name, version in data["packages"].items():
        table.add_row(name, version or "[red]missing[/red]")
    console.print(table)
    weights = Table("weights", "used for", "local copy")
    for w in data["weights"]:
        weights.add_row(w["name"], w["what"], w["where"] or "[dim]not on this machine[/dim]")
    console.print(weights)
    console.print(f"manual weights folder (LOST_WEIGHTS): {data['weights_home']}")
