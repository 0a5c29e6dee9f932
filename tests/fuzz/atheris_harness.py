"""Coverage-guided fuzzing (atheris, libFuzzer) of the two parsers that read raw client input
before anything else: the multipart/related reader and the QIDO query parser.

Run by `make fuzz` when atheris is importable (it is not a CI dependency):

    python tests/fuzz/atheris_harness.py multipart -max_total_time=60 [corpus dir ...]
    python tests/fuzz/atheris_harness.py qido -max_total_time=60

Properties, besides "no exception but the parser's own":
- multipart: the events are the same whatever the chunking of the input (fed whole, or in
  pieces whose sizes the fuzzer picks); a part's data is never empty; nothing follows End.
- qido: every parsed query is one the SQL layer can take (limit within 1..max, offset >= 0).
A crash input is written by libFuzzer as crash-<sha1> in the working directory; keep it as
an @example or a replay in the hypothesis tests (tests/fuzz/examples/README.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import atheris  # noqa: E402  (after the path is set)

with atheris.instrument_imports():
    from dicomserver import matching, multipart


def _events(data: bytes, boundary: str | None, sizes: list[int]) -> list:
    reader = multipart.MultipartReader(boundary, max_header_bytes=4096, max_parts=64)
    out: list = []
    position, index = 0, 0
    while True:
        try:
            event = reader.next_event()
        except multipart.MultipartError as exc:
            out.append(("error", type(exc).__name__))  # the message quotes what was buffered: not compared
            return out
        if event is multipart.NEED_DATA:
            if position >= len(data):
                reader.close()
                continue
            size = sizes[index % len(sizes)] if sizes else len(data)
            index += 1
            reader.feed(data[position:position + size])
            position += size
            continue
        if isinstance(event, multipart.PartData):
            assert event.data, "empty PartData"
            if out and isinstance(out[-1], bytes):  # chunking may split data differently: join it
                out[-1] += event.data
                continue
            out.append(bytes(event.data))
            continue
        out.append(event)
        if event is multipart.END:
            return out


def multipart_target(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    boundary = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12)) if fdp.ConsumeBool() else None
    sizes = [fdp.ConsumeIntInRange(1, 64) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        whole = _events(body, boundary, [])
    except multipart.MultipartError:  # a bad boundary parameter, refused up front
        return
    pieces = _events(body, boundary, sizes or [1])
    assert whole == pieces, (boundary, sizes, whole[:5], pieces[:5])


LEVELS = (matching.STUDY, matching.SERIES, matching.INSTANCE)
NAMES = sorted({a.keyword for a in matching.SEARCHABLE.values()}) + ["limit", "offset", "fuzzymatching", "includefield"]


def qido_target(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    level = LEVELS[fdp.ConsumeIntInRange(0, 2)]
    args = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(12)
        args.append((name, fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))))
    try:
        query = matching.parse_query(args, level, default_limit=100, max_limit=1000)
    except matching.InvalidQuery:
        return
    assert 1 <= query.limit <= 1000 and query.offset >= 0, query


TARGETS = {"multipart": multipart_target, "qido": qido_target}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
