"""Fixtures: the real migrations on the real database (SQLite, or PostgreSQL when
TOGETHER_TEST_DATABASE_URL is set), a database and data folder of its own for each test.

The fixtures live in tests/fixtures/ (one plugin per concern); see its package docstring.
"""

from __future__ import annotations

pytest_plugins = [
    # Before app: app imports it (the storage backend of its settings).
    "tests.fixtures.seaweedfs",
    "tests.fixtures.databases",
    "tests.fixtures.app",
    "tests.fixtures.snapshots",
]
