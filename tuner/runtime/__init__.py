"""The runtime: the loop of one worker (ask for a trial, run it, tell its outcome, check in),
what a worker takes and tells, local worker processes (settings serialised in the environment,
never as CLI flags; one GPU each), and the stopping rules a worker reads between trials. It
sees schedules only through their interface.

- :mod:`~tuner.runtime.worker`: the trial loop of one worker;
- :mod:`~tuner.runtime.local`: K local worker processes;
- :mod:`~tuner.runtime.stopping`: when a study stops (trials, time, patience, the grid, the
  terminator)."""
