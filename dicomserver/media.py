"""Media types, Accept parsing and content negotiation for DICOMweb (PS3.18 §8.7).

Generic Accept matchers know nothing of the `type` parameter inside
multipart/related or of `transfer-syntax`, so negotiation is ours. Parsing is
lenient because real clients differ: quoted or unquoted parameter values (OHIF and
the C# client), several entries with q-values (dicomweb-client), a trailing `;`
(the tutorials). A missing Accept header means "anything" (RFC 9110 §12.5.1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from .errors import NotAcceptable
from .transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN, IMAGE_MEDIA_TYPES
from .uids import is_valid_uid

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"
#: Server-Sent Events (WHATWG HTML): the streaming form of the change feed.
EVENT_STREAM = "text/event-stream"

ANY_TRANSFER_SYNTAX = "*"


@dataclass(frozen=True)
class MediaRange:
    """One Accept entry: type/subtype (lower case), parameters (names lower case), q."""

    mimetype: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split_unquoted(text: str, separator: str) -> list[str]:
    """Split on `separator` where it is not inside a double-quoted string."""
    if '"' not in text:  # the usual header: nothing quoted
        return text.split(separator)
    items: list[str]
    current: list[str]
    items, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return items


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split 'type/subtype; a="b"; c=d/e' into ('type/subtype', {'a': 'b', 'c': 'd/e'}).

    Hand-written because RFC token rules (as werkzeug applies them) cut the
    unquoted `type=application/dicom` that OHIF and others send at the '/'.
    """
    mimetype, *raw_params = _split_unquoted(value, ";")
    params: dict[str, str] = {}
    for raw in raw_params:
        name, sep, param_value = raw.partition("=")
        if not sep or not name.strip():
            continue
        param_value = param_value.strip()
        if len(param_value) >= 2 and param_value[0] == param_value[-1] == '"':
            param_value = param_value[1:-1].replace('\\"', '"')
        params[name.strip().lower()] = param_value
    return mimetype.strip().lower(), params


class Accept(tuple[MediaRange, ...]):
    """The entries of an Accept header a client takes (q > 0, best first).

    Iterating gives only those; `refusals` keeps the q=0 entries, which are not
    ignorable: 'multipart/related; type="application/dicom"; q=0, */*' asks for
    anything but that (RFC 9110 §12.5.1), and `refused` applies them.
    """

    refusals: tuple[MediaRange, ...]

    def __new__(cls, accepted: Sequence[MediaRange], refusals: Sequence[MediaRange] = ()) -> Accept:
        self = super().__new__(cls, accepted)
        self.refusals = tuple(refusals)
        return self


def parse_accept(header: str | None) -> Accept:
    """Parse an Accept header into entries ordered by q (stable for equal q).

    Entries with q=0 go to `refusals`; entries that cannot be parsed are ignored.
    Clients send the same few headers on every request, so answers are cached
    (the entries are shared: never modify them).
    """
    return _parse_accept(header or "")


@lru_cache(maxsize=256)
def _parse_accept(header: str) -> Accept:
    if not header.strip():
        return Accept((MediaRange("*/*"),))
    ranges: list[MediaRange] = []
    refusals: list[MediaRange] = []
    for item in _split_unquoted(header, ","):
        if not item.strip():
            continue
        mimetype, params = parse_media_type(item)
        if "/" not in mimetype:
            continue
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        (refusals if q <= 0 else ranges).append(MediaRange(mimetype, params, max(q, 0.0)))
    ranges.sort(key=lambda r: -r.q)
    return Accept(ranges, refusals)


def _covers(r: MediaRange, media_type: str, inner: str | None, syntax: str | None) -> bool:
    """Whether range `r` names a representation: `media_type`, whose parts are `inner`
    when it is multipart, in transfer syntax `syntax` (None: the type has none)."""
    if not _type_covers(r.mimetype, media_type):
        return False
    kind = r.params.get("type")
    if inner is not None and r.mimetype in (MULTIPART_RELATED, "multipart/*") and kind is not None \
            and not _type_covers(kind.lower(), inner):
        return False
    named = r.transfer_syntax
    return named is None or syntax is None or named in (ANY_TRANSFER_SYNTAX, syntax)


