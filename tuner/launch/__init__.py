"""Launch a study's workers on the schedulers clusters already run.

    from tuner import launch

    text = launch.slurm_script(launch.SlurmSettings(study="mnist_mlp", storage=url,
                                                    folder="tuner-slurm", workers=8))
    job_id = launch.submit(text, settings)              # sbatch; returns the job id

Pure functions build the script and the manifests as text and data from small frozen
settings; only :func:`submit` runs anything (sbatch). Nothing here prints; problems raise
:class:`tuner.errors.LaunchError` (or StorageError for the URL), one line naming the fix.
Every task or pod runs one ``tuner worker``; the study itself lives in its database.
"""

from tuner.launch.common import Resources, require_command, shared_storage, tuner_command
from tuner.launch.slurm import SlurmSettings, submit
from tuner.launch.slurm import script as slurm_script

__all__ = [
    "Resources",
    "SlurmSettings",
    "require_command",
    "shared_storage",
    "slurm_script",
    "submit",
    "tuner_command",
]
