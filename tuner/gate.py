"""The one gate for input: what a value must be before tuner writes or starts anything.

    read_yaml(text, source)    a study file's text -> plain data; duplicate keys, alias
                               bombs, deep nesting and very large files refused in one line
    StudyName / study_name()   a study's name: safe in a file path, a URL, a terminal and a
                               Kubernetes object name; used by ``name:``, ``--study``, ``--from``
    Count, Seed, Finite        counts that are integers the database can hold, seeds numpy
                               takes for every worker, numbers that are neither NaN nor inf
    finite() / inside()        the same checks for the options of the CLI and the API
    writable_folder()          an output folder that can be written, checked before the work

The types are pydantic's (``Annotated`` with constraints), so the study file, the settings and
the API share them; problems are one line (``ValueError`` inside pydantic, ``SpecError``
outside), naming the fix. Plain data and the standard library only: every layer may use it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field, Strict

from tuner.errors import SpecError

# ---- numbers ------------------------------------------------------------------------------
# the largest count the databases store (a signed 32-bit INTEGER column in PostgreSQL/MySQL)
MAX_COUNT = 2**31 - 1
# numpy's seeds are below 2**32, and each worker samples with seed + its index (< 2**30)
MAX_WORKER_INDEX = 2**30 - 1
MAX_SEED = 2**32 - 1 - MAX_WORKER_INDEX
# seconds in a --timeout: a year is more than any study runs, and keeps deadlines finite
MAX_SECONDS = 366 * 24 * 3600.0

Finite = Annotated[float, Field(allow_inf_nan=False)]
# an integer written as one (``1.5`` and ``20.0`` refused, not rounded), that the database holds
Count = Annotated[int, Strict(), Field(ge=1, le=MAX_COUNT)]
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)]


def finite(value: float | None, option: str, *, low: float = 0.0,
           high: float = math.inf) -> float | None:
    """``value`` (None passes) if it is a number above ``low`` and at most ``high``; else a
    SpecError naming ``option``. NaN and infinity are never numbers here."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(f"{option} {value!r}: give a finite number, e.g. {option} 3600")
    if not low < value <= high:
        raise SpecError(f"{option} {value:g}: give a number above {low:g}"
                        + (f" and at most {high:g}" if high < math.inf else ""))
    return float(value)


def inside(value: int | None, option: str, low: int, high: int) -> int | None:
    """``value`` (None passes) if it is an integer from ``low`` to ``high``; else a SpecError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{option} {value!r}: give a whole number from {low} to {high}")
    return value


def max_local_workers() -> int:
    """The most worker processes one machine starts (``--workers``): four per CPU core, at
    least 8 (a GPU packs a few; more only thrash the machine or fail to start)."""
    return max(8, 4 * (os.cpu_count() or 1))


# ---- names --------------------------------------------------------------------------------
NAME_MAX = 200
# starts with a letter or digit (never '.', '..', '-x' or a hidden file), then letters,
# digits, '_', '.', '-': no '/', no space, no markup, no shell metacharacter
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", re.ASCII)
NAME_RULE = (f"use letters, digits, '_', '.' and '-' (up to {NAME_MAX}), starting with a "
             "letter or digit, e.g. mnist_mlp-2")


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a study name (a phrase naming the fix), or None."""
    if not isinstance(value, str) or not value:
        return f"a study name is text; {NAME_RULE}"
    if len(value) > NAME_MAX or not _NAME.fullmatch(value):
        return f"{_shown(value)} is not a study name; {NAME_RULE}"
    return None


def _name_validator(value: str) -> str:
    if (why := name_problem(value)) is not None:
        raise ValueError(why)
    return value


StudyName = Annotated[str, AfterValidator(_name_validator)]


def study_name(value: str, option: str = "--study") -> str:
    """``value`` as a study name given by ``option``, or a SpecError naming the rule."""
    if (why := name_problem(value)) is not None:
        raise SpecError(f"{option}: {why}")
    return value


