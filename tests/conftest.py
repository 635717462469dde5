"""Shared fixtures. Keep this file small: helpers that tests import live in `tests/helpers_*.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def pool_paths(tmp_path: Path) -> tuple[Path, Path]:
    """(db_path, secrets_path) of a pool that does not exist yet, in a private temp dir."""
    return tmp_path / "data" / "pool.db", tmp_path / "data" / "pool.secrets"


@pytest.fixture
def pool(pool_paths: tuple[Path, Path]) -> Iterator[tuple[object, object]]:
    """An initialised (db, secrets_store) pair on `pool_paths`, closed afterwards."""
    from accountpool.storage import schema
    from accountpool.storage.secrets_store import SecretsStore

    db_path, secrets_path = pool_paths
    db = schema.connect(db_path)
    secrets = SecretsStore(secrets_path)
    try:
        yield db, secrets
    finally:
        secrets.close()
        db.close()


@pytest.fixture
def sim() -> Iterator[object]:
    """A simulated OpenAI/Codex upstream on 127.0.0.1, fresh for each test."""
    from harness import running_sim

    yield from running_sim()


@pytest.fixture
def pool_env(tmp_path: Path, sim: object) -> object:
    """A pool in tmp_path whose accounts point at `sim`, with one client key (`.client_key`)."""
    from harness import Pool

    return Pool(tmp_path, sim)  # type: ignore[arg-type]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh, migrated `pool.db` (closed again), for tests of what writes into it."""
    from accountpool.storage import schema

    path = tmp_path / "pool.db"
    schema.connect(path).close()
    return path


@pytest.fixture
def writer(db_path: Path) -> Iterator[object]:
    """The metrics writer thread on `db_path`, flushing every 50 ms, stopped (drained) afterwards."""
    from accountpool.storage.metrics_writer import MetricsWriter

    w = MetricsWriter(db_path, flush_interval=0.05)
    w.start()
    yield w
    w.stop()
