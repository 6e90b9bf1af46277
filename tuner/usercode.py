"""Resolve the user's own code named in a study file by import path.

``pkg.mod:name`` is imported normally; ``path/to/file.py:name`` is loaded from that file,
relative to the study file's folder. Problems become one :class:`UserCodeError` line that
names the missing module, file or attribute, or the expected signature.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.errors import UserCodeError

# what each role's function must accept, positionally
SIGNATURES = {
    "model": ("build(params, input_shape, num_outputs) -> nn.Module", 3),
    "trainer": ("fit(params, ctx) -> float", 2),
    "data": ("load() -> (train, val[, test])", 0),
}


def _load_file(path: Path, label: str) -> Any:
    if not path.is_file():
        raise UserCodeError(f"{label}: no file {path}; the path is relative to the study file's folder")
    mod_name = f"tuner_user_{path.stem}_{abs(hash(str(path)))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"{label}: cannot import {path}; it must be a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    # let the file import its neighbours (helpers next to it)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise UserCodeError(f"{label}: importing {path} failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _load_module(name: str, label: str, base_dir: Path | None) -> Any:
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise UserCodeError(
            f"{label}: no module named {e.name!r}; install it or make it importable on this worker "
            "(PYTHONPATH), or give a file path like nets.py:build"
        ) from None
    except Exception as e:
        raise UserCodeError(f"{label}: importing {name} failed: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(str(base_dir))


def resolve(path: str, role: str, base_dir: str | None = None) -> Callable[..., Any]:
    """Import ``path`` (``pkg.mod:name`` or ``file.py:name``) and check it fits ``role``."""
    label = f"{role}: {path}"
    target, _, attr = path.rpartition(":")
    base = Path(base_dir) if base_dir else Path.cwd()
    if target.endswith(".py") or "/" in target:
        file = Path(target)
        module = _load_file(file if file.is_absolute() else base / file, label)
    else:
        module = _load_module(target, label, base)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise UserCodeError(f"{label}: {target} has no attribute {attr!r}; check the name after ':'") from None
    check_signature(fn, role, label)
    return fn


def check_signature(fn: Any, role: str, label: str) -> None:
    expected, n = SIGNATURES[role]
    if not callable(fn):
        raise UserCodeError(f"{label}: is not a function; expected {expected}")
    try:
        inspect.signature(fn).bind(*([None] * n))
    except TypeError:
        raise UserCodeError(f"{label}: wrong signature; expected {expected}") from None
    except ValueError:
        return  # builtins without signatures: trust them


def call_loader(fn: Callable[..., Any], *, seed: int, data_dir: str) -> Any:
    """Call a data loader, passing ``seed`` / ``data_dir`` only if it asks for them."""
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("seed", seed), ("data_dir", data_dir)) if k in params}
    return fn(**kwargs)
