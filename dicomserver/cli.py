"""Maintenance commands: `flask --app wsgi dicom gc` and `flask --app wsgi dicom backfill-qido`.

The orphan sweep reconciles the blob store with the index. STOW writes the blob
before the index row and deletes run the other way round, so a crash can leave a
blob no row points to; a lost or restored disk can leave a row whose blob is gone.
A grace period protects uploads in flight: a blob younger than it may simply be
waiting for its index commit.
"""
from __future__ import annotations

import datetime as dt
import re
import time

import click
from flask.cli import AppGroup

from .extensions import server
from .index.models import Change, Instance, Series, Study
from .ingest import blob_created

dicom = AppGroup("dicom", help="dicomserver maintenance commands.")

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 15m, 1h or 2d")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dicom.command("gc")
@click.option("--grace", default="1h", show_default=True, help="Leave orphans younger than this (30s, 15m, 1h, 2d).")
@click.option("--dry-run", is_flag=True, help="Report only; remove nothing.")
def gc(grace: str, dry_run: bool) -> None:
    """Find blobs without an index row and index rows without a blob; remove the old ones."""
    grace_seconds = parse_duration(grace)
    state = server()
    index, store = state.index, state.store
    now = time.time()
    index.connect()
    try:
        rows = list(
            Instance.select(Instance.blob_key, Instance.sop_instance_uid, Change.timestamp, Series.series_instance_uid, Study.study_instance_uid)
            .join(Series, on=(Instance.series == Series.id))
            .switch(Instance)
            .join(Study, on=(Instance.study == Study.id))
            .switch(Instance)
            .join(Change, on=(Change.sequence == Instance.watermark))
            .tuples()
        )
        indexed = {row[0] for row in rows}

        orphan_blobs, young_blobs = [], 0
        for key in store.list():
            if key in indexed:
                continue
            created = blob_created(key)
            if created is not None and now - created < grace_seconds:
                young_blobs += 1
            else:
                orphan_blobs.append(key)

        dangling, young_rows = [], 0
        for key, sop, created, series_uid, study_uid in rows:
            if store.exists(key):
                continue
            age = now - created.replace(tzinfo=dt.timezone.utc).timestamp()
            if age < grace_seconds:
                young_rows += 1
            else:
                dangling.append((study_uid, series_uid, sop, key))

        verb = "would remove" if dry_run else "removing"
        click.echo(f"{len(indexed)} indexed instances, {len(orphan_blobs) + young_blobs} blobs without an index row, "
                   f"{len(dangling) + young_rows} index rows without a blob")
        for key in orphan_blobs:
            click.echo(f"orphan blob: {key} ({verb})")
            if not dry_run:
                store.delete(key)
        for study_uid, series_uid, sop, key in dangling:
            click.echo(f"index row without blob: {study_uid}/{series_uid}/{sop} -> {key} ({verb})")
            if not dry_run:
                index.delete(study_uid, series_uid, sop)
        if young_blobs or young_rows:
            click.echo(f"left alone (younger than {grace}): {young_blobs} blob(s), {young_rows} row(s)")
    finally:
        index.close()


@dicom.command("backfill-qido")
@click.option("--batch", default=2000, show_default=True, help="Rows per write transaction.")
def backfill_qido(batch: int) -> None:
    """Build the QIDO members of instances stored before index schema 5 (safe while serving)."""
    index = server().index
    index.connect()
    done = 0
    try:
        for done in index.backfill_qido(batch=batch):
            click.echo(f"{done} instances done")
    finally:
        index.close()
    click.echo(f"backfill-qido: {done} instances filled; every instance has its QIDO members")
