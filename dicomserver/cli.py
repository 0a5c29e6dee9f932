"""The `dicomserver` command (serve, dimse, import, verify, gc, backfill-qido, create-api-key), and
the maintenance commands again under `flask --app wsgi dicom ...`.

Under `dicomserver` a command opens the archive the DICOMWEB_* variables name, as the
server does; under `flask dicom` it uses the app's. The commands are the same objects
in both groups: this module parses options and prints, the work is in the domain
modules (importer.py, verify.py, archive.py).

The orphan sweep (`gc`) reconciles the blob store with the index. STOW writes the blob
before the index row and deletes run the other way round, so a crash can leave a
blob no row points to; a lost or restored disk can leave a row whose blob is gone.
A grace period protects uploads in flight: a blob younger than it may simply be
waiting for its index commit. A crash can also leave the temporary file of a write
(the local store's '.tmp'); the sweep removes those not written to within the grace
period (never one written to in the last MIN_TEMP_AGE_SECONDS). Its default is the age
after which the local store removes them itself when it opens.
"""
from __future__ import annotations

import copy
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import has_app_context
from flask.cli import AppGroup, with_appcontext
from tqdm import tqdm

from backends.base import STALE_TEMP_SECONDS

from .archive import Archive, open_archive
from .auth import Roles, create_api_key
from .importer import FILES_PER_COMMIT, FileResult, Summary, find_files, import_into_archive, import_to_server
from .partitions import DEFAULT, DEFAULT_NAME, InvalidPartitionName, Partition
from .services import web
from .settings import ConfigError, Settings
from .verify import Report, verify

