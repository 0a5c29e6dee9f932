"""How `dicomserver import --url` reads STOW-RS answers of any server, and batches files."""
from __future__ import annotations

import io
import json

from dicomserver.importer import (
    FAILED,
    PRESENT,
    STORED,
    SourceFile,
    _Part,
    batches,
    store_response,
)


def part(name: str, uid: str | None) -> _Part:
    return _Part(name, 10, uid, io.BytesIO(b"x" * 10))


def item(uid: str | None, **elements) -> dict:
    found = {"00081155": {"vr": "UI", "Value": [uid]}} if uid else {}
    for tag, (vr, value) in elements.items():
        found[tag] = {"vr": vr, "Value": [value]}
    return found


def answer(referenced=(), failed=()) -> bytes:
    body = {}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": list(failed)}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": list(referenced)}
    return json.dumps(body).encode()


def test_each_file_gets_the_item_naming_its_instance():
    comment = {"00741048": ("SQ", {"00000902": {"vr": "LO", "Value": ["Pixel Data is cut short"]}})}
    body = answer(
        referenced=[item("1.2.3", **{"00081196": ("US", 45063)}), item("1.2.1")],
        failed=[item("1.2.1", **{"00081197": ("US", 45070)}), item("1.2.9", **{"00081197": ("US", 43264)}, **comment)],
    )
    parts = [part("a", "1.2.1"), part("b", "1.2.9"), part("c", "1.2.1"), part("d", "1.2.3")]
    results = store_response(parts, 202, "Accepted", body)
    assert [(r.path, r.outcome, r.reason) for r in results] == [
        ("a", STORED, None), ("b", FAILED, 43264), ("c", PRESENT, None), ("d", STORED, 45063),
    ]
    assert results[1].comments == ("Pixel Data is cut short",)


def test_answers_without_a_body_are_read_by_their_status():
    two = [part("a", "1.2.1"), part("b", "1.2.2")]
    assert [r.outcome for r in store_response(two, 200, "OK", b"")] == [STORED, STORED]
    assert [r.outcome for r in store_response(two, 409, "Conflict", b"")] == [PRESENT, PRESENT]
    (refused,) = store_response([part("a", "1.2.1")], 413, "Payload Too Large", b"too big for this proxy")
    assert (refused.outcome, refused.outage) == (FAILED, False)
    assert refused.comments == ("the server answered 413 Payload Too Large: too big for this proxy",)
    for status in (401, 403, 502, 503, 507):
        (down,) = store_response([part("a", "1.2.1")], status, "x", b"")
        assert down.outcome == FAILED and down.outage, status


def test_the_only_file_of_a_request_takes_an_item_that_names_no_instance():
    failed = answer(failed=[item(None, **{"00081197": ("US", 43264)})])
    (result,) = store_response([part("a", None)], 409, "Conflict", failed)
    assert (result.outcome, result.reason) == (FAILED, 43264)


def test_batches_hold_at_most_so_many_files_and_bytes():
    files = [SourceFile(str(n), size) for n, size in enumerate([10, 10, 10, 50, 200, 10, 10])]
    groups = batches(files, 3, most_bytes=100)
    assert [[int(f.path) for f in g] for g in groups] == [[0, 1, 2], [3], [4], [5, 6]]
    assert [f for g in groups for f in g] == files
