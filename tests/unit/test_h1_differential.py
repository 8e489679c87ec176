"""Our request framing (``h1.requests.RequestReader``: llhttp via httptools, strict) against
h11's, on generated request streams: 1-3 pipelined requests, valid and broken, each stream
cut into random pieces fed one by one.

For every case the two must agree on what is accepted and what is refused, and where both
accept, on every request: method, target, version, headers, body bytes (de-chunked) and
keep-alive, in the same order and with the same boundaries (the property that rules out
request smuggling). Where they differ by design, a ``Rule`` below names the generated
feature, the reason, and the only outcomes allowed: each is narrow (a feature the generator
put into that very request, the outcome on each side, h11's own error message where h11 is
the one refusing). Any other difference fails.

Two more properties of our reader alone: the outcome does not depend on where reads split,
and a prefix of a stream never frames what the whole stream frames differently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import h11
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llama_balancer.h1.requests import END, Body, MalformedRequest, RequestHead, RequestReader

CRLF = b"\r\n"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the generator: each request comes with the set of odd features it was given


@dataclass
class Spec:
    """One generated request: its bytes and the odd features a rule may name."""

    data: bytes = b""
    flags: set[str] = field(default_factory=set)
    version: bytes = b""


@dataclass
class Case:
    specs: list[Spec]
    cuts: list[int]  # where the stream is split into reads

    @property
    def stream(self) -> bytes:
        return b"".join(spec.data for spec in self.specs)

    def pieces(self) -> list[bytes]:
        stream, bounds = self.stream, [0, *self.cuts, len(self.stream)]
        return [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class Draw:
    """Choices for one request: the usual value most of the time, an odd one (and its flag)
    now and then; never an odd one in a clean request."""

    def __init__(self, draw, spec: Spec, odds: int) -> None:
        self.draw, self.spec, self.odds = draw, spec, odds

    def pick(self, good: list[bytes], odd: list[tuple[bytes | None, str | None]] = (),
             odds: int = 0) -> bytes | None:
        """One of ``good``; or now and then (1 in ``odds``, or the request's own odds) one of ``odd``."""
        odds = odds or self.odds
        if odd and self.odds and self.draw(st.integers(0, odds - 1)) == 0:
            value, flag = self.draw(st.sampled_from(odd))
            if flag:
                self.spec.flags.add(flag)
            return value
        return self.draw(st.sampled_from(good))

    def chance(self, one_in: int) -> bool:
        """True 1 time in ``one_in`` (clean requests too: what this decides is valid)."""
        return self.draw(st.integers(0, one_in - 1)) == 0

    def eol(self) -> bytes:
        return self.pick([CRLF], [(b"\n", "bare_lf"), (b"\r", "bare_cr")])


# llhttp's HTTP methods (what it refuses besides is not a method to it)
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"]
ODD_METHODS = [(b"PROPFIND", None), (b"QUERY", None), (b"get", "method_unknown"), (b"FOO", "method_unknown"),
               (b"DESCRIBE", "method_unknown"), (b"CONNECT", None), (b"PRI", "pri"), (b"", None),
               (b"G\x01T", None), (b"GE(T", None)]
TARGETS = [b"/", b"/v1/chat/completions", b"/v1/models?x=1&y=%20z", b"/a/b;c"]
ODD_TARGETS = [(b"*", None), (b"http://h:1/p", None), (b"", None), (b"/\x01", None), (b"/\x7f", None),
               (b"/\x80", None), (b"/a b", None), (b"/#f", None), (b"h:80", "authority_form")]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]
ODD_VERSIONS = [(b"HTTP/0.9", "version"), (b"HTTP/2.0", "version"), (b"HTTP/1.2", "version"),
                (b"HTTP/3.0", "version"), (b"http/1.1", None), (b"HTTP/1.1 ", None), (b"RTSP/1.0", "rtsp"),
                (b"HTTP/1", None), (b"HTTP/1.10", None), (None, None)]  # None: no version, an HTTP/0.9 line
