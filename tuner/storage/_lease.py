"""One reaper per study at a time: a lease row with an expiry, so the cost of scanning for
stale trials stays flat however many workers there are.

    tuner_leases(name PK, holder, expires)

Each worker's heartbeat thread tries to take (or renew) the study's reaper lease every
interval; only the holder fails stale trials. A holder that dies stops renewing, and the
next worker to try after the expiry takes the lease over. Expiry times are the workers'
wall clocks (unix time): machines whose clocks are further apart than the lease's length
may reap twice at once, which is safe (failing a trial is atomic), only wasted work.
"""

from __future__ import annotations

import os
import platform
import secrets
import time

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

_metadata = sa.MetaData()
leases = sa.Table(
    "tuner_leases",
    _metadata,
    sa.Column("name", sa.String(512), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("expires", sa.Double, nullable=False),  # unix time
)


def create_table(conn: sa.Engine | sa.Connection) -> None:
    _metadata.create_all(conn, checkfirst=True)


def holder_id() -> str:
    return f"{platform.node()}:{os.getpid()}:{secrets.token_hex(3)}"


class Lease:
    """The lease ``name`` (a study's reaper) as seen by ``holder``."""

    def __init__(self, engine: sa.Engine, name: str, seconds: float, holder: str | None = None):
        self.engine, self.name, self.seconds = engine, name, seconds
        self.holder = holder or holder_id()

    def take(self) -> bool:
        """Take or renew the lease; False while another live holder has it."""
        now = time.time()
        with self.engine.begin() as conn:
            taken = conn.execute(
                leases.update()
                .where(leases.c.name == self.name)
                .where(sa.or_(leases.c.holder == self.holder, leases.c.expires < now))
                .values(holder=self.holder, expires=now + self.seconds)
            ).rowcount
        if taken:
            return True
        try:
            with self.engine.begin() as conn:
                conn.execute(leases.insert().values(name=self.name, holder=self.holder,
                                                    expires=now + self.seconds))
        except sa_exc.IntegrityError:
            return False  # the row exists: someone else holds it
        return True

    def release(self) -> None:
        """Hand the lease over at once (a worker that stops cleanly)."""
        with self.engine.begin() as conn:
            conn.execute(leases.update().where(leases.c.name == self.name)
                         .where(leases.c.holder == self.holder).values(expires=0.0))
