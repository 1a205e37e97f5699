"""`actcache serve`: load the model once, resume unfinished jobs, then answer HTTP until stopped."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from actcache.cache_builder.settings import BuildSettings

from .users import UsersError, load_users

__all__ = ["serve", "jobs_folder"]


def jobs_folder(cache: str | Path) -> Path:
    """Where a cache's job records live: beside it, so the cache folder holds only what `open_cache` reads."""
    cache = Path(cache)
    return cache.with_name(cache.name + ".jobs")


def serve(settings: BuildSettings, users_path: str | Path, host: str, port: int, max_body_bytes: int) -> None:
    """Validate, load the model, bind, print the base URL as the first stdout line, and serve forever."""
    import uvicorn
    from actcache.cache_builder.build import parse_layers
    from actcache.cache_builder.capture import check_hooks
    from actcache.cache_builder.model_source import load_model, resolve_model
    from actcache.cache_builder.transformers_quiet import quiet_transformers
    from actcache.storage.devices import resolve_device

    from .app import create_app
    from .jobs import JobRunner

    if not load_users(users_path):
        raise UsersError(f"{users_path} has no users: add one with `actcache user add NAME --users {users_path}`")
    check_hooks(settings.hooks)
    device = resolve_device(settings.device)
    with quiet_transformers(True):
        model = load_model(resolve_model(settings.model), settings.dtype, device)
    parse_layers(settings.layers, model.config.num_hidden_layers)  # a bad --layers is refused before serving
    runner = JobRunner(jobs_folder(settings.out), settings, model)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog from here on, so the printed URL is usable at once
    bound_port = sock.getsockname()[1]
    print(f"http://{f'[{host}]' if ':' in host else host}:{bound_port}", flush=True)
    print(f"serving {settings.model} into {settings.out} (jobs in {runner.folder}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    runner.start()
    app = create_app(runner, users_path, max_body_bytes)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
