"""`actcache serve`: a resident model that builds the corpora users submit over HTTP into one shared cache.

users.py (hashed tokens and roles), jobs.py (persisted queue, run through the CLI's build path), app.py (the HTTP
API), serve.py (startup), client.py (`actcache submit`), service_cli.py (the subcommands). docs/SERVICE.md.
"""

__all__: list[str] = []
