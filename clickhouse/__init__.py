"""ClickHouse: the store, every query, the migrations and their runner.

The defaults live here, where the functions' settings (the database) and the migration runner
(the database, and the local run's embedded engine) read them without importing the driver.
"""

from pathlib import Path

__all__ = ["DEFAULT_DATABASE", "LOCAL_DSN"]

# The embedded engine's data directory of a local run, in the checkout's git-ignored .local/.
LOCAL_DSN = f"chdb://{Path(__file__).resolve().parents[1] / '.local' / 'clickhouse'}"
DEFAULT_DATABASE = "movies"
