"""The embedded store's schema: tables, the view, upgrades from older files and the SQL the store runs.

Versions: 1 had primary keys on observations and latest, latest upserted in every write; 2 a primary key on
events; 3 observations as one table of text and numbers; 4 (now) series and samples behind a view, and no
key but meta's (storage/duckdb.py tells why; docs/storage.md has the figures).
"""

from __future__ import annotations

from typing import Final

import duckdb

from devices.contract import Observation

# 1: primary keys on observations and latest, latest upserted in every write; 2: a primary key on events;
# 3: observations as one table of text and numbers.
SCHEMA_VERSION: Final = 4

# Observation columns in the contract's field order.
OBS_COLUMNS: Final = Observation.__struct_fields__

# Observations as schemas 2 and 3 kept them (every text column in every row); the upgrades pass through it.
OBSERVATIONS_V3: Final = """CREATE TABLE IF NOT EXISTS {name} (
        device VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        metric VARCHAR NOT NULL,
        code INTEGER NOT NULL,
        value DOUBLE NOT NULL,
        unit VARCHAR NOT NULL,
        bed VARCHAR,
        device_ts BIGINT,
        flags INTEGER NOT NULL,
        containment VARCHAR,
        wb BIGINT)"""
# 1-minute rollups of observations past raw retention (storage.base explains the rules). No key (DuckDB would keep
# its index in memory, about 10 bytes a row: 14 million rows a day at 10,000 series): a minute that receives rows
# after it was rolled up gets a second, partial row, and every read sums a minute's rows (as it sums a bucket's).
ROLLUPS: Final = """CREATE TABLE IF NOT EXISTS rollup_1m (
        device VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        bed_key VARCHAR NOT NULL,
        bed VARCHAR,
        minute BIGINT NOT NULL,
        v_sum DOUBLE NOT NULL,
        v_min DOUBLE NOT NULL,
        v_max DOUBLE NOT NULL,
        n BIGINT NOT NULL)"""

# Schema 4: the text of each series once, numbered (storage.duckdb_codes), and the samples by series number;
# the view puts them back together, so every query reads "observations" as before.
SERIES: Final = """CREATE TABLE IF NOT EXISTS series (
        sid BIGINT NOT NULL,
        device VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        code INTEGER NOT NULL,
        unit VARCHAR NOT NULL,
        bed VARCHAR,
        containment VARCHAR)"""
SAMPLES: Final = """CREATE TABLE IF NOT EXISTS samples (
        sid BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        value DOUBLE NOT NULL,
        device_ts BIGINT,
        flags INTEGER NOT NULL,
        wb BIGINT)"""
OBSERVATIONS_VIEW: Final = (
    "CREATE VIEW IF NOT EXISTS observations AS SELECT s.device, s.stream, o.seq, o.ts, s.metric, s.code, o.value, "
    "s.unit, s.bed, o.device_ts, o.flags, s.containment, o.wb FROM samples o JOIN series s ON o.sid = s.sid"
)
# Rows of the full observation layout (a view or table ``{rows}``: bulk loads, upgrades) into series and samples:
# first a number for each series not yet in ``series``, then the samples, ``wb`` from ``{wb}``.
ADD_SERIES: Final = (
    "INSERT INTO series SELECT (SELECT coalesce(max(sid), -1) FROM series) + row_number() OVER (), * FROM ("
    "SELECT DISTINCT device, stream, metric, code, unit, bed, containment FROM {rows} "
    "EXCEPT SELECT device, stream, metric, code, unit, bed, containment FROM series)"
)
ADD_SAMPLES: Final = (
    "INSERT INTO samples SELECT s.sid, i.seq, i.ts, i.value, i.device_ts, i.flags, {wb} FROM {rows} i JOIN series s "
    "ON i.device = s.device AND i.stream = s.stream AND i.metric = s.metric AND i.code = s.code "
    "AND i.unit = s.unit AND i.bed IS NOT DISTINCT FROM s.bed AND i.containment IS NOT DISTINCT FROM s.containment"
)


def insert_rows(conn: duckdb.DuckDBPyConnection, rows: str, wb: str = "NULL") -> None:
    """Insert observation rows of the full layout (the table or view ``rows``), as a bulk load does.

    ``wb`` is the SQL for each row's batch number: NULL (the default) for rows written past the store,
    which the next open adopts (see the module's docstring).
    """
    conn.execute(ADD_SERIES.format(rows=rows)).fetchall()
    conn.execute(ADD_SAMPLES.format(rows=rows, wb=wb)).fetchall()


# The newest observation per (device, metric, bed) as of batch snapshot_wb; bed_key is '' for no bed and
# 'b:' + bed otherwise (schema 1 had it as a key column, which cannot be NULL).
LATEST: Final = """CREATE TABLE IF NOT EXISTS {name} (
        device VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        bed_key VARCHAR NOT NULL,
        bed VARCHAR,
        stream VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        code INTEGER NOT NULL,
        value DOUBLE NOT NULL,
        unit VARCHAR NOT NULL,
        flags INTEGER NOT NULL)"""
# The stored seqs of each stream as of batch snapshot_wb, one row per run [lo, hi].
RANGES: Final = """CREATE TABLE IF NOT EXISTS {name} (
        device VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        lo BIGINT NOT NULL,
        hi BIGINT NOT NULL)"""