NAMES = [b"X-A", b"Accept", b"Content-Type", b"User-Agent", b"x-lower", b"Authorization"]
ODD_NAMES = [(b"", None), (b"X A", None), (b"X\x80", None), (b"X\x01", None), (b"X(", None)]
VALUE_BYTES = [bytes([c]) for c in b"abcXYZ019 \t,;=\"/-"]
ODD_VALUE_BYTES = [b"\x00", b"\x01", b"\x1f", b"\x7f", b"\x80", b"\xff", b"\r", b"\n"]
CTL = set(range(0x20)) - {0x09, 0x0A, 0x0D} | {0x7F}
CONNECTION = [b"keep-alive", b"keep-alive", b"close"]
ODD_CONNECTION = [(b"Keep-Alive", None), (b"close, foo", None), (b"foo", None), (b"CLOSE", None),
                  (b"upgrade", None), (b"Upgrade, HTTP2-Settings", None)]
TE = [b"chunked"]
ODD_TE = [(b"Chunked", None), (b"gzip, chunked", None), (b"deflate,chunked", None), (b"x-y , chunked", None),
          (b"chunked, gzip", None), (b"identity", None), (b"gzip", None), (b"chunked, chunked", None),
          (b" chunked ", None)]


@st.composite
def requests(draw) -> Spec:
    spec = Spec()
    d = Draw(draw, spec, odds=0 if draw(st.booleans()) else 25)  # half of them clean; the rest, an odd
    # choice now and then (one or two a request, mostly: a rule sees the feature it is about)
    out = bytearray(d.pick([b""], [(b"\r\n", "leading_crlf"), (b"\n", "leading_lf"),
                                   (b"\r\n\r\n", "leading_blank_lines")], odds=8))
    method = d.pick(METHODS, ODD_METHODS)
    version = d.pick(VERSIONS, ODD_VERSIONS)
    spec.version = version or b""
    out += method + d.pick([b" "], [(b"  ", "multi_space"), (b"\t", None)]) + d.pick(TARGETS, ODD_TARGETS)
    if version is not None:
        out += d.pick([b" "], [(b"  ", "multi_space"), (b"\t", None)]) + version
    out += d.eol()

    lines: list[bytes] = []
    hosts = d.pick([b"1"], [(b"0", "no_host"), (b"2", "multi_host")])
    lines += [b"Host: h"] * int(hosts)
    for _ in range(draw(st.integers(0, 3))):
        name = d.pick(NAMES, ODD_NAMES)
        sep = d.pick([b": ", b":"], [(b" : ", None), (b":\t ", None)])
        value = b"".join(draw(st.lists(st.sampled_from(VALUE_BYTES) if not d.odds or not d.chance(8)
                                       else st.sampled_from(VALUE_BYTES + ODD_VALUE_BYTES), max_size=8)))
        if any(c in CTL for c in value):
            spec.flags.add("ctl_in_value")
        if b"\n" in value.replace(b"\r\n", b""):
            spec.flags.add("bare_lf")
        lines.append(name + sep + value)
        if d.odds and d.chance(15):
            lines.append(draw(st.sampled_from([b" folded", b"\tfolded"])))
    if any(line[:1] in (b" ", b"\t") for line in lines):
        spec.flags.add("obs_fold")
    if d.chance(3):
        connection = d.pick(CONNECTION, ODD_CONNECTION)
        lines.append(b"Connection: " + connection)
        if b"keep-alive" in connection.lower():
            spec.flags.add("keep_alive_token")
    if d.chance(5):  # what curl --http2 sends on http://, a body included: never switched to here
        lines += [b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAoAAA"]
    elif d.odds and d.chance(10):
        lines.append(b"Upgrade: h2c")
    if d.chance(6):
        lines.append(b"Expect: 100-continue")

    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked"]))
    body = b""
    if framing == "length":
        payload = draw(st.binary(max_size=20))
        n = len(payload)
        value = d.pick([b"%d" % n], [(b" %d" % n, None), (b"%d " % n, None), (b"+%d" % n, None), (b"0%d" % n, None),
                                     (b"%d, %d" % (n, n), "cl_list"), (b"\xc2\xb2", None), (b"\xb2", None),
                                     (b"0x%x" % n, None), (b"-1", None), (b"", None), (b"%d\t%d" % (n, n), None)],
                       odds=8)
        lines.append(b"Content-Length: " + value)
        if d.odds and d.chance(10):
            twin = draw(st.sampled_from([value, b"%d" % (n + 1)]))
            lines.append(b"Content-Length: " + twin)
            if twin == value:
                spec.flags.add("cl_duplicate_same")
        body = payload
    elif framing == "chunked":
        if d.odds and d.chance(12):  # two lines: gzip then chunked, or chunked twice
            first = draw(st.sampled_from([b"gzip", b"chunked"]))
            lines += [b"Transfer-Encoding: " + first, b"Transfer-Encoding: chunked"]
        else:
            lines.append(b"Transfer-Encoding: " + d.pick(TE, ODD_TE, odds=4))
        if d.odds and d.chance(8):
            lines.append(b"Content-Length: 3")
            spec.flags.add("cl_and_te")
        body = chunked_body(d)
    out += b"".join(line + d.eol() for line in lines) + d.eol() + body
    spec.data = bytes(out)
    return spec


def chunked_body(d: Draw) -> bytes:
    out = bytearray()
    for payload in d.draw(st.lists(st.binary(min_size=1, max_size=12), max_size=3)):
        size = b"%x" % len(payload)
        form = d.pick([b"plain"], [(b"upper", None), (b"zeros", None), (b"0x", None), (b"underscore", None),
                                   (b"minus", None), (b"space", "chunk_line_whitespace"), (b"ext", None),
                                   (b"ext_value", None), (b"ext_quoted", None), (b"ext_spaced", "chunk_ext_odd")])
        size = {
            b"plain": size, b"upper": size.upper(), b"zeros": b"00" + size, b"0x": b"0x" + size,
            b"underscore": size[:1] + b"_" + size[1:] + b"0", b"minus": b"-" + size, b"space": size + b" ",
            b"ext": size + b";a", b"ext_value": size + b";a=b", b"ext_quoted": size + b';a="x y"',
            b"ext_spaced": size + b";a b",
        }[form]
        out += size + d.eol() + payload + d.pick([CRLF], [(b"\n", "bare_lf"), (b"", None), (b"X", None)])
    out += d.pick([b"0"], [(b"000", None), (b"0;e=1", None)]) + d.eol()
    for _ in range(d.draw(st.integers(0, 2))):
        out += d.pick([b"X-T: v", b"Y-T:w"], [(b"X-T: \x01", "ctl_in_value"), (b" folded", "obs_fold")]) + d.eol()
    return bytes(out + d.eol())


@st.composite
def cases(draw) -> Case:
    specs = [draw(requests()) for _ in range(draw(st.integers(1, 3)))]
    specs[0].flags -= {"leading_lf", "leading_blank_lines"}  # their rules are for the bytes between requests
    total = sum(len(spec.data) for spec in specs)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, total - 1)), max_size=6)))) if total > 1 else []
    return Case(specs, cuts)