def _type_covers(pattern: str, media_type: str) -> bool:
    return pattern == "*/*" or pattern == media_type or (pattern.endswith("/*") and media_type.startswith(pattern[:-1]))


def _specificity(r: MediaRange) -> tuple[bool, bool, int]:
    return r.mimetype != "*/*", not r.mimetype.endswith("/*"), ("type" in r.params) + ("transfer-syntax" in r.params)


def refused(ranges: Sequence[MediaRange], media_type: str, inner: str | None = None, syntax: str | None = None) -> bool:
    """Whether a q=0 entry refuses this representation (RFC 9110 §12.5.1).

    The most specific entries that cover it decide; when a refusal and an
    acceptance are equally specific, the refusal wins (the client said no).
    """
    refusals = [r for r in getattr(ranges, "refusals", ()) if _covers(r, media_type, inner, syntax)]
    if not refusals:
        return False
    most = max(_specificity(r) for r in refusals)
    return not any(_specificity(r) > most and _covers(r, media_type, inner, syntax) for r in ranges)


def accepts_json(ranges: Sequence[MediaRange]) -> bool:
    """application/json is taken to mean DICOM JSON unless the header names that itself."""
    named = any(r.mimetype == DICOM_JSON for r in (*ranges, *getattr(ranges, "refusals", ())))
    return not refused(ranges, DICOM_JSON if named else JSON) and any(
        r.mimetype in (DICOM_JSON, JSON, "application/*", "*/*") for r in ranges
    )


def prefers_event_stream(ranges: Sequence[MediaRange]) -> bool:
    """Whether the client names text/event-stream and likes it better than JSON (an
    EventSource sends exactly `Accept: text/event-stream`); anything else keeps JSON."""
    stream = max((r.q for r in ranges if r.mimetype == EVENT_STREAM), default=0.0)
    return stream > 0 and stream > max((r.q for r in ranges if r.mimetype == JSON), default=0.0)


def require_json(ranges: Sequence[MediaRange]) -> str:
    """Return the JSON media type to answer with, or raise NotAcceptable (406)."""
    if accepts_json(ranges):
        return DICOM_JSON
    raise NotAcceptable(
        "the Accept header allows no media type this resource offers; use application/dicom+json"
    )


@dataclass(frozen=True)
class Rendition:
    """How a retrieve will be answered: framing, media type and transfer syntax.

    `transfer_syntax` is a UID or '*' (as stored).
    """

    multipart: bool
    media_type: str
    transfer_syntax: str
    #: With transfer_syntax '*': stored syntaxes the client refused (q=0) in this framing.
    refused_syntaxes: frozenset[str] = frozenset()


#: Per resource kind: the part media type, whether single-part is allowed, and
#: the transfer syntax implied when an entry names none (PS3.18 Table 8.7.3-5).
_RESOURCES = {
    "study": (DICOM, False),
    "series": (DICOM, False),
    "instance": (DICOM, True),
    "frames": (OCTET_STREAM, True),
}

#: Frames may also be asked for in a compressed media type (PS3.18 Table 8.7.3-5):
#: the transfer syntax it implies when the entry names none, and those it may name.
FRAME_MEDIA_TYPES: dict[str, tuple[str, frozenset[str]]] = {
    media_type: (syntaxes[0], frozenset(syntaxes)) for media_type, syntaxes in IMAGE_MEDIA_TYPES.items()
}


def syntax_fits(media_type: str, transfer_syntax: str) -> bool:
    """Whether data in `transfer_syntax` may be labelled `media_type`.

    application/dicom and application/octet-stream carry any transfer syntax; an
    image/* type only its own (a JPEG 2000 stream is never sent as image/jpeg).
    """
    entry = FRAME_MEDIA_TYPES.get(media_type)
    return entry is None or transfer_syntax in entry[1]


