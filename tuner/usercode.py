"""Resolve the user's own code named in a study file by import path.

``pkg.mod:name`` is imported normally, with the study file's folder first on ``sys.path``;
``path/to/file.py:name`` is loaded from that file, relative to the study file's folder.
Every problem becomes one :class:`UserCodeError` line that names the missing module, file or
attribute, or the expected signature.
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

ROLES = ("model", "data", "trainer")
# what each role's function must accept
SIGNATURES = {
    "model": "build(params, input_shape, num_outputs) -> nn.Module",
    "trainer": "fit(params, ctx) -> float",
    "data": "load() -> (train, val[, test]), optionally load(seed, data_dir)",
}
_POSITIONAL = {"model": 3, "trainer": 2}
# keyword arguments a data loader may ask for (see :func:`call_loader`)
LOADER_KWARGS = ("seed", "data_dir")


def is_import_path(text: str | None) -> bool:
    """``pkg.mod:attr`` or ``path/to/file.py:attr``: the user's own code, not a built-in name."""
    if text is None:
        return False
    mod, sep, attr = text.partition(":")
    return bool(sep and mod and attr.isidentifier())


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the message's last line, which names the cause)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}"[:500] if lines else type(exc).__name__


def exits_on_import(label: str, what: str, exc: BaseException) -> str:
    """The line for user code that ends the process (``sys.exit``) while it is imported."""
    how = (f"calls sys.exit({exc.code!r})" if isinstance(exc, SystemExit)
           else f"raises {type(exc).__name__}")
    return (f"{label}: importing {what} {how}; put the script part of that file under "
            "`if __name__ == \"__main__\":` so importing it only defines things")


def _load_file(path: Path, label: str) -> Any:
    if not path.is_file():
        raise UserCodeError(f"{label}: no file {path}; the path is relative to the study "
                            "file's folder")
    # one module per file, whatever its stem, so nets.py in two folders do not collide
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
    except ModuleNotFoundError as e:
        sys.modules.pop(mod_name, None)
        raise UserCodeError(f"{label}: {path.name} imports {e.name!r}, which is not installed "
                            "here; install it on every worker") from None
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise UserCodeError(f"{label}: importing {path} failed: {one_line(e)}") from None
    except (SystemExit, GeneratorExit) as e:
        sys.modules.pop(mod_name, None)
        raise UserCodeError(exits_on_import(label, str(path), e)) from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _load_module(name: str, label: str, base_dir: Path) -> Any:
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise UserCodeError(
            f"{label}: no module named {e.name!r}; install it or make it importable on this worker "
            f"(PYTHONPATH, or put it in {base_dir}), or give a file path like nets.py:build"
        ) from None
    except Exception as e:
        raise UserCodeError(f"{label}: importing {name} failed: {one_line(e)}") from None
    except (SystemExit, GeneratorExit) as e:
        sys.modules.pop(name, None)
        raise UserCodeError(exits_on_import(label, name, e)) from None
    finally:
        if added:
            sys.path.remove(str(base_dir))


def resolve(path: str, role: str, base_dir: str | None = None) -> Callable[..., Any]:
    """Import ``path`` (``pkg.mod:name`` or ``file.py:name``) and check it fits ``role``
    (model, data or trainer)."""
    label = f"{role}: {path}"
    target, _, attr = path.rpartition(":")
    base = Path(base_dir) if base_dir else Path.cwd()
    if target.endswith(".py") or "/" in target:
        file = Path(target).expanduser()
        module = _load_file(file if file.is_absolute() else base / file, label)
    else:
        module = _load_module(target, label, base)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        if target == "__main__":
            raise UserCodeError(
                f"{label}: {attr} was defined in a notebook or script that is not running here; "
                "move it into a .py file and name it as file.py:" + attr) from None
        raise UserCodeError(f"{label}: {target} has no attribute {attr!r}; check the name "
                            "after ':'") from None
    check_signature(fn, role, label)
    return fn


def check_signature(fn: Any, role: str, label: str) -> None:
    expected = SIGNATURES[role]
    if not callable(fn):
        raise UserCodeError(f"{label}: is a {type(fn).__name__}, not a function; expected "
                            f"{expected}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without signatures: trust them
    try:
        if role == "data":
            sig.bind(**{k: None for k in LOADER_KWARGS if k in sig.parameters})
        else:
            sig.bind(*([None] * _POSITIONAL[role]))
    except TypeError:
        raise UserCodeError(f"{label}: takes ({', '.join(sig.parameters)}); expected "
                            f"{expected}") from None


def call_loader(fn: Callable[..., Any], *, seed: int, data_dir: str) -> Any:
    """Call a data loader, passing ``seed`` / ``data_dir`` only if it asks for them."""
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("seed", seed), ("data_dir", data_dir)) if k in params}
    return fn(**kwargs)


def import_path(fn: Any, role: str) -> str:
    """``module:name`` of a function defined at the top level of a module, so a study built
    in Python (``tuner.api.run({"trainer": fit, ...})``) can name it like a study file does."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not callable(fn) or not module or not name.isidentifier():
        raise UserCodeError(
            f"{role}: {fn!r} is not a function defined at the top level of a module; pass one "
            f"that is, or an import path like file.py:name")
    check_signature(fn, role, f"{role}: {module}:{name}")
    return f"{module}:{name}"


def in_main(path: str | None) -> bool:
    """Whether ``path`` names code of the running script or notebook (``__main__:fit``), which
    other processes cannot import."""
    return path is not None and path.partition(":")[0] == "__main__"
