"""A small Server-Sent Events reader for the tests (WHATWG HTML §9.2.6, "Interpreting an event
stream"): lines end in CRLF, LF or CR; a blank line ends a block; `:` starts a comment; a field's
value loses one leading space. Each block comes out as a `Block` (comments too, which a browser
drops, so that the tests see the heartbeats)."""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

_LINE_END = re.compile(rb"\r\n|\n|\r")


@dataclass
class Block:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    #: The names of the fields the block carried, in order (a test checks nothing else was sent).
    fields: list[str] = field(default_factory=list)


def blocks(chunks: Iterable[bytes]) -> Iterator[Block]:
    """The blocks of a stream, as its chunks arrive (a block may span chunks, a chunk several blocks)."""
    pending = b""
    current = Block()
    for chunk in chunks:
        pending += chunk
        while True:
            match = _LINE_END.search(pending)
            if match is None or (match.group() == b"\r" and match.end() == len(pending)):
                break  # a CR at the end may be the start of a CRLF
            line, pending = pending[: match.start()].decode("utf-8"), pending[match.end():]
            if not line:
                if current.fields or current.comments:
                    yield current
                current = Block()
            elif line.startswith(":"):
                current.comments.append(line[1:].lstrip(" "))
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                current.fields.append(name)
                if name == "data":
                    current.data = value if current.data is None else f"{current.data}\n{value}"
                elif name == "id":
                    current.id = value
                elif name == "event":
                    current.event = value
                elif name == "retry" and value.isdigit():
                    current.retry = int(value)