# -- both readers, seen the same way


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    keep_alive: bool


@dataclass
class Framing:
    requests: list[Request]
    end: str  # "refused", "open" (waits for more; nothing begun when partial is None), "closed"
    detail: str = ""
    partial: tuple | None = None  # (head fields, body so far) of a request begun, not ended
    status: int = 0


def _normal(headers, strip: bool = False) -> tuple[tuple[str, str], ...]:
    """h11 restates Content-Length and Transfer-Encoding values in lower case: so do we. And
    ``strip``: llhttp leaves a value's trailing SP and HTAB in it, h11 drops them (RFC 9110
    5.5: they are not part of the value); our values are compared without them."""
    out = []
    for name, value in headers:
        if strip:
            value = value.rstrip(" \t")
        if name.lower() in ("content-length", "transfer-encoding"):
            value = value.lower()
        out.append((name, value))
    return tuple(out)


def ours(pieces: list[bytes]) -> Framing:
    """Our reader, fed ``pieces`` one by one as the exchange feeds it reads."""
    reader = RequestReader(1 << 20, 1000)
    done: list[Request] = []
    head: RequestHead | None = None
    body = bytearray()

    def fields() -> tuple:
        assert head is not None
        return head.method, head.target, head.version, _normal(head.headers, strip=True)

    def drain() -> None:
        nonlocal head, body
        while reader.events:
            item = reader.events.popleft()
            if isinstance(item, RequestHead):
                head, body = item, bytearray()
            elif isinstance(item, Body):
                body += item.data
            else:
                assert item is END and head is not None
                done.append(Request(*fields(), bytes(body), head.keep_alive))
                head = None

    for piece in pieces:
        try:
            reader.feed(piece)
        except MalformedRequest as exc:  # and nothing else: any other exception fails the test
            drain()
            return Framing(done, "refused", str(exc), status=exc.status)
        drain()
    if head is None and done and not done[-1].keep_alive:
        return Framing(done, "closed")
    return Framing(done, "open", partial=None if head is None else (fields(), bytes(body)))


