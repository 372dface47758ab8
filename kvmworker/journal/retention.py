"""What the journal drops, and when: by age, by size (``max_mb``), and refused records by count.

Run on the writer's connection (``GroupWriter``), in order with the records: a prune never overtakes a
record handed over before it.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

log = logging.getLogger("kvmworker.journal")

_EXPIRED = "(expires_at IS NULL OR expires_at < ?)"


@dataclass(frozen=True)
class Retention:
    max_age_s: float
    max_bytes: int
    max_refused: int


def prune(db: sqlite3.Connection, retention: Retention, now: float) -> int:
    """Drop what is older than the age limit, then the oldest answered until they fit the size limit.

    Refused records have their own bound (``max_refused``) and do not count toward the size; a row
    whose signature could still verify (``expires_at`` ahead) is never dropped. Each statement is a
    transaction of its own (the checkpoint at the end cannot run inside one).
    """
    removed = trim_refused(db, retention.max_refused)
    removed += db.execute(
        f"DELETE FROM entries WHERE received_at < ? AND state != 'running' AND {_EXPIRED}",
        (now - retention.max_age_s, now),
    ).rowcount
    while (excess := answered_bytes(db) - retention.max_bytes) > 0:
        # As many of the oldest rows as the excess is a share of the whole, and a few more.
        rows = db.execute("SELECT count(*) FROM entries WHERE state != 'refused'").fetchone()[0]
        batch = 1 + rows * excess // max(answered_bytes(db), 1)
        deleted = db.execute(
            f"""DELETE FROM entries WHERE msg_id IN (SELECT msg_id FROM entries
                WHERE state NOT IN ('running', 'refused') AND {_EXPIRED} ORDER BY received_at LIMIT ?)""",
            (now, batch),
        ).rowcount
        removed += deleted
        if not deleted:
            log.warning(
                "journal: %.1f MB over journal_max_mb, all of it commands whose signatures are still valid "
                "or still running; they are kept until then",
                excess / 1024 / 1024,
            )
            break
    if removed:
        db.execute("PRAGMA incremental_vacuum")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return removed


def trim_refused(db: sqlite3.Connection, max_refused: int) -> int:
    """Only the newest ``max_refused`` refused records are kept."""
    return db.execute(
        """DELETE FROM entries WHERE msg_id IN (SELECT msg_id FROM entries WHERE state = 'refused'
           ORDER BY received_at DESC LIMIT -1 OFFSET ?)""",
        (max_refused,),
    ).rowcount


def answered_bytes(db: sqlite3.Connection) -> int:
    """The live data less the refused records: what ``max_mb`` bounds."""
    refused = db.execute("SELECT coalesce(sum(size_bytes), 0) FROM entries WHERE state = 'refused'")
    return live_bytes(db) - refused.fetchone()[0]


def live_bytes(db: sqlite3.Connection) -> int:
    page_size, pages, free = (
        db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count", "freelist_count")
    )
    return page_size * (pages - free)
