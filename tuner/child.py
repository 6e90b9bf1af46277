"""Entry point of a local worker process started by ``tuner run --workers K``
(:mod:`tuner.local`): its study and settings arrive as JSON in the environment. Like the
CLI, it turns a :class:`~tuner.errors.TunerError` into one line on stderr and an exit code,
and exits at once when one of its trials hangs (``--stall-timeout``)."""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

from tuner.errors import TunerError


def main() -> None:
    from tuner import api
    from tuner.local import CHILD_ENV
    from tuner.settings import Settings

    job = json.loads(os.environ.pop(CHILD_ENV))
    api.quiet_logging()
    try:
        api.work(job["study"], Settings.from_json(job["settings"]),
                 worker_index=job["worker_index"], local_workers=job.get("local_workers", 1),
                 on_stall=_exit_stalled)
    except TunerError as e:
        sys.stderr.write(f"error: worker {job['worker_index']}: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _exit_stalled(e: TunerError) -> NoReturn:
    """The worker failed the hung trial, queued its retry and said so; the main thread is
    stuck in the training loop: exit from the heartbeat thread with the error's code."""
    sys.stderr.flush()
    os._exit(e.exit_code)


if __name__ == "__main__":
    main()