def _shown(value: str, limit: int = 60) -> str:
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)


def inside_folder(folder: str | os.PathLike[str], *parts: str) -> Path:
    """``folder/parts...``, or a SpecError when that path is not strictly inside ``folder``
    (a part such as ``..`` or ``/etc``): a path derived from a name never leaves its folder."""
    path = Path(folder).joinpath(*parts)
    base, full = os.path.abspath(folder), os.path.abspath(path)
    if full == base or os.path.commonpath([base, full]) != base:
        raise SpecError(f"{os.path.join(*parts)!r} would leave the folder {base}; rename the "
                        f"study ({NAME_RULE})")
    return path


# ---- devices ------------------------------------------------------------------------------
_DEVICE = re.compile(r"auto|cpu|cuda|cuda:[0-9]{1,3}", re.ASCII)


def device(value: str, option: str = "--device") -> str:
    """``value`` if it names a device tuner trains on (auto, cpu, cuda, cuda:N), else a
    SpecError: ``tpu`` or ``cuda:x`` stop here, not in every worker."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise SpecError(f"{option} {value!r}: unknown device; use auto, cpu, cuda or cuda:N")
    return value


# ---- folders ------------------------------------------------------------------------------
def writable_folder(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as a folder tuner may create and write into, checked before the work that
    fills it; nothing is created here. A SpecError names the fix."""
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: writing through it goes nowhere known
            raise SpecError(f"{option} {path}: {probe} is a broken link; give another folder")
        probe = probe.parent
    if not probe.is_dir():
        raise SpecError(f"{option} {path}: {probe} is a file, not a folder; give a folder "
                        "(or remove the file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SpecError(f"{option} {path}: {probe} is not writable by you; give a folder you "
                        "can write, or fix its permissions")
    return p


# ---- YAML ---------------------------------------------------------------------------------
MAX_FILE_BYTES = 1_000_000  # a study file is a few KB; more is a mistake (or an attack)
MAX_DEPTH = 50  # nested mappings and lists
MAX_NODES = 100_000  # values after expanding every alias (a billion laughs expands to 10**9)


class _Refused(yaml.MarkedYAMLError):
    """A study file the loader refuses; formatted like any other YAML error."""


class GateLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses duplicate keys and nesting deeper than
    :data:`MAX_DEPTH` while it composes, and documents whose aliases expand past
    :data:`MAX_NODES` values before they are constructed (aliases share one node, so the
    count is memoised per node and the check is linear in the file)."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels; a study "
                               "file needs a few", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _count_values(node)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if first is not key_node:
                    raise _Refused(None, None, f"duplicate key {key!r} (first at line "
                                   f"{first.start_mark.line + 1}); keep one of them",
                                   key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _count_values(root: Any) -> None:
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:  # post-order without recursion: sizes of children before their parent
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair]
                    if isinstance(node, yaml.MappingNode) else [])
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 0) for c in children)
        if sizes[id(node)] > MAX_NODES:
            raise _Refused(None, None, f"its aliases expand to more than {MAX_NODES:,} values "
                           "(an alias bomb?); write the values out, or use fewer aliases",
                           node.start_mark)


def read_yaml(text: str, source: str) -> Any:
    """A study file's text -> plain data, or a SpecError of one line naming ``source``, the
    line and the fix."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(f"{source}: {len(text):,} characters, more than a study file needs "
                        f"(at most {MAX_FILE_BYTES:,}); give the study's YAML file")
    try:
        return yaml.load(text, Loader=GateLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if isinstance(e, _Refused):
            raise SpecError(f"{source}{where}: {problem}") from None
        raise SpecError(f"{source}: malformed YAML{where}: {problem}; fix the file's "
                        "syntax") from None
    except RecursionError:  # a nesting the composer could not even reach our limit in
        raise SpecError(f"{source}: nested too deeply; a study file needs a few levels") from None
