"""`actcache serve`, `actcache user add` and `actcache submit` (cheap to import: the work is imported lazily)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from actcache.cache_builder.settings import BuildSettings
from actcache.storage.hook_points import HOOKS_HELP

__all__ = ["register"]

_DEFAULT_MAX_BODY_MB = 64.0
TOKEN_ENV = "ACTCACHE_TOKEN"


def register(subparsers: Any) -> None:
    """Add the `serve`, `user` and `submit` subcommands."""
    defaults = BuildSettings(model="", corpus="", out="")
    serve = subparsers.add_parser("serve", help="keep a model resident and build the corpora users submit over HTTP "
                                                "into one shared cache (docs/SERVICE.md)")
    serve.add_argument("--model", required=True, help="model folder, .gguf file or a name in configs/models/")
    serve.add_argument("--cache", required=True, help="the shared cache every job builds into")
    serve.add_argument("--users", required=True, type=Path, help="users file made by `actcache user add`")
    serve.add_argument("--layers", default="all", help="decoder layers to capture: e.g. 8,15, -1 (the last) or all")
    serve.add_argument("--hooks", default=",".join(defaults.hooks), help=HOOKS_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; put a TLS proxy in front of any other")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (0: a free one); stdout's first line "
                                                             "is the base URL")
    serve.add_argument("--max-body-mb", type=float, default=_DEFAULT_MAX_BODY_MB,
                       help="largest corpus one request may send (larger: HTTP 413)")
    serve.add_argument("--batch-size", type=int, default=defaults.batch_size, help="documents per forward pass")
    serve.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens kept per document")
    serve.add_argument("--unit-tokens", type=int, default=defaults.unit_tokens,
                       help="tokens per commit unit: the most work a killed service redoes")
    serve.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16", "float16"],
                       help="compute dtype")
    serve.add_argument("--device", default=defaults.device, help="where the model runs: cpu, cuda, cuda:N or auto "
                                                                 "(without --stages)")
    serve.add_argument("--stages", type=int, default=None,
                       help="run the model as Ray pipeline stages (resident actors) instead of in this process")
    serve.add_argument("--replicas", type=int, default=1, help="with --stages: pipelines working side by side")
    serve.add_argument("--address", default=None, help="with --stages: the Ray cluster (host:port, auto); default "
                                                        "RAY_ADDRESS, else a local Ray")
    serve.set_defaults(func=run_serve)

    user = subparsers.add_parser("user", help="manage the service's users (tokens are stored hashed)")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="add a user; its token is printed once, alone on the last line")
    add.add_argument("name", help="the user's name")
    add.add_argument("--roles", default="submit,read", help="comma-separated roles: submit, read")
    add.add_argument("--users", required=True, type=Path, help="users file (created if absent)")
    add.add_argument("--tokens-per-day", type=int, default=None,
                     help="quota: tokens computed for the user per UTC day (default: no limit)")
    add.add_argument("--concurrent-jobs", type=int, default=None,
                     help="quota: the user's jobs queued or running at once (default: no limit)")
    add.set_defaults(func=run_user_add)

    submit = subparsers.add_parser("submit", help="send a JSONL corpus to an `actcache serve` service")
    submit.add_argument("--server", required=True, help="the service's base URL, e.g. http://127.0.0.1:8000")
    submit.add_argument("--token", default=None, help=f"your token from `actcache user add` (default: the "
                                                      f"{TOKEN_ENV} environment variable, which keeps it out of "
                                                      f"the process list and shell history)")
    submit.add_argument("--corpus", required=True, type=Path, help="a .jsonl file: one {\"text\": ...} per line")
    submit.add_argument("--name", required=True, help="a name for the job")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end (progress bar on stderr)")
    submit.add_argument("--json", action="store_true", help="print only the (final) job record as JSON")
    submit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    submit.set_defaults(func=run_submit)


def run_serve(args: argparse.Namespace) -> int:
    from .serve import RayOptions, serve

    settings = BuildSettings(  # a path is made absolute (job records name it to clients); a URL passes as is
        model=args.model, corpus="", out=args.cache if "://" in args.cache else str(Path(args.cache).absolute()),
        layers=args.layers,
        hooks=tuple(h.strip() for h in args.hooks.split(",") if h.strip()), batch_size=args.batch_size,
        max_length=args.max_length, dtype=args.dtype, device=args.device, unit_tokens=args.unit_tokens,
        progress=False,
    )
    ray = RayOptions(args.stages, args.replicas, args.address) if args.stages is not None else None
    serve(settings, args.users, args.host, args.port, int(args.max_body_mb * 2**20), ray)
    return 0


def run_user_add(args: argparse.Namespace) -> int:
    from .users import add_user

    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    token = add_user(args.users, args.name, roles, tokens_per_day=args.tokens_per_day,
                     concurrent_jobs=args.concurrent_jobs)
    print(f"added user {args.name} ({','.join(roles)}) to {args.users}; its token, shown only now:")
    print(token)
    return 0


def run_submit(args: argparse.Namespace) -> int:
    import os

    from .client import ServiceError, submit_corpus, wait_for_job

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise ServiceError(f"no token: pass --token or set {TOKEN_ENV} (from `actcache user add`)")
    record = submit_corpus(args.server, token, args.corpus, args.name)
    if args.wait:
        record = wait_for_job(args.server, token, record["id"], progress=not args.no_progress)
    if args.json:
        print(json.dumps(record))
    elif record["state"] in ("queued", "running"):
        print(f"job {record['id']} {record['state']}; follow it with GET {args.server}/v1/jobs/{record['id']}")
    else:
        print(f"job {record['id']} {record['state']}: computed {record['computed_documents']} documents "
              f"({record['tokens']} tokens), reused {record['reused_documents']}, in {record['cache']}"
              + (f"; {record['error']}" if record["error"] else ""))
    return 2 if record["state"] == "failed" else 0  # a failed job is refused input (its error says why)
