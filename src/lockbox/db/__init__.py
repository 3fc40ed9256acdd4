"""Storage: engines for SQLite and PostgreSQL, the unit of work and the group committer."""

from lockbox.db.base import Base, UTCDateTime, new_id, utcnow
from lockbox.db.engine import Database
from lockbox.db.uow import after_commit, publish, runtime_of

__all__ = ["Base", "Database", "UTCDateTime", "after_commit", "new_id", "publish", "runtime_of", "utcnow"]
