"""The sync client, generated from ``_async/`` by ``make generate``; ``glue`` is hand-written."""
