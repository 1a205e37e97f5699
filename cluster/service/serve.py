"""`actcache serve`: load the model once (in this process, or as Ray pipeline stages), resume unfinished jobs,
then answer HTTP until stopped."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from actcache.cache_builder.settings import BuildSettings

from .users import UsersError, load_users

__all__ = ["RayOptions", "serve"]


@dataclass(frozen=True)
class RayOptions:
    """`--stages S --replicas R --address RAY`: run the model as R resident S-stage Ray pipelines."""

    stages: int
    replicas: int = 1
    address: str | None = None


def serve(settings: BuildSettings, users_path: str | Path, host: str, port: int, max_body_bytes: int,
          ray: RayOptions | None = None) -> None:
    """Validate, load the model, bind, print the base URL as the first stdout line, and serve forever."""
    import uvicorn
    from actcache.cache_builder.build import open_build
    from actcache.cache_builder.model_source import load_model
    from actcache.cache_builder.transformers_quiet import quiet_transformers
    from actcache.storage.devices import resolve_device

    from .app import create_app
    from .engines import RayEngine, local_engine
    from .job_store import JobStore
    from .jobs import JobRunner

    if not load_users(users_path):
        raise UsersError(f"{users_path} has no users: add one with `actcache user add NAME --users {users_path}`")
    store = JobStore(str(settings.out))
    with quiet_transformers(True):
        prepared, _ = open_build(settings)  # a bad capture spec is refused here, before anything is loaded
        engine = None
        if ray is None:
            device = resolve_device(settings.device)
            runners = local_engine(prepared, load_model(prepared.model, settings.dtype, device))
        else:
            engine = RayEngine(prepared, ray.stages, ray.replicas, ray.address)
            runners = engine.runners()
    runner = JobRunner(store, prepared, runners)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog from here on, so the printed URL is usable at once
    bound_port = sock.getsockname()[1]
    print(f"http://{f'[{host}]' if ':' in host else host}:{bound_port}", flush=True)
    where = "in this process" if ray is None else f"on Ray, {ray.replicas} x {ray.stages} stage(s)"
    print(f"serving {settings.model} {where} into {settings.out} (jobs in {store.folder}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    runner.start()
    app = create_app(runner, users_path, max_body_bytes)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        runner.stop()  # the units in flight are committed; unfinished jobs resume with the next service
        prepared.writer.close()  # folds what the service committed, releases its claims
        if engine is not None:
            engine.shutdown()
