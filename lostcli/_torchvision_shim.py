"""Let the pure-Python parts of a CUDA-only torchvision wheel import on a CPU-only torch.

PyPI serves torchvision only as a CUDA build. On a CPU build of torch its compiled extension fails to
load, and `import torchvision` (hence `import timm`, `import open_clip`) dies with
"operator torchvision::nms does not exist" while registering fake kernels for `nms`/`qnms`.
Declaring those two operator schemas with `torch.library` before torchvision loads is enough for its
Python parts (transforms, models) to import; its compiled ops and `torchvision.io` stay unavailable
(we read images with PIL).

This module is imported at interpreter start by `lostcli_torchvision_shim.pth` (installed next to the
package), so it also runs in `accelerate launch` workers. It installs a lazy import hook and costs
nothing until something imports torchvision. When torchvision's extension loads natively (a matching
CUDA or CPU build), the hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the torch.library.Library alive for the life of the process
applied = False  # True once the schemas had to be declared here


def _native_extension_loads() -> bool:
    """Try to load torchvision's compiled extension the way torchvision itself would."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to fix
    for folder in spec.submodule_search_locations:
        for lib in Path(folder).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def fix() -> bool:
    """Declare the missing schemas if torchvision's extension cannot load. Returns True if it did."""
    global _LIBRARY, applied
    if applied or "torchvision" in sys.modules:
        return applied
    if _native_extension_loads():
        return False
    import torch

    missing = [name for name in _SCHEMAS if not hasattr(torch.ops.torchvision, name)]
    if missing:
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        for name in missing:
            _LIBRARY.define(_SCHEMAS[name])
    applied = True
    return True


class _Hook(importlib.abc.MetaPathFinder):
    """Runs `fix()` right before the first `import torchvision`, then steps aside."""

    def find_spec(self, name, path=None, target=None):  # noqa: D102 (importlib protocol)
        if name == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Hook)]
            try:
                fix()
            except Exception:  # never break an import because of the shim
                pass
        return None


def install() -> None:
    """Install the lazy hook once (idempotent)."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())


install()
