"""Maintenance commands: `flask --app wsgi dicom gc`, `... dicom backfill-qido`, `... dicom create-api-key`.

The orphan sweep reconciles the blob store with the index. STOW writes the blob
before the index row and deletes run the other way round, so a crash can leave a
blob no row points to; a lost or restored disk can leave a row whose blob is gone.
A grace period protects uploads in flight: a blob younger than it may simply be
waiting for its index commit. A crash can also leave the temporary file of a write
(the local store's '.tmp'); the sweep removes those not written to within the grace
period (never one written to in the last MIN_TEMP_AGE_SECONDS). Its default is the age
after which the local store removes them itself when it opens.
"""
from __future__ import annotations

import re

import click
from flask.cli import AppGroup

from backends.base import STALE_TEMP_SECONDS

from .auth import create_api_key
from .services.web import archive, authenticator

dicom = AppGroup("dicom", help="dicomserver maintenance commands.")

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


@dicom.command("gc")
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
    state = archive()
    state.index.connect()
    try:
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
    finally:
        state.index.close()


@dicom.command("backfill-qido")
@click.option("--batch", default=2000, show_default=True, help="Rows per write transaction.")
def backfill_qido(batch: int) -> None:
    """Build the QIDO members of instances stored before index schema 5 (safe while serving)."""
    index = archive().index
    index.connect()
    done = 0
    try:
        for done in index.backfill_qido(batch=batch):
            click.echo(f"{done} instances done")
    finally:
        index.close()
    click.echo(f"backfill-qido: {done} instances filled; every instance has its QIDO members")


@dicom.command("create-api-key")
@click.option("--name", required=True, help="Who the key is for; the audit trail names callers by it.")
@click.option("--role", "roles", multiple=True, required=True, help="A role of the roles file (repeatable).")
@click.option("--file", "path", default=None, help="The keys file (default: DICOMWEB_AUTH_TOKENS_FILE).")
def create_api_key_command(name: str, roles: tuple[str, ...], path: str | None) -> None:
    """Create an API key; it is printed once and only its SHA-256 hash is stored."""
    path = path or archive().settings.auth_tokens_file
    if not path:
        raise click.UsageError("set DICOMWEB_AUTH_TOKENS_FILE or pass --file")
    unknown = [r for r in roles if not authenticator().roles.actions([r])]
    if unknown:
        raise click.BadParameter(f"roles {unknown} grant no action in the roles file", param_hint="--role")
    try:
        key = create_api_key(path, name, list(roles))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    click.echo(f"API key for {name} (roles: {', '.join(roles)}); store it now, it is not shown again:")
    click.echo(key)
