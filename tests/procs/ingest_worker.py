"""An ingest worker process into a SQLite store, for kill -9: `python -m tests.procs.ingest_worker STORE URL`."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from devices.bus import BrokerAddress
from ingest.service import Ingest
from storage.sqlite import SqliteStore
from wardlink.config import load


async def main(store_path: Path, url: str) -> None:
    store = SqliteStore(store_path)
    await Ingest(load(env={}).site, store, BrokerAddress.parse(url)).run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
