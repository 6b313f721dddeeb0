"""Aliases followed without a restart: a replica looks its aliases up every ``serve.alias_poll_s``
and swaps in the version an alias moved to.

``aim-video models NAME --promote``, or ``MlflowClient().set_registered_model_alias`` directly,
moves ``@champion``; within a poll the replica loads the new version beside the old one (sharing
its backbone when it can), then replaces the entry in one assignment. A request holds the entry it
was admitted with, so requests in flight are answered by the old version and new ones by the new;
the change is logged (``models:/NAME@ALIAS: version 1 -> 2``) in the replica's Serve log. A version
that fails to load is logged once and skipped; the old one goes on serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import MutableMapping

from mlflow import MlflowClient

from pipelines.serving.pool import ModelPool, ServedModel, current_version

# Serve writes this logger to the replica's log file (logs/serve/replica_*.log in the session).
log = logging.getLogger("ray.serve")


class AliasWatcher:
    """Polls the registry for the served models that follow an alias; :meth:`poll` is one round."""

    def __init__(self, pool: ModelPool, models: MutableMapping[str, ServedModel],
                 interval_s: float) -> None:
        self.pool, self.models, self.interval_s = pool, models, interval_s
        self._failed: dict[str, str] = {}       # name -> the version that would not load
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aim-alias-watcher", daemon=True)

    def start(self) -> None:
        if any(m.ref.alias for m in self.models.values()):
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the watch goes on; the round is in the log
                log.exception("alias watch round failed")

    def poll(self) -> list[str]:
        """Look every alias up once and swap what moved; returns the names that changed."""
        client, changed = MlflowClient(), []
        for name, served in list(self.models.items()):
            if served.ref.alias is None:
                continue
            try:
                version = current_version(client, served.ref)
            except Exception as exc:  # noqa: BLE001 - a registry hiccup must not stop the watch
                log.warning("%s: alias lookup failed, still serving version %s (%s)",
                            served.ref.uri, served.version, exc)
                continue
            if version != served.version and self._failed.get(name) != version:
                changed += [name] if self._swap(name, served, version) else []
        return changed

    def _swap(self, name: str, served: ServedModel, version: str) -> bool:
        try:
            fresh = self.pool.load(served.ref, version)
        except Exception as exc:  # noqa: BLE001 - a bad version must not take the replica down
            self._failed[name] = version
            log.warning("%s: version %s does not load, still serving version %s (%s)",
                        served.ref.uri, version, served.version, exc)
            return False
        self.models[name] = fresh
        self._failed.pop(name, None)
        log.info("%s: version %s -> %s", served.ref.uri, served.version, version)
        return True
