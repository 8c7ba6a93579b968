"""`loopline serve`: run the model server (uvicorn + the app factory in loopline.serving.app)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Annotated

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, load


def _graceful_server(config):  # type: ignore[no-untyped-def]
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (exit 143/130); a server that
    drained its requests and flushed its log exits 0 instead."""
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return Server(config=config)


def _check_log_table(proj) -> None:  # type: ignore[no-untyped-def]
    """Refuse to start when the existing inference_log cannot take this server's rows (serving.log.redact
    hashes a column it stores as numbers): every row would otherwise go to spill/rejected/, silently."""
    from loopline.errors import ConfigError
    from loopline.serving.logger import TABLE, log_conflict_message
    from loopline.serving.logrows import logged_types, schema_conflicts
    from loopline.tables import DeltaStore

    store = DeltaStore(proj.storage_root, proj.storage_options)
    if not store.exists(TABLE):
        return
    problems = schema_conflicts(store.schema(TABLE), logged_types({}, proj.config.serving.log.redact))
    if problems:
        raise ConfigError(
            log_conflict_message(problems),
            hint=f"undo the serving.log.redact change, or move the old table aside (rename {TABLE} in "
            f"{proj.storage_root}) so the log starts afresh; loopline does not rewrite logged rows",
        )


@app.command()
def serve(
    project: ProjectOpt = None,
    env: EnvOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default serving.host).", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serving.port).", show_default=False)] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default serving.workers).", show_default=False)
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request (costs latency).")] = False,
) -> None:
    """Serve [bold]models:/<registered>@champion[/] over REST (MLflow scoring + Open Inference V2).

    Every prediction is logged to the inference_log table; SIGTERM drains in-flight requests, flushes
    the log and exits 0. The champion alias is polled every serving.reload_interval and swapped in
    without downtime. Without a champion the server starts not ready (/ready answers 503).
    """
    import logging

    import uvicorn

    from loopline.serving import LOG_FORMAT
    from loopline.serving.auth import Auth
    from loopline.serving.limits import HEADER_TIMEOUT_ENV, PROTOCOL
    from loopline.serving.logger import COMMITTER_ENV, Redactor

    proj = load(project, env)
    cfg = proj.config.serving
    Auth(cfg.auth.tokens_env)  # fail fast on a bad token spec, before workers start
    if cfg.log.enabled:
        Redactor(cfg.log.redact, cfg.log.salt_env)  # fail fast on a missing salt
        _check_log_table(proj)
    host = host or cfg.host
    port = port or cfg.port
    workers = workers or cfg.workers
    # one OpenMP thread per worker unless the user says otherwise: a one-row predict is far cheaper than
    # waking a thread team, and serving scales with --workers (read by libgomp when sklearn loads)
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("LOOPLINE_SERVE_THREADS", "1"))
    os.environ["LOOPLINE_PROJECT"] = str(proj.root)
    os.environ["LOOPLINE_ENV"] = proj.env
    use_committer = cfg.log.enabled and cfg.log.committer_process and os.name == "posix"
    prom_dir = None
    if (workers > 1 or use_committer) and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prom_dir = tempfile.mkdtemp(prefix="loopline-prom-")  # metrics of all processes, one /metrics
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
    os.environ["LOOPLINE_LOG_LEVEL"] = log_level
    os.environ[HEADER_TIMEOUT_ENV] = str(cfg.header_timeout.total_seconds())
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    committer = None
    if use_committer:  # commits the prediction log beside the workers (they stage their rows)
        from loopline.serving import committer as log_committer

        committer = log_committer.start()
    if committer is not None:
        os.environ[COMMITTER_ENV] = str(committer.pid)
    else:  # never trust an inherited value: the workers elect a committer among themselves
        os.environ.pop(COMMITTER_ENV, None)
    console.print(
        f"serving [bold]models:/{proj.registered_model}@champion[/] ({proj.env}) on http://{host}:{port} "
        f"with {workers} worker(s)",
        highlight=False,
    )
    config = uvicorn.Config(
        "loopline.serving.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=30,
        http=PROTOCOL,
    )
    try:
        if workers > 1:  # uvicorn's supervisor: SIGTERM -> every worker drains and flushes, parent exits 0
            uvicorn.run(
                "loopline.serving.app:create_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level=log_level,
                access_log=access_log,
                timeout_keep_alive=30,
                http=PROTOCOL,
            )
        else:
            _graceful_server(config).run()
    finally:
        if committer is not None:  # after the workers staged their last rows: commit them all, then exit
            log_committer.stop(committer)
        if prom_dir:
            shutil.rmtree(prom_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