#: `dicomserver serve`'s address unless --bind says otherwise (as `make run`).
DEFAULT_BIND = "127.0.0.1:8080"
#: Files imported at once into the archive, by threads of up to PROCESSES_PER_CPU worker
#: processes per CPU: on 2 cores, 4 processes of 2 threads were the fastest (importer.py).
DEFAULT_LOCAL_JOBS = 8
PROCESSES_PER_CPU = 2
#: STOW requests at once to another server, and files per request: it does the work, the
#: client mostly waits; batches save a round trip per file.
DEFAULT_REMOTE_JOBS = 4
DEFAULT_BATCH = 10

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def format_duration(seconds: int) -> str:
    """The largest whole unit: 3600 -> '1h', 90 -> '90s'."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_duration(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 15m, 1h or 2d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _settings() -> Settings:
    """The app's settings under `flask dicom`, else the environment's (as the server reads them)."""
    if has_app_context():
        return web.archive().settings
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def _archive() -> Iterator[Archive]:
    """The app's archive under `flask dicom`, else one opened (and closed) for the command."""
    if has_app_context():
        state = web.archive()
        state.index.connect()
        try:
            yield state
        finally:
            state.index.close()
        return
    try:
        state = open_archive(_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield state
    finally:
        state.close()


# -- serve ---------------------------------------------------------------------------------


@click.command("serve")
@click.option("--bind", default=DEFAULT_BIND, show_default=True, help="HOST:PORT to listen on.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="Worker processes (default: DICOMWEB_WORKERS, else the CPU count up to 4).",
)
def serve(bind: str, workers: int | None) -> None:
    """Serve the archive with gunicorn and the repository's settings (dicomserver/gunicorn_conf.py)."""
    _settings()  # a bad variable is named here, not in each worker's traceback
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:dicomserver.gunicorn_conf", "--bind", bind]
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv.append("dicomserver.wsgi:app")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@click.command("dimse")
@click.option("--listen-fd", type=int, default=None, hidden=True,
              help="Accept on this inherited listening socket, as one process of several (started by the gateway).")
def dimse(listen_fd: int | None) -> None:
    """Serve the archive over DIMSE (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE, storage
    commitment) on DICOMWEB_DIMSE_BIND:DICOMWEB_DIMSE_PORT as DICOMWEB_DIMSE_AE_TITLE, beside
    `serve`, in DICOMWEB_DIMSE_PROCESSES processes."""
    import signal
    import threading

    from .dimse import Gateway  # pynetdicom: loaded only by this command
    from .dimse_processes import StartFailed, Supervisor, process_count

    # SIGTERM (a supervisor, `docker stop`) and SIGINT stop it cleanly: no new association,
    # the open ones aborted once the instance they store is committed, the audit records
    # stored, exit status 0.
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    with _archive() as state:
        s = state.settings
        try:
            s.validate()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        if listen_fd is not None:  # one of several, started by the supervisor below
            try:
                Gateway(state).serve(stopping, listen_fd=listen_fd)
            except OSError as exc:
                raise click.ClickException(f"cannot listen on {exc.strerror or exc}") from None
            return
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            click.echo("DIMSE: warning: PROMETHEUS_MULTIPROC_DIR is set; the gateway's metrics go into that "
                       "directory too, which gunicorn empties when it starts: unset it for the gateway and "
                       "scrape DICOMWEB_DIMSE_METRICS_PORT (docs/observability.md)", err=True)
        count = process_count(s)
        listening = (f"DIMSE: {s.dimse_ae_title} listening on {s.dimse_bind}:{s.dimse_port}"
                     + (f" in {count} processes" if count > 1 else "")
                     + ("" if s.dimse_peers else " (any calling AE title may associate)")
                     + (f"; metrics on {s.dimse_metrics_bind}:{s.dimse_metrics_port}" if s.dimse_metrics_port else ""))
        if count == 1:
            click.echo(listening)
            try:
                Gateway(state).serve(stopping)
            except OSError as exc:
                raise click.ClickException(f"cannot listen on {exc.strerror or exc}") from None
            return
        if s.dimse_partition != DEFAULT_NAME:  # made once here, not by N processes at once
            state.index.connect()
            try:
                state.partition(s.dimse_partition, create=True)
            finally:
                state.index.close()
        try:
            Supervisor(s, count).run(stopping, on_listening=lambda: click.echo(listening))
        except StartFailed as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {exc.strerror or exc}") from None


# -- import --------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over the files, with files/s and MB/s."""

    def __init__(self, total: int, enabled: bool | None):
        self.bytes = 0
        self.bar = tqdm(
            total=total, unit=" files", file=sys.stderr, disable=None if enabled is None else not enabled,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]",
            dynamic_ncols=True,
        )

    def __call__(self, result: FileResult) -> None:
        self.bytes += result.size
        elapsed = self.bar.format_dict["elapsed"] or 1e-9
        self.bar.set_postfix_str(f"{self.bytes / 1e6 / elapsed:.1f} MB/s", refresh=False)
        self.bar.update(1)


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--url", default=None,
    help="Send the files by STOW-RS to this DICOMweb server (its base URL, e.g. http://host:8080/v2) "
    "instead of storing them into the archive the DICOMWEB_* variables name.",
)
@click.option("--token", envvar="DICOMWEB_TOKEN", default=None, help="Bearer token for --url (or DICOMWEB_TOKEN).")
@click.option(
    "--jobs", "-j", type=click.IntRange(min=1), default=None,
    help=f"Files at once (default: {DEFAULT_LOCAL_JOBS}, threads of up to {PROCESSES_PER_CPU} worker processes "
    f"per CPU; with --url: {DEFAULT_REMOTE_JOBS} requests).",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=None,
    help=f"Files per index commit into the archive (default: {FILES_PER_COMMIT}); with --url, files per STOW "
    f"request (default: {DEFAULT_BATCH}; at most 64 MB unless one file is larger).",
)
@click.option("--progress/--no-progress", default=None, help="The progress bar (default: on a terminal).")
@click.option(
    "--partition", "partition_name", default=None,
    help=f"The data partition to store into (created if new; default: {DEFAULT_NAME}). A partition other "
    "than the default needs DICOMWEB_PARTITIONS=on; with --url, give the partition's URL instead.",
)
def import_files(paths: tuple[str, ...], url: str | None, token: str | None, jobs: int | None,
                 batch: int | None, progress: bool | None, partition_name: str | None) -> None:
    """Store the DICOM files under PATHS (recursively) through STOW's pipeline.

    Instances already stored are skipped; files that are not DICOM are reported. The
    exit status is 1 if any file failed.
    """
    if token and not url:
        raise click.UsageError("--token is for --url (STOW-RS to another server)")
    if partition_name is not None and url:
        raise click.UsageError("--partition is for the archive; with --url, name it in the URL (.../partitions/NAME)")
    files = find_files(paths)
    bar = _Progress(len(files), progress)
    started = time.monotonic()
    with bar.bar:
        if url:
            summary = import_to_server(
                files, url, token=token, jobs=jobs or DEFAULT_REMOTE_JOBS, batch=batch or DEFAULT_BATCH, on_result=bar
            )
        else:
            jobs = jobs or DEFAULT_LOCAL_JOBS
            processes = min(jobs, PROCESSES_PER_CPU * (os.cpu_count() or 1))
            with _archive() as state:  # opened here first: a bad variable is named, the schema migrated once
                partition = _import_partition(state, partition_name)
                summary = import_into_archive(
                    files, state, jobs=jobs, processes=processes, batch=batch or FILES_PER_COMMIT, on_result=bar,
                    partition=partition,
                )
    _print_summary(summary, time.monotonic() - started)
    if not summary.ok:
        sys.exit(1)


