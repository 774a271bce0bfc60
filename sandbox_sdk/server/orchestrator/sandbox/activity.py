"""Activity: what postpones an environment's idle expiry, kept in memory and saved lazily."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time

from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.runtime import Runtime

log = logging.getLogger(__name__)

_ACTIVITY_SAVE_INTERVAL_SECONDS = 1.0


class Activity:
    """Records commands and file calls as activity, and saves it at most once a second."""

    def __init__(self, environments: LiveEnvironments) -> None:
        self._environments = environments

    def touch(self, environment_id: str) -> None:
        """Records activity, which postpones idle expiry.

        A live environment's activity is kept in memory (which the idle reaper
        and reads of the environment use) and saved at most once a
        second, and on every reaper tick: a database write per command cost
        more than starting the command.
        """
        now = time.time()
        runtime = self._environments.runtimes.get(environment_id)
        if runtime is None:
            with contextlib.suppress(sqlite3.Error):
                self._environments.store.record_activity(environment_id, now)
            return
        runtime.last_activity = max(runtime.last_activity, now)
        if now - runtime.saved_activity >= _ACTIVITY_SAVE_INTERVAL_SECONDS:
            self.save(environment_id, runtime)

    def save(self, environment_id: str, runtime: Runtime) -> None:
        """Saves the activity kept in memory; best effort, so that a read or a command
        never fails for want of a database write (a full disk): memory stays right."""
        if runtime.last_activity > runtime.saved_activity:
            try:
                self._environments.store.record_activity(environment_id, runtime.last_activity)
            except sqlite3.Error as error:
                log.warning("could not save the activity of %s: %s", environment_id, error)
                return
            runtime.saved_activity = runtime.last_activity
