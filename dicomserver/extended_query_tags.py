"""Extended query tags (the reference server's API at /extendedquerytags): add, list, get, query status,
delete, errors, and the re-index operation that indexes the instances stored before a tag was added.

Bodies and answers are the reference's JSON (camelCase members, read case-insensitively;
enum values Study/Series/Instance, Adding/Ready, Enabled/Disabled). The re-index reads
each instance's DICOM JSON from the index, never a blob, a batch at a time, and commits
each batch's values with the operation's checkpoint (index/extended.py says why nothing
stored meanwhile is missed).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import BadRequest
from .index import Index
from .index.extended import DISABLED, ENABLED, StoredTag, TagError
from .matching import SEARCHABLE, parse_count
from .operations import Run, new_operation_id, reference
from .query_tags import InvalidTag, TagDefinition, check_definition, display, parse_tag_path
from .request_json import json_body, member

#: Page sizes of the lists (the reference's: 1..200, 100 by default).
DEFAULT_LIMIT, MAX_LIMIT = 100, 200


def add(index: Index, read: Callable[[int], bytes], base_url: str) -> dict[str, str]:
    """Add the tags of a JSON array body; the re-index operation's reference."""
    body = json_body(read)
    if not isinstance(body, list) or not body:
        raise BadRequest("the body must be a non-empty JSON array of {path, vr, privateCreator, level}")
    definitions: list[TagDefinition] = []
    for number, item in enumerate(body):
        if not isinstance(item, dict):
            raise BadRequest(f"item {number} of the body is not a JSON object")
        values = {name: member(item, name) for name in ("path", "vr", "privateCreator", "level")}
        if not isinstance(values["path"], str) or not values["path"]:
            raise BadRequest(f"item {number} of the body has no path")
        if any(v is not None and not isinstance(v, str) for v in values.values()):
            raise BadRequest(f"item {number}: path, vr, privateCreator and level are strings")
        try:
            definition = check_definition(values["path"], values["vr"], values["privateCreator"], values["level"])
        except InvalidTag as exc:
            raise BadRequest(str(exc)) from None
        if definition.path in SEARCHABLE:
            raise BadRequest(f"{display(definition.path)} is searchable already: it cannot be an extended query tag")
        if any(d.path == definition.path for d in definitions):
            raise BadRequest(f"{display(definition.path)} is given more than once")
        definitions.append(definition)
    operation_id = new_operation_id()
    resources = [f"extendedquerytags/{d.path}" for d in definitions]
    index.add_extended_query_tags(definitions, operation_id, {"resources": resources})
    return reference(operation_id, base_url)


def tag_json(tag: StoredTag, base_url: str) -> dict[str, Any]:
    document: dict[str, Any] = {"path": tag.path, "vr": tag.vr}
    if tag.private_creator is not None:
        document["privateCreator"] = tag.private_creator
    document.update(level=tag.level, status=tag.status, queryStatus=tag.query_status)
    if tag.error_count:
        document["errors"] = {"count": tag.error_count, "href": f"{base_url}/extendedquerytags/{tag.path}/errors"}
    if tag.operation_id is not None:
        document["operation"] = reference(tag.operation_id, base_url)
    return document


def _page(arg: Callable[[str], str | None]) -> tuple[int, int]:
    limit, offset = arg("limit"), arg("offset")
    return (
        DEFAULT_LIMIT if limit is None else parse_count("limit", limit, minimum=1, maximum=MAX_LIMIT),
        0 if offset is None else parse_count("offset", offset, minimum=0),
    )


def list_tags(index: Index, arg: Callable[[str], str | None], base_url: str) -> list[dict[str, Any]]:
    limit, offset = _page(arg)
    return [tag_json(tag, base_url) for tag in index.extended_query_tags(limit=limit, offset=offset)]


def _path(tag_path: str) -> str:
    try:
        return parse_tag_path(tag_path)
    except InvalidTag as exc:
        raise BadRequest(str(exc)) from None


def get(index: Index, tag_path: str, base_url: str) -> dict[str, Any]:
    return tag_json(index.extended_query_tag(_path(tag_path)), base_url)


def update(index: Index, tag_path: str, read: Callable[[int], bytes], base_url: str) -> dict[str, Any]:
    """PATCH {"queryStatus": "Enabled" | "Disabled"}: whether QIDO matches on the tag."""
    path = _path(tag_path)
    body = json_body(read)
    wanted = member(body, "queryStatus") if isinstance(body, dict) else None
    status = next((s for s in (ENABLED, DISABLED) if isinstance(wanted, str) and s.lower() == wanted.lower()), None)
    if status is None or len(body) != 1:
        raise BadRequest('the body must be {"queryStatus": "Enabled"} or {"queryStatus": "Disabled"}')
    return tag_json(index.set_query_status(path, status), base_url)


def delete(index: Index, tag_path: str) -> None:
    index.delete_extended_query_tag(_path(tag_path))


def errors(index: Index, tag_path: str, arg: Callable[[str], str | None]) -> list[dict[str, Any]]:
    limit, offset = _page(arg)
    return [_error_json(e) for e in index.extended_query_tag_errors(_path(tag_path), limit=limit, offset=offset)]


def _error_json(error: TagError) -> dict[str, Any]:
    return {
        "partitionName": error.partition_name,
        "studyInstanceUid": error.study_instance_uid,
        "seriesInstanceUid": error.series_instance_uid,
        "sopInstanceUid": error.sop_instance_uid,
        "createdTime": error.created.isoformat() + "Z",
        "errorMessage": error.message,
    }


def reindex(run: Run) -> None:
    """The re-index operation: walk the instances stored before the tags were added, in batches."""
    index = run.index
    tag_ids = run.record.payload["tagIds"]
    state = run.record.checkpoint
    if state is None:
        last, total = index.instance_extent()
        state = {"after": 0, "last": last, "done": 0, "total": total}
    while not run.stopping:
        rows = index.instances_after(state["after"], run.settings.reindex_batch, upto=state["last"])
        if not rows:
            break
        state = {**state, "after": rows[-1].instance_id, "done": state["done"] + len(rows)}
        percent = min(99, state["done"] * 100 // max(state["total"], 1))
        with index.write_transaction():
            tags = index.tags_of_operation(tag_ids)  # under the lock: a tag deleted meanwhile is skipped
            index.write_reindexed(tags, rows)
            run.checkpoint(state, percent)
        if not tags:
            break
        run.pause(run.settings.reindex_pause)
    if run.stopping:
        return
    with index.write_transaction():
        index.complete_reindex(tag_ids)
        run.finish()
