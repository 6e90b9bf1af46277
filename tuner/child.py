"""Entry point of a local worker process started by ``tuner run --workers K``
(:mod:`tuner.local`): its study and settings arrive as JSON in the environment. Like the
CLI, it turns a :class:`~tuner.errors.TunerError` into one line on stderr and an exit code."""

from __future__ import annotations

import json
import os
import sys

from tuner.errors import TunerError


def main() -> None:
    from tuner import api
    from tuner.local import CHILD_ENV
    from tuner.settings import Settings

    job = json.loads(os.environ.pop(CHILD_ENV))
    api.quiet_logging()
    try:
        api.work(job["study"], Settings.from_json(job["settings"]),
                 worker_index=job["worker_index"], local_workers=job.get("local_workers", 1))
    except TunerError as e:
        sys.stderr.write(f"error: worker {job['worker_index']}: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
