"""``aim-video serve`` on the driver: check what is asked for, start the Serve application, serve
until stopped.

The references are looked up in the registry and the port is tried before Ray starts, so a typo
or a taken port costs one line, not a cluster start and a replica that retries. The application
runs on the cluster :func:`~pipelines.runtime.ensure_ray` gives (``RAY_ADDRESS``, or a private
local one); the proxy listens on ``serve.host`` (127.0.0.1 unless told otherwise). Ctrl-C or
SIGTERM (``ray job stop``) deletes the application.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines import console
from pipelines.serving.pool import current_version
from pipelines.serving.settings import ServeConfig, ServedRef, parse_served
from pipelines.tracking.references import ModelReferenceError

APP_NAME = "aim-video"


class ServeError(RuntimeError):
    """The application cannot start here (a taken port, a replica that failed); says why."""


def check_registry(refs: list[ServedRef]) -> dict[str, str]:
    """The version each reference names now; a missing model, alias or version fails here."""
    client, versions = MlflowClient(), {}
    for ref in refs:
        try:
            versions[ref.name] = current_version(client, ref)
            client.get_model_version(ref.name, versions[ref.name])
        except MlflowException as exc:
            raise ModelReferenceError(f"{ref.uri}: not in the registry at "
                                      f"{mlflow.get_registry_uri()} ({exc.message})") from None
    return versions


def check_port(host: str, port: int) -> None:
    """Fail now, naming the setting, if ``host:port`` cannot be listened on here."""
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        raise ServeError(f"serve.port: cannot listen on {host}:{port} ({exc.strerror}); choose "
                         f"another with --port") from None


def serve_app(refs: list[ServedRef], settings: ServeConfig, tracking_uri: str,
              registry_uri: str | None = None, *, name: str = APP_NAME,
              route_prefix: str = "/") -> str:
    """Start (or update) the application on the connected cluster; returns its base URL."""
    from ray import serve

    from pipelines.serving.deployment import AimVideoServer

    serve.start(http_options={"host": settings.host, "port": settings.port})
    actor = {"num_cpus": settings.replica_cpus}
    if settings.replica_gpus:
        actor["num_gpus"] = settings.replica_gpus
    app = AimVideoServer.options(num_replicas=settings.replicas, ray_actor_options=actor,
                                 max_ongoing_requests=settings.max_ongoing_requests
                                 ).bind(refs, settings, tracking_uri, registry_uri)
    try:
        serve.run(app, name=name, route_prefix=route_prefix)
    except RuntimeError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise ServeError(f"the serving replica did not start: {lines[-1] if lines else exc}"
                         ) from None
    return f"http://{settings.host}:{settings.port}{route_prefix.rstrip('/')}"


def wait_until_stopped() -> None:
    """Sleep until Ctrl-C or SIGTERM."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.say("stopping")


def run_serve(texts: list[str], settings: ServeConfig) -> int:
    """The command: serve ``texts`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``)."""
    from ray import serve

    from pipelines.runtime import ensure_ray, private_sessions
    from pipelines.tracking.runs import configure

    refs = parse_served(texts)
    tracking_uri = configure()
    versions = check_registry(refs)
    if not os.environ.get("RAY_ADDRESS"):
        check_port(settings.host, settings.port)
    ensure_ray()
    registry_uri = mlflow.get_registry_uri()
    url = serve_app(refs, settings, tracking_uri,
                    registry_uri if registry_uri != tracking_uri else None)
    for ref in refs:
        console.say(f"{ref.uri:<40} version {versions[ref.name]}")
    console.say(f"POST {url}/v1/models/NAME:predict   (the video file as the body)")
    console.say(f"GET  {url}/v1/models")
    logs = [os.path.join(s, "logs", "serve") for s in private_sessions()]
    console.say(f"replica logs: {logs[0] if logs else 'the Ray dashboard, Serve view'}; "
                f"Ctrl-C stops")
    try:
        wait_until_stopped()
    finally:
        if os.environ.get("RAY_ADDRESS"):  # a private cluster goes whole with shutdown_ray
            serve.delete(APP_NAME)
    return 0
