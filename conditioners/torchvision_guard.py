"""A safe `import torchvision` where torch and torchvision come from different builds.

PyPI's torchvision 0.28.0 is a CUDA build. Beside a CPU-only torch 2.13 its C++ extension does
not load, and `torchvision/_meta_registrations.py` then fails at import with
`RuntimeError: operator torchvision::nms does not exist`. Whatever imports torchvision fails
with it, transformers' image processors included.

`import_torchvision()` tries the plain import first: with matched builds that is all it does.
Only on that exact failure, with the extension really absent, does it import again while
`torch.library.register_fake` skips `torchvision::` operators. Models and transforms then work;
the C++ ops (`torchvision.ops.nms`, `roi_align`, ...) raise when called. SPIGA and OpenPifPaf's
animal decoder do not use them.

`install_import_guard()` routes the first `import torchvision` of the process, from any library,
through `import_torchvision()`; it costs nothing until then.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from types import ModuleType

_LOCK = threading.RLock()


def _is_build_mismatch(error: RuntimeError) -> bool:
    extension = sys.modules.get("torchvision.extension")
    missing_op = "operator torchvision::" in str(error) and "does not exist" in str(error)
    return missing_op and extension is not None and not extension._has_ops()


def _forget_torchvision() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """torchvision, imported plainly or, on a CPU-torch/CUDA-torchvision mismatch, without its C++ ops."""
    with _LOCK:
        try:
            return importlib.import_module("torchvision")
        except RuntimeError as error:
            if not _is_build_mismatch(error):
                raise
            mismatch = error
        import torch.library

        _forget_torchvision()
        register_fake = torch.library.register_fake

        def skip_torchvision_ops(op, func=None, /, *args, **kwargs):
            if isinstance(op, str) and op.startswith("torchvision::"):
                return func if func is not None else (lambda f: f)
            return register_fake(op, func, *args, **kwargs)

        torch.library.register_fake = skip_torchvision_ops
        try:
            return importlib.import_module("torchvision")
        except BaseException as error:
            _forget_torchvision()
            raise error from mismatch
        finally:
            torch.library.register_fake = register_fake


class _ImportGuard(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `torchvision` once: imports it through `import_torchvision` and hands that module over."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None:
            return None  # not installed: the usual ModuleNotFoundError follows
        # Only a spec: `importlib.util.find_spec("torchvision")` (datasets asks at import) must not
        # import it, which costs seconds; the import happens in create_module.
        return importlib.machinery.ModuleSpec("torchvision", self, origin=real.origin, is_package=True)

    def create_module(self, spec):
        remove_import_guard()  # one shot, and no recursion into ourselves
        module = import_torchvision()
        self._real_spec = module.__spec__  # the import system overwrites it with ours
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._real_spec


_GUARD = _ImportGuard()


def install_import_guard() -> None:
    """Make every later `import torchvision` in this process safe (see the module docstring)."""
    if "torchvision" not in sys.modules and _GUARD not in sys.meta_path:
        sys.meta_path.insert(0, _GUARD)


def remove_import_guard() -> None:
    while _GUARD in sys.meta_path:
        sys.meta_path.remove(_GUARD)
