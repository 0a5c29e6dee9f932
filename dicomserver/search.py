"""QIDO-RS searches (PS3.18 §10.6): query parameters in, DICOM JSON results and warnings out.

Parsing (matching.py) comes before any SQL is built, so a malformed key or value is a
400 with a message; the index runs the query (index/query.py). What the server did not
do as asked (ignored keys, unsupported matching, a capped page) is said in warnings,
which the view sends as Warning headers.
"""
from __future__ import annotations

from dataclasses import dataclass

from .archive import Archive
from .dicomjson import absolute_uris
from .index.extended import ENABLED, StoredTag
from .index.query import search as run_query
from .matching import Attribute, parse_query
from .partitions import DEFAULT, Partition
from .query_tags import KIND, name_of


@dataclass(frozen=True)
class SearchResult:
    #: The results as a DICOM JSON array.
    body: str
    #: What the server did not do as asked, one sentence each.
    warnings: list[str]
    #: More results match beyond this page (at offset + limit).
    more: bool
    #: Extended query tags matched on whose re-index left some instances out (the
    #: reference's erroneous-dicom-attributes header).
    erroneous: tuple[str, ...] = ()


def search(
    archive: Archive,
    level: str,
    args: list[tuple[str, str]],
    *,
    base_url: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    partition: Partition = DEFAULT,
) -> SearchResult:
    """Search one level (study, series, instance) of a partition, within a study or series if given."""
    settings = archive.settings
    tags = {t.path: t for t in archive.index.extended_query_tags(ready_only=True) if t.query_status == ENABLED}
    query = parse_query(
        args, level, default_limit=settings.qido_default_limit, max_limit=settings.qido_max_limit,
        extended={path: _attribute(tag) for path, tag in tags.items()},
    )
    results, more = run_query(
        query, base_url=base_url, study_uid=study_uid, series_uid=series_uid, partition=partition
    )
    warnings = []
    if query.ignored:
        warnings.append(
            "The following attributes are not supported for matching at this level and were ignored: "
            + ", ".join(query.ignored)
        )
    warnings.extend(query.warnings)
    if more and query.limit_was_capped:
        warnings.append(
            "The number of results exceeded the maximum supported by the server. "
            f"Additional results can be requested with offset={query.offset + query.limit}."
        )
    erroneous = tuple(
        f.attribute.keyword for f in query.filters if f.attribute.extended and tags[f.attribute.tag].error_count
    )
    return SearchResult(absolute_uris("[" + ",".join(results) + "]", base_url), warnings, more, erroneous)


def _attribute(tag: StoredTag) -> Attribute:
    """An extended query tag as matching.py matches it."""
    return Attribute(name_of(tag.path), tag.path, tag.level.lower(), KIND[tag.vr], extended=tag.id)