def theirs(stream: bytes) -> Framing:
    """h11 as a server, fed the stream whole: its reading of the bytes is the reference (h11's
    own outcome depends on reads in one place: a CR and its LF apart before a request line)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    done: list[Request] = []
    request: h11.Request | None = None
    body = bytearray()

    def fields() -> tuple:
        assert request is not None
        headers = ((n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw_items())
        return (request.method.decode(), request.target.decode("latin-1"), request.http_version.decode(),
                _normal(headers))

    conn.receive_data(stream)
    while True:
        try:
            item = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Framing(done, "refused", str(exc))
        if item is h11.NEED_DATA:
            return Framing(done, "open", partial=None if request is None else (fields(), bytes(body)))
        if isinstance(item, h11.Request):
            request, body = item, bytearray()
        elif isinstance(item, h11.Data):
            body += item.data
        else:
            assert isinstance(item, h11.EndOfMessage), item
            # an answer that switches nothing (a 404: neither 101 nor a CONNECT's 2xx) moves h11 on
            conn.send(h11.Response(status_code=404, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            keep = conn.their_state is h11.DONE and conn.our_state is h11.DONE
            done.append(Request(*fields(), bytes(body), keep))
            request = None
            if not keep:
                return Framing(done, "closed")  # h11 reads nothing more on this connection
            conn.start_next_cycle()


# -- the known differences, each narrow


@dataclass(frozen=True)
class Rule:
    flag: str  # the generated feature it is about, in the request where the two part
    why: str
    ours: frozenset[str]  # what our reader may do with that request: accepted, refused, open (waits)
    theirs: frozenset[str]  # what h11 may do with it
    h11_says: str = ""  # where h11 refuses: its error matches this
    field: str = ""  # where both accept: the one Request field that may differ (then nothing after is compared)
    version: str = ""  # only for requests of this HTTP version


def rule(flag: str, why: str, ours: str, theirs: str, h11_says: str = "", field: str = "",
         version: str = "") -> Rule:
    return Rule(flag, why, frozenset(ours.split()), frozenset(theirs.split()), h11_says, field, version)


# Besides these rules, two differences of spelling only are compared away in _normal: h11
# lower-cases Content-Length and Transfer-Encoding values, and drops a value's trailing SP/HTAB.
STRICTER = "ours refuses what h11 lets through"
RULES = [
    # -- we refuse, h11 accepts (or waits for more): llhttp strict, and the choices RFC 9112 leaves open
    rule("bare_lf", f"{STRICTER}: a line ended by LF alone (RFC 9112 2.2 lets a recipient take it for CRLF; "
         "llhttp strict does not, which keeps header injection and split-view framing out)", "refused",
         "accepted open"),
    rule("bare_cr", "a CR not followed by LF: llhttp refuses it where it stands; h11 splits lines on LF only, "
         "so the head it waits for never ends (and it refuses the line once it does)", "refused", "open"),
    rule("obs_fold", f"{STRICTER}: obs-fold (a line starting with SP/HTAB); RFC 9112 5.2 lets a server "
         "refuse it with 400 or unfold it (h11 unfolds)", "refused", "accepted open"),
    rule("ctl_in_value", f"{STRICTER}: a control byte in a field value (not field-vchar, RFC 9110 5.5)",
         "refused", "accepted open"),
    rule("cl_list", f"{STRICTER}: Content-Length as a list of equal values (RFC 9110 8.6 allows taking it "
         "as one; llhttp strict, like nginx, refuses)", "refused", "accepted open"),
    rule("cl_duplicate_same", f"{STRICTER}: two equal Content-Length lines (the same RFC 9110 8.6 choice)",
         "refused", "accepted open"),
    rule("cl_and_te", f"{STRICTER}: Content-Length with Transfer-Encoding, the classic smuggling pair "
         "(RFC 9112 6.3: a server may refuse; h11 lets chunked win)", "refused", "accepted open"),
    rule("method_unknown", f"{STRICTER}: a method llhttp does not know (it knows a fixed list; h11 takes "
         "any token)", "refused", "accepted open"),
    rule("pri", f"{STRICTER}: PRI is the HTTP/2 preface's, never an HTTP/1 method to llhttp", "refused",
         "accepted open"),
    rule("authority_form", f"{STRICTER}: a host:port target on a method other than CONNECT (RFC 9112 "
         "3.2.3 keeps that form for CONNECT; h11 takes any target)", "refused", "accepted open"),
    rule("version", "only HTTP/1.0 and 1.1 are served: HTTP/0.9, 1.2 and 3.0 get 400, 2.0 gets 505 (h11 "
         "takes any HTTP/d.d line and answers it as 1.1)", "refused", "accepted open"),
    rule("chunk_line_whitespace", f"{STRICTER}: whitespace after a chunk size (h11's chunk header allows "
         "OWS there; llhttp strict does not)", "refused", "accepted open"),
    rule("chunk_ext_odd", f"{STRICTER}: a chunk extension that is not token[=value] (h11 skips anything up "
         "to the CRLF)", "refused", "accepted open"),
    # -- we accept (or wait for the rest), h11 refuses: none of these moves a request boundary
    rule("leading_crlf", "one CRLF before a request line is ignored (RFC 9112 2.2: a server SHOULD); "
         "h11 refuses it", "accepted open", "refused", "no request line received"),
    rule("leading_lf", "between requests llhttp skips CR and LF bytes (the reader refuses them only "
         "before the first request, the one place it sees them); h11 refuses them", "accepted open",
         "refused", "no request line received"),
    rule("leading_blank_lines", "the same, for two CRLFs between requests", "accepted open", "refused",
         "no request line received"),
    rule("multi_space", "llhttp splits the request line on runs of SP (RFC 9112 3 lets a recipient parse "
         "on whitespace): method, target and version read the same; h11 wants one SP", "accepted open",
         "refused", "illegal request line"),
    rule("rtsp", "llhttp takes RTSP/1.0 for a request line's protocol and httptools does not say which "
         "protocol it read, so the reader serves it as HTTP/1.0; h11 refuses the line", "accepted open",
         "refused", "illegal request line"),
    rule("no_host", "RFC 9112 3.2's 400 for an HTTP/1.1 request without Host is left to the reader's "
         "users (it frames requests; the exchange's tests send none); h11 enforces it", "accepted open",
         "refused", "Missing mandatory Host: header"),
    rule("multi_host", "two Host lines: likewise left to the reader's users; h11 refuses them",
         "accepted open", "refused", "Found multiple Host: headers"),
    # -- both accept, one field differs
    rule("keep_alive_token", "HTTP/1.0 with Connection: keep-alive stays open with llhttp (RFC 9112 "
         "Appendix C.2.2); h11 never keeps HTTP/1.0 alive and reads nothing after it", "accepted",
         "accepted", field="keep_alive", version="HTTP/1.0"),
]


# -- the comparison


def kind(framing: Framing, i: int) -> str:
    return "accepted" if i < len(framing.requests) else framing.end


def known_difference(spec: Spec, a: str, b: str, mine: Request | None, h11s: Framing, i: int) -> Rule | None:
    for known in RULES:
        if known.flag not in spec.flags or a not in known.ours or b not in known.theirs:
            continue
        if known.version and spec.version != known.version.encode():
            continue
        if b == "refused" and not re.search(known.h11_says, h11s.detail):
            continue
        if known.field:  # both accepted: only that field may differ
            theirs = h11s.requests[i]
            if replace(theirs, **{known.field: getattr(mine, known.field)}) != mine:
                continue
        elif a == b == "accepted":
            continue
        return known
    return None


def compare(case: Case) -> None:
    mine, h11s = ours(case.pieces()), theirs(case.stream)
    for i in range(max(len(mine.requests), len(h11s.requests)) + 1):
        spec = case.specs[i] if i < len(case.specs) else Spec()
        a, b = kind(mine, i), kind(h11s, i)
        if a == b == "accepted" and mine.requests[i] == h11s.requests[i]:
            continue
        if a == b != "accepted":
            if a == "open":
                assert mine.partial == h11s.partial, explain(case, mine, h11s, i, "both wait, differently")
            event(f"agree: {i} accepted, then {a}")
            return
        known = known_difference(spec, a, b, mine.requests[i] if a == "accepted" else None, h11s, i)
        assert known is not None, explain(case, mine, h11s, i, f"ours: {a}, h11: {b}")
        event(f"rule: {known.flag}")
        return  # the two streams part here: nothing after is comparable


def explain(case: Case, mine: Framing, h11s: Framing, i: int, what: str) -> str:
    spec = case.specs[i] if i < len(case.specs) else Spec()
    return (f"request {i}: {what}\n  stream: {case.stream!r}\n  pieces: {case.pieces()!r}\n"
            f"  flags: {sorted(spec.flags)}\n  ours: {mine}\n  h11:  {h11s}")


@SETTINGS
@given(cases())
def test_our_request_framing_matches_h11_but_for_the_listed_rules(case):
    compare(case)


@SETTINGS
@given(cases())
def test_our_framing_does_not_depend_on_where_reads_split(case):
    whole, split = ours([case.stream]), ours(case.pieces())
    assert (whole.requests, whole.end, whole.status, whole.partial) == (
        split.requests, split.end, split.status, split.partial), f"{case.pieces()!r}\n{whole}\n{split}"


@SETTINGS
@given(cases(), st.data())
def test_a_stream_cut_short_frames_nothing_the_whole_stream_does_not(case, data):
    stream = case.stream
    cut = data.draw(st.integers(0, len(stream)))
    bounds = [0, *(c for c in case.cuts if c < cut), cut]
    short, whole = ours([stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]), ours(case.pieces())
    n = len(short.requests)
    assert whole.requests[:n] == short.requests, f"{stream[:cut]!r}\n{short}\n{whole}"
    if short.end == "refused":  # a refusal is final: the rest cannot undo it
        assert (whole.end, whole.status, len(whole.requests)) == ("refused", short.status, n), f"{short}\n{whole}"
    elif short.partial is not None and len(whole.requests) > n:
        head, body = short.partial
        request = whole.requests[n]
        assert (request.method, request.target, request.version, request.headers) == head
        assert request.body.startswith(body)
