"""Launch a study's workers on the schedulers clusters already run.

    from tuner import launch

    settings = launch.SlurmSettings(study="mnist_mlp", storage=url, folder="tuner-slurm",
                                    workers=8, resources=launch.Resources(gpus=1, cpus=4))
    job_id = launch.submit(launch.slurm_script(settings), settings)   # runs sbatch
    docs = launch.manifests(launch.K8sSettings(study="mnist_mlp", image="reg/tuner:1",
                                               storage=launch.StorageRef(url=url)))
    print(launch.to_yaml(docs))

Pure functions build the script and the manifests as text and data from small frozen
settings; only :func:`submit` runs anything (sbatch). Nothing here prints; problems raise
:class:`tuner.errors.LaunchError` (or StorageError for the URL), one line naming the fix.
Every task or pod runs one ``tuner worker``; the study itself lives in its database.
"""

from tuner.launch.common import (
    Resources,
    out_folder,
    require_command,
    shareable_url,
    tuner_command,
)
from tuner.launch.k8s import Claim, K8sSettings, StorageRef, manifests, to_yaml
from tuner.launch.k8s import write as write_manifests
from tuner.launch.slurm import SlurmSettings, submit
from tuner.launch.slurm import script as slurm_script

__all__ = [
    "Claim",
    "K8sSettings",
    "Resources",
    "SlurmSettings",
    "StorageRef",
    "manifests",
    "out_folder",
    "require_command",
    "shareable_url",
    "slurm_script",
    "submit",
    "to_yaml",
    "tuner_command",
    "write_manifests",
]
