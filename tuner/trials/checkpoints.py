"""A study's checkpoint files in this process's ``--checkpoint-dir``: one per lineage
(``trial-L.pt``; ``trial-L-foldI.pt`` under k-fold), the generation snapshots a schedule asks
for (``trial-L-genE.pt``), and their deletion once nothing will read them."""

from __future__ import annotations

from pathlib import Path

from tuner.gate import inside_folder
from tuner.training.context import CheckpointStore


class Checkpoints:
    """The checkpoint files of study ``study`` under ``root``."""

    def __init__(self, root: str, study: str, keep: bool = False):
        # keep: --keep-checkpoints (a complete trial's files and the snapshots stay)
        self.root, self.study, self.keep = root, study, keep

    @property
    def folder(self) -> Path:
        return inside_folder(self.root, self.study)

    def of(self, lineage: int, *, fold: int | None = None,
           generation: int | None = None) -> CheckpointStore:
        """The lineage's checkpoint (of one fold), or its snapshot as of ``generation``."""
        suffix = ("" if fold is None else f"-fold{fold}") + (
            "" if generation is None else f"-gen{generation}")
        return CheckpointStore(self.folder / f"trial-{lineage}{suffix}.pt")

    def drop(self, lineage: int) -> None:
        """Delete the checkpoint of a lineage that will never run again (a retired pause)."""
        self.of(lineage).delete()

    def drop_snapshots(self) -> None:
        """Once the study is over: delete every generation snapshot (unless checkpoints are
        kept), and the half-written checkpoints of workers killed while saving one: no
        member runs or waits any more, so no live worker is writing them."""
        if self.keep:
            return
        folder = self.folder
        for pattern in ("trial-*-gen*.pt", ".tmp-*.pt"):
            for f in folder.glob(pattern) if folder.is_dir() else []:
                f.unlink(missing_ok=True)