# Every item that is not an observation, as its contract JSON; no primary key (DuckDB would keep its index
# in memory outside the buffer pool, 8-12 bytes per event stored, until the file is reopened): the event key
# index de-duplicates, as for observations.
EVENTS: Final = """CREATE TABLE IF NOT EXISTS {name} (
        device VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        kind VARCHAR NOT NULL,
        ts BIGINT NOT NULL,
        bed VARCHAR,
        body BLOB NOT NULL,
        wb BIGINT)"""
EVT_COLUMNS: Final = ("device", "stream", "seq", "kind", "ts", "bed", "body")
SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    SERIES,
    SAMPLES,
    OBSERVATIONS_VIEW,
    LATEST.format(name="latest"),
    RANGES.format(name="seq_ranges"),
    # The stored keys of the events, likewise (events are a key space of their own, as in every store).
    RANGES.format(name="event_ranges"),
    EVENTS.format(name="events"),
    ROLLUPS,
    "CREATE SEQUENCE IF NOT EXISTS quarantine_id",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id BIGINT NOT NULL DEFAULT nextval('quarantine_id'),
        ts BIGINT NOT NULL,
        source VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        raw BLOB NOT NULL)""",
)

# Schema 1 -> 2, one way, in the opening transaction: observations and latest are copied into tables
# without primary keys (DuckDB cannot drop one), observations with wb NULL so that opening adopts them.
MIGRATE_FROM_1: Final = (
    "ALTER TABLE observations ADD COLUMN IF NOT EXISTS containment VARCHAR",  # files older than that column
    OBSERVATIONS_V3.format(name="observations_v2"),
    f"INSERT INTO observations_v2 ({', '.join(OBS_COLUMNS)}) SELECT {', '.join(OBS_COLUMNS)} FROM observations",
    "DROP TABLE observations",
    "ALTER TABLE observations_v2 RENAME TO observations",
    LATEST.format(name="latest_v2"),
    "INSERT INTO latest_v2 SELECT device, metric, bed_key, bed, stream, seq, ts, code, value, unit, flags FROM latest",
    "DROP TABLE latest",
    "ALTER TABLE latest_v2 RENAME TO latest",
)

# Schema 2 -> 3, likewise: events are copied into a table without a primary key, with wb NULL (adopted).
MIGRATE_FROM_2: Final = (
    EVENTS.format(name="events_v3"),
    f"INSERT INTO events_v3 ({', '.join(EVT_COLUMNS)}) SELECT {', '.join(EVT_COLUMNS)} FROM events",
    "DROP TABLE events",
    "ALTER TABLE events_v3 RENAME TO events",
)

# Schema 3 -> 4: observations become series and samples (their batch numbers kept) behind a view of the old name.
MIGRATE_FROM_3: Final = (
    "ALTER TABLE observations RENAME TO observations_v3",
    SERIES,
    SAMPLES,
    ADD_SERIES.format(rows="observations_v3"),
    ADD_SAMPLES.format(rows="observations_v3", wb="i.wb"),
    "DROP TABLE observations_v3",
)
# And rollups without their key (files of schema 1 may have no rollups yet).
UNKEY_ROLLUPS: Final = (
    "ALTER TABLE rollup_1m RENAME TO rollup_1m_v3",
    ROLLUPS,
    "INSERT INTO rollup_1m SELECT * FROM rollup_1m_v3",
    "DROP TABLE rollup_1m_v3",
)

LATEST_COLUMNS: Final = (
    "device",
    "metric",
    "bed_key",
    "bed",
    "stream",
    "seq",
    "ts",
    "code",
    "value",
    "unit",
    "flags",
)
NEWEST: Final = (
    f"SELECT {', '.join(LATEST_COLUMNS)} FROM (SELECT *, CASE WHEN bed IS NULL THEN '' ELSE 'b:' || bed END "
    "AS bed_key FROM observations{where}) "
    "QUALIFY row_number() OVER "
    "(PARTITION BY device, metric, bed_key ORDER BY ts DESC, stream DESC, seq DESC) = 1"
)
# Recompute the latest table from the observations (after a bulk load past the store).
REBUILD_LATEST: Final = (
    f"DELETE FROM latest; INSERT INTO latest ({', '.join(LATEST_COLUMNS)}) " + NEWEST.format(where="")
)
# Runs of consecutive seqs per stream ("gaps and islands"): seq - row_number() is constant along a run.
ISLANDS: Final = (
    "SELECT device, stream, min(seq), max(seq) FROM (SELECT device, stream, seq, "
    "seq - row_number() OVER (PARTITION BY device, stream ORDER BY seq) AS island FROM {table}{where}) "
    "GROUP BY device, stream, island"
)
INSERT_EVT: Final = (
    f"INSERT INTO events ({', '.join(EVT_COLUMNS)}, wb) SELECT {', '.join(EVT_COLUMNS)}, $wb FROM incoming_evt"
)

# Roll raw observations before the cutoff up into minutes (a minute rolled up before gets a partial row more).
ROLL_UP: Final = (
    "INSERT INTO rollup_1m (device, metric, bed_key, bed, minute, v_sum, v_min, v_max, n) "
    "SELECT device, metric, CASE WHEN bed IS NULL THEN '' ELSE 'b:' || bed END AS bed_key, any_value(bed), "
    "ts - ts % 60000 AS minute, sum(value), min(value), max(value), count(*) "
    "FROM observations WHERE ts < ? GROUP BY device, metric, bed_key, minute"
)
