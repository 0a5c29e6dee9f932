"""JSON request bodies of the reference server's non-standard APIs (extended query tags,
export): read with a size limit, members bound case-insensitively as the reference binds them."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .errors import BadRequest

#: Largest body read (128 tag definitions, or 10,000 export identifiers, fit well within it).
MAX_BODY_BYTES = 1024 * 1024


def json_body(read: Callable[[int], bytes], limit: int = MAX_BODY_BYTES) -> Any:
    """The body parsed as JSON; BadRequest if it is larger than `limit` or no JSON."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise BadRequest(f"the body is larger than {limit} bytes")
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None


def member(item: dict[str, Any], name: str) -> Any:
    """A member by name, case-insensitively (as the reference binds JSON)."""
    lowered = name.lower()
    return next((value for key, value in item.items() if key.lower() == lowered), None)