def negotiate_retrieve(ranges: Sequence[MediaRange], resource: str) -> list[Rendition]:
    """List the renditions the client accepts, best first; raise NotAcceptable if none.

    The caller picks the first one it can produce for every instance involved
    (e.g. skipping a transfer syntax it cannot transcode to).
    """
    media_type, single_part_ok = _RESOURCES[resource]
    offers: list[Rendition] = []
    for r in ranges:
        offer = _without_refusals(ranges, _offer_for(r, resource))
        if offer is not None and offer not in offers:
            offers.append(offer)
    if not offers:
        framing = "multipart/related" if not single_part_ok else f"{media_type} or multipart/related"
        also = ""
        if resource == "frames":
            also = f" (or one of {', '.join(sorted(FRAME_MEDIA_TYPES))} with its own transfer syntaxes)"
        raise NotAcceptable(
            f"the Accept header allows no representation of this resource; this server "
            f"offers {framing} with type=\"{media_type}\"{also} and an optional transfer-syntax "
            "parameter (use transfer-syntax=* for the stored encoding)"
        )
    return offers


def _without_refusals(ranges: Sequence[MediaRange], offer: Rendition | None) -> Rendition | None:
    """The offer less what q=0 entries refuse: None when they refuse it whatever the
    syntax; for the stored syntax ('*'), the concrete syntaxes they refuse."""
    if offer is None:
        return None
    outer, inner = (MULTIPART_RELATED, offer.media_type) if offer.multipart else (offer.media_type, None)
    if offer.transfer_syntax != ANY_TRANSFER_SYNTAX:
        return None if refused(ranges, outer, inner, offer.transfer_syntax) else offer
    if refused(ranges, outer, inner, ""):  # a syntax no entry names: refused whatever is stored
        return None
    named = {r.transfer_syntax for r in getattr(ranges, "refusals", ())} - {None, ANY_TRANSFER_SYNTAX}
    excluded = frozenset(ts for ts in named if ts is not None and refused(ranges, outer, inner, ts))
    return replace(offer, refused_syntaxes=excluded) if excluded else offer


def _offer_for(r: MediaRange, resource: str) -> Rendition | None:
    media_type, single_part_ok = _RESOURCES[resource]
    ts = r.transfer_syntax
    if ts is not None and ts != ANY_TRANSFER_SYNTAX and not is_valid_uid(ts):
        return None
    if r.mimetype == "*/*":
        # PS3.18: a wildcard accepts the default representation; as the reference
        # server does, answer multipart in the stored syntax.
        return Rendition(True, media_type, ts or ANY_TRANSFER_SYNTAX)
    if r.mimetype == "application/*":  # covers application/dicom (octet-stream), never multipart
        return Rendition(False, media_type, ts or ANY_TRANSFER_SYNTAX) if single_part_ok else None
    if r.mimetype in (MULTIPART_RELATED, "multipart/*"):
        inner = (r.params.get("type") or media_type).lower()
        if inner in ("*/*", "application/*"):
            return Rendition(True, media_type, ts or ANY_TRANSFER_SYNTAX)
        return _typed_offer(True, inner, ts, resource)
    if single_part_ok:
        return _typed_offer(False, r.mimetype, ts, resource)
    return None


def _typed_offer(multipart: bool, mimetype: str, ts: str | None, resource: str) -> Rendition | None:
    media_type, _ = _RESOURCES[resource]
    if mimetype == media_type:
        return Rendition(multipart, media_type, ts or EXPLICIT_VR_LITTLE_ENDIAN)
    if resource == "frames" and mimetype in FRAME_MEDIA_TYPES:
        default, allowed = FRAME_MEDIA_TYPES[mimetype]
        ts = ts or default
        if ts != ANY_TRANSFER_SYNTAX and ts not in allowed:
            return None  # e.g. image/jp2 with a JPEG baseline syntax: contradictory
        return Rendition(multipart, mimetype, ts)
    return None


def part_content_type(media_type: str, transfer_syntax: str) -> str:
    """Content-Type of one retrieved part; always names its transfer syntax."""
    return f"{media_type}; transfer-syntax={transfer_syntax}"