def _import_partition(state: Archive, name: str | None) -> Partition:
    """The partition `--partition` names (created as STOW would create it)."""
    if name is None or name == DEFAULT_NAME:
        return DEFAULT
    if not state.settings.partitions:
        raise click.UsageError(f"--partition {name}: DICOMWEB_PARTITIONS is off (only {DEFAULT_NAME} exists)")
    try:
        return state.partition(name, create=True)
    except InvalidPartitionName:
        raise click.UsageError(f"--partition {name}: {InvalidPartitionName().message}") from None


def _print_summary(summary: Summary, seconds: float) -> None:
    warnings = f" ({summary.warnings} with warnings)" if summary.warnings else ""
    click.echo(f"stored: {summary.stored}{warnings}")
    click.echo(f"already present: {summary.present}")
    click.echo(f"failed: {len(summary.failed)}")
    for result in summary.failed:
        reason = f"{result.reason} (0x{result.reason:04X})" if result.reason is not None else "no reason given"
        click.echo(f"  {result.path}: {reason}: {'; '.join(result.comments)}")
    click.echo(f"not DICOM: {len(summary.not_dicom)}")
    for result in summary.not_dicom:
        click.echo(f"  {result.path}: {'; '.join(result.comments)}")
    if summary.not_attempted:
        why = "interrupted" if summary.interrupted else f"stopped after: {summary.outage}"
        click.echo(f"not attempted: {summary.not_attempted} ({why})")
    seconds = max(seconds, 1e-9)
    click.echo(
        f"{summary.files} files, {summary.bytes / 1e6:,.1f} MB in {seconds:.1f} s: "
        f"{summary.files / seconds:,.1f} files/s, {summary.bytes / 1e6 / seconds:,.1f} MB/s"
    )


# -- verify --------------------------------------------------------------------------------


@click.command("verify")
@click.option(
    "--hashes", is_flag=True,
    help="Also read every blob: its SHA-256 must be the one recorded at STOW, its header's UIDs its row's.",
)
@click.option(
    "--grace", default="1h", show_default=True,
    help="Blobs younger than this may be STOWs waiting for their index row: not reported.",
)
def verify_command(hashes: bool, grace: str) -> None:
    """Check that the index and the blob store agree: every row has its blob, of the size (and
    hash) recorded; every blob has a row. Reads only; the exit status is 1 on any problem."""
    grace_seconds = parse_duration(grace)
    with _archive() as state:
        report = verify(state, hashes=hashes, grace_seconds=grace_seconds)
    _print_report(report, hashes)
    if report.problems:
        sys.exit(1)


def _print_report(report: Report, hashes: bool) -> None:
    checks = "existence, size, SHA-256 and UIDs" if hashes else "existence and size (--hashes reads the blobs)"
    click.echo(f"verify: {report.rows} index rows, {report.blobs} blobs; checked {checks}")
    for problem in report.problems:
        row = problem.row
        where = (
            f"{row.study_instance_uid}/{row.series_instance_uid}/{row.sop_instance_uid} -> {problem.blob_key}"
            if row is not None else problem.blob_key
        )
        click.echo(f"{problem.kind}: {where}: {problem.detail}")
    if report.without_hash:
        click.echo(f"{report.without_hash} rows have no recorded SHA-256 (stored before the index kept one): "
                   "checked by size and UIDs")
    if report.young_blobs:
        click.echo(f"left alone: {report.young_blobs} blob(s) younger than the grace period")
    click.echo(f"verify: {len(report.problems)} problem(s)" if report.problems else "verify: index and blobs agree")


# -- gc, backfill-qido, create-api-key -----------------------------------------------------


