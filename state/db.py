"""Open the state database (SQLite file or PostgreSQL), migrate it to head, and hand out the repositories."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .alarm_settings import AlarmSettings
from .alerts import Alerts
from .assets import Assets
from .assignments import Assignments
from .audit import Audit
from .credentials import Credentials
from .errors import StateError, translated
from .fleet import Fleet
from .patients import Patients
from .registry import Registry
from .sessions import WRITE_OPTION, Sessions
from .waste import Waste

log = logging.getLogger(__name__)

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK: Final = 0x5741524C494E4B  # "WARLINK": the PostgreSQL advisory lock key held while migrating
CONNECT_TIMEOUT_S: Final = 5
SQLITE_BUSY_TIMEOUT_S: Final = 10


def default_url(data_dir: Path) -> str:
    """The embedded default: ``state.db`` in the data directory, which is made private (0700): the database holds
    password hashes, and the directory the token key, outboxes and spool."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if data_dir.stat().st_mode & 0o077:
        try:
            data_dir.chmod(0o700)
        except PermissionError:
            log.warning("data directory %s is readable by others and not ours to change: restrict it to the "
                        "service user", data_dir)
    return f"sqlite:///{(data_dir / 'state.db').resolve()}"


def _private_database(path: Path) -> None:
    """Create the SQLite file (and its directory) readable by its owner only, and tighten an existing one; SQLite
    gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_mode & 0o077:
                try:
                    file.chmod(0o600)
                except PermissionError:
                    log.warning("%s is readable by others and not ours to change: restrict it", file)


class State:
    """The relational state: one engine and one repository per concern; call :meth:`close` at the end."""

    def __init__(self, engine: Engine) -> None:
        """Wrap a migrated engine."""
        self.engine = engine
        self.sessions = Sessions(engine)
        self.registry = Registry(self.sessions)
        self.patients = Patients(self.sessions)
        self.assignments = Assignments(self.sessions)
        self.alerts = Alerts(self.sessions)
        self.alarm_settings = AlarmSettings(self.sessions)
        self.assets = Assets(self.sessions)
        self.waste = Waste(self.sessions)
        self.audit = Audit(self.sessions)
        self.credentials = Credentials(self.sessions)
        self.fleet = Fleet(self.sessions)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def open_state(url: str) -> State:
    """Create the engine for ``sqlite:///path`` or ``postgresql+psycopg://...``, migrate to head, return the state.

    Raises :class:`StateError` (retryable when the database cannot be reached) and ``ValueError`` for a
    URL that names neither SQLite nor PostgreSQL.
    """
    engine = _engine(url)
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return State(engine)


def _engine(url: str) -> Engine:
    """An engine with the dialect's settings: WAL, foreign keys and immediate write transactions on SQLite."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"state url {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("state url: SQLite needs a file (sqlite:///path/state.db)")
        _private_database(Path(parsed.database))
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    raise ValueError(f"state url: unsupported database {backend!r} (use sqlite:/// or postgresql+psycopg://)")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per connection: WAL, foreign keys on, and let SQLAlchemy (not the driver) begin transactions."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    """Writers take SQLite's write lock at BEGIN, so a read-then-write never fails on a stale snapshot."""
    immediate = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def alembic_config(connection: Connection) -> Config:
    """An Alembic configuration that migrates over ``connection`` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head, one process at a time (advisory lock on PostgreSQL, a lock file on SQLite)."""
    with translated(f"migrating {engine.url.render_as_string(hide_password=True)}"), _migration_lock(engine) as conn:
        command.upgrade(alembic_config(conn), "head")
        conn.commit()
    log.info("state schema at head on %s", engine.url.render_as_string(hide_password=True))


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection held under the migration lock."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            conn.commit()  # the session-level lock outlives this transaction
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                conn.commit()
        return
    database = engine.url.database
    if database is None:  # _engine refuses this; kept for the type checker
        raise StateError("SQLite state needs a file")
    try:
        lock_file = Path(database + ".migrate-lock").open("a")  # noqa: SIM115  (held across the yield)
    except OSError as exc:
        raise StateError(f"state lock file beside {database}: {exc}", retryable=True) from exc
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        with engine.connect() as conn:
            yield conn
