"""The asyncio client: the one hand-written client, and the source of ``_sync/``.

``make generate`` rewrites every module here but ``glue`` into ``_sync/`` with
unasync (``scripts/generate_sync_client.py``): edit these, never the copies.
"""
