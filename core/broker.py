"""kombu's SQLAlchemy transport (the embedded default broker, `sqla+sqlite:///…/broker.db`), made safe for
several processes creating the same queue row or tables at once.

The API, the worker and the reaper are separate processes; on a fresh broker database the first of them to
touch a queue creates its `kombu_queue` row. kombu's `Channel._get_or_create` looks the row up, and if it is
missing inserts it, guarded only by a lock *inside one process*. When the API publishes its first job while a
starting worker declares the same queue, both miss the row, both insert it, and the loser's commit fails with
`UNIQUE constraint failed: kombu_queue.name` (an IntegrityError kombu does not catch, and after which its
session refuses all work until rolled back). On the API's side that publish raises: the job stays `queued`
with no message (only the reaper would re-send it); on the worker's side its session is dead and it never
receives a message. `metadata.create_all` races the same way (`table kombu_queue already exists`).
kombu also swallows an OperationalError (a locked database) on that insert and goes on with a queue object
that was never stored. This transport takes the row the other process created, and raises what it did not
store, so that a publish either reaches the queue or fails visibly (and kombu's retry policy retries it).

Importing this module points kombu's `sqla` and `sqlalchemy` aliases here, so the documented broker URL
stays the same; core.queue (the producer, the worker's app) imports it before any connection is made.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy.exc import DBAPIError, IntegrityError


class Channel(kombu_sqla.Channel):  # type: ignore[misc]
    """kombu's channel; its queue lookup and schema creation tolerate another process doing the same."""

    def _open(self) -> Any:
        try:
            return super()._open()
        except DBAPIError:
            # Another process created the tables between create_all's check and its CREATE TABLE
            # ("table kombu_queue already exists"); nothing was cached, and a second pass finds them.
            # Any other failure raises again here.
            return super()._open()

    def _find_queue(self, queue: str) -> Any:
        return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).first()

    def _get_or_create(self, queue: str) -> Any:
        obj = self._find_queue(queue)
        if obj is not None:
            return obj
        with kombu_sqla._MUTEX:  # threads of this process; other processes are what the except handles
            obj = self._find_queue(queue)
            if obj is not None:
                return obj
            self.session.add(self.queue_cls(queue))
            try:
                self.session.commit()
            except IntegrityError:
                self.session.rollback()  # another process inserted this queue first: use its row
            except BaseException:
                self.session.rollback()  # e.g. a locked database: nothing stored, so say so
                raise
            obj = self._find_queue(queue)
        if obj is None:  # pragma: no cover - the row was inserted by us or by the process we lost to
            raise RuntimeError(f"broker queue {queue!r} was neither found nor created")
        return obj


class Transport(kombu_sqla.Transport):  # type: ignore[misc]
    """kombu's SQLAlchemy transport with the process-safe channel."""

    Channel = Channel


def install() -> None:
    """Make the `sqla+…` and `sqlalchemy+…` broker URLs use this transport in this process."""
    for alias in ("sqla", "sqlalchemy"):
        TRANSPORT_ALIASES[alias] = f"{__name__}:Transport"


install()