@click.command("gc")
@click.option(
    "--grace",
    default=format_duration(STALE_TEMP_SECONDS),
    show_default=True,
    help="Leave orphans and temporary files younger than this (30s, 15m, 1h, 2d).",
)
@click.option("--dry-run", is_flag=True, help="Report only; remove nothing.")
def gc(grace: str, dry_run: bool) -> None:
    """Find blobs without an index row, index rows without a blob and temporary files
    of interrupted writes; remove the old ones."""
    grace_seconds = parse_duration(grace)
    with _archive() as state:
        orphans = state.find_orphans(grace_seconds)
        verb = "would remove" if dry_run else "removing"
        click.echo(
            f"{orphans.indexed} indexed instances, {len(orphans.blobs) + orphans.young_blobs} blobs without an "
            f"index row, {len(orphans.rows) + orphans.young_rows} index rows without a blob, "
            f"{len(orphans.temp_files) + orphans.young_temp_files} temporary files"
        )
        for key in orphans.blobs:
            click.echo(f"orphan blob: {key} ({verb})")
            if not dry_run:
                state.remove_orphan_blob(key)
        for row in orphans.rows:
            click.echo(
                f"index row without blob: {row.study_instance_uid}/{row.series_instance_uid}/"
                f"{row.sop_instance_uid} -> {row.blob_key} ({verb})"
            )
            if not dry_run:
                state.remove_dangling_row(row)
        for temp in orphans.temp_files:
            click.echo(f"temporary file of an interrupted write: {temp.name}, {temp.size} bytes ({verb})")
            if not dry_run:
                state.remove_temp_file(temp)
        if orphans.young_blobs or orphans.young_rows or orphans.young_temp_files:
            click.echo(
                f"left alone (younger than {grace}): {orphans.young_blobs} blob(s), {orphans.young_rows} row(s), "
                f"{orphans.young_temp_files} temporary file(s)"
            )


@click.command("backfill-qido")
@click.option("--batch", default=2000, show_default=True, help="Rows per write transaction.")
def backfill_qido(batch: int) -> None:
    """Build the QIDO members of instances stored before index schema 5 (safe while serving)."""
    done = 0
    with _archive() as state:
        for done in state.index.backfill_qido(batch=batch):
            click.echo(f"{done} instances done")
    click.echo(f"backfill-qido: {done} instances filled; every instance has its QIDO members")


@click.command("create-api-key")
@click.option("--name", required=True, help="Who the key is for; the audit trail names callers by it.")
@click.option("--role", "roles", multiple=True, required=True, help="A role of the roles file (repeatable).")
@click.option("--file", "path", default=None, help="The keys file (default: DICOMWEB_AUTH_TOKENS_FILE).")
def create_api_key_command(name: str, roles: tuple[str, ...], path: str | None) -> None:
    """Create an API key; it is printed once and only its SHA-256 hash is stored."""
    settings = _settings()
    path = path or settings.auth_tokens_file
    if not path:
        raise click.UsageError("set DICOMWEB_AUTH_TOKENS_FILE or pass --file")
    try:
        known = Roles.load(settings.auth_roles_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    unknown = [r for r in roles if not known.actions([r])]
    if unknown:
        raise click.BadParameter(f"roles {unknown} grant no action in the roles file", param_hint="--role")
    try:
        key = create_api_key(path, name, list(roles))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    click.echo(f"API key for {name} (roles: {', '.join(roles)}); store it now, it is not shown again:")
    click.echo(key)


# -- the two groups ------------------------------------------------------------------------


@click.group("dicomserver", context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """dicomserver: serve the DICOMweb archive, import files into it, check and maintain it.

    Every command reads the DICOMWEB_* environment variables, as the server does.
    """


dicom = AppGroup("dicom", help="dicomserver maintenance commands (the app's archive).")


def _in_app_context(command: click.Command) -> click.Command:
    """The same command, run in the Flask app's context (as AppGroup.command would wrap it)."""
    assert command.callback is not None
    wrapped = copy.copy(command)
    wrapped.callback = with_appcontext(command.callback)
    return wrapped


for _command in (import_files, verify_command, gc, backfill_qido, create_api_key_command):
    main.add_command(_command)
    dicom.add_command(_in_app_context(_command))
main.add_command(serve)
main.add_command(dimse)
