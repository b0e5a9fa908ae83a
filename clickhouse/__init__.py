"""ClickHouse: the store, every query, the migrations and their runner.

The defaults of a local run live here, where the functions' settings and the migration runner
both read them without importing the driver.
"""

from pathlib import Path

__all__ = ["DEFAULT_DATABASE", "LOCAL_DSN"]

# The embedded engine's data directory of a local run, in the checkout's git-ignored .local/.
LOCAL_DSN = f"chdb://{Path(__file__).resolve().parents[1] / '.local' / 'clickhouse'}"
DEFAULT_DATABASE = "movies"
