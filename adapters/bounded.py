"""Reading what an outside server sends, within a cap: bodies counted after decompression, quotes cut short.

httpx decodes ``gzip`` and ``deflate`` in one step per chunk it receives, with no limit on
what one chunk inflates to: a 1 MiB chunk of a gzip bomb becomes about 1 GiB in memory before
any caller can count it. Everything here reads the raw bytes instead and inflates them in
pieces of at most :data:`DECODED_PIECE` bytes, so a cap holds however the body is encoded:

- :func:`read_capped` reads a whole body that is needed (a manifest, a token answer) and
  raises :class:`TooLarge` once it passes its cap;
- :func:`read_excerpt` reads at most a few KiB of a body that is only quoted (an error
  answer) and never fails on size;
- :func:`decoded_view` hands a streaming reader (a blob, a file) the same bounded decoding;
- :func:`quote` cuts any text a server wrote to a few hundred characters, marked as cut,
  without control characters, before it goes into a message, a row or a log
  (:func:`body_excerpt` does it to the bytes of an upstream's answer).
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Iterator

import httpx

DECODED_PIECE = 1 << 20
"""The most bytes one step of decompression produces, whatever the ratio of the input."""
QUOTE_CHARS = 300
"""The most characters of a server's text quoted in one message (an error ``message``, a reason)."""
BODY_SECONDS = 60.0
"""The longest a whole bounded body (a manifest, a token answer, an upstream's job) may take to arrive."""
EXCERPT_SECONDS = 10.0
"""The longest an error body is read for the few KiB of it that are quoted."""
CUT_MARK = "…[cut]"
"""Appended to a quote that was cut short, so a reader knows there was more."""
UPSTREAM_ANSWER_BYTES = 16 << 20
"""The most an upstream (a Dragonfly manager, Kraken) may answer one request with: a job with its rows."""
UPSTREAM_PROBE_BYTES = 64 << 10
"""The most a health probe's answer is read to."""

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")
_SPACE = re.compile(r"\s+")


class BodyError(Exception):
    """A body could not be read within its bounds; the message says why, in a few words."""


class TooLarge(BodyError):
    """A body was longer than its cap (``limit`` bytes, counted after decompression)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


class UnsupportedEncoding(BodyError):
    """A body came with a ``Content-Encoding`` the gateway does not decode (it only asks for gzip and deflate)."""


class _Inflater:
    """gzip or deflate, inflated ``piece`` bytes at a time (zlib's ``max_length``)."""

    def __init__(self, encoding: str, piece: int) -> None:
        self.encoding = encoding
        self.piece = piece
        self._first = True
        self._zlib = self._new()

    def _new(self, raw: bool = False) -> zlib._Decompress:
        if self.encoding == "deflate":
            return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        return zlib.decompressobj(zlib.MAX_WBITS | 16)

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            yield from self._inflate(data)
        except zlib.error:
            if not (self._first and self.encoding == "deflate"):
                raise BodyError(f"the body is not valid {self.encoding} data") from None
            # "deflate" is often sent without its zlib wrapper, as httpx also tolerates.
            self._zlib = self._new(raw=True)
            try:
                yield from self._inflate(data)
            except zlib.error:
                raise BodyError(f"the body is not valid {self.encoding} data") from None
        finally:
            self._first = False

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        while not self._zlib.eof:  # bytes after the end of the stream are ignored, as httpx does
            out = self._zlib.decompress(data, self.piece)
            data = self._zlib.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < self.piece:
                return


def _inflater(response: httpx.Response, piece: int) -> _Inflater | None:
    """The decoder ``response``'s ``Content-Encoding`` calls for (``None``: the bytes are the body)."""
    codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater("deflate" if codings[0] == "deflate" else "gzip", piece)
    raise UnsupportedEncoding(
        f"Content-Encoding {quote(', '.join(codings), 60)} is not one the gateway decodes (gzip, deflate)"
    )


async def decoded(response: httpx.Response, *, piece: int = DECODED_PIECE) -> AsyncIterator[bytes]:
    """The body of ``response`` (opened with ``stream=True``), decoded, in pieces of at most ``piece`` bytes."""
    inflater = _inflater(response, piece)
    async for raw in response.aiter_raw():
        if inflater is None:
            yield raw
        else:
            for out in inflater.feed(raw):
                yield out


async def read_capped(response: httpx.Response, limit: int, *, seconds: float = BODY_SECONDS) -> bytes:
    """The whole decoded body, or :class:`TooLarge` as soon as it passes ``limit`` bytes.

    Raises :class:`BodyError` for a body that cannot be decoded or is not all there within
    ``seconds`` (a body dripped a byte at a time never trips the per-read timeout), and
    ``httpx.TransportError`` when the connection fails.
    """
    pieces: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for piece in decoded(response, piece=min(DECODED_PIECE, limit + 1)):
                size += len(piece)
                if size > limit:
                    raise TooLarge(limit)
                pieces.append(piece)
    except TimeoutError:
        raise BodyError(f"a body not sent whole within {seconds:g}s ({size} bytes arrived)") from None
    return b"".join(pieces)


async def read_excerpt(response: httpx.Response, limit: int, *, seconds: float = EXCERPT_SECONDS) -> bytes:
    """At most ``limit`` decoded bytes of the body, read for at most ``seconds``, for quoting; never raises.

    A body that is longer is left unread (the connection is then closed, not reused), one that
    cannot be decoded or breaks off gives what was read before.
    """
    pieces: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for piece in decoded(response, piece=max(1, min(DECODED_PIECE, limit))):
                pieces.append(piece[: limit - size])
                size += len(pieces[-1])
                if size >= limit:
                    break
    except (BodyError, httpx.HTTPError, TimeoutError):
        pass
    return b"".join(pieces)


class _Decoded(httpx.AsyncByteStream):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in decoded(self._response):
            yield piece

    async def aclose(self) -> None:
        await self._response.aclose()


def decoded_view(response: httpx.Response) -> httpx.Response:
    """``response`` itself when its body is not encoded; otherwise a response whose ``aiter_bytes``
    gives the decoded body in bounded pieces (close the original as usual).

    Raises :class:`UnsupportedEncoding` at once for an encoding the gateway does not decode.
    """
    if _inflater(response, DECODED_PIECE) is None:
        return response
    headers = [
        (k, v) for k, v in response.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")
    ]
    return httpx.Response(response.status_code, headers=headers, stream=_Decoded(response), request=response.request)


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` as a server wrote it, fit to quote: control and invisible formatting characters
    removed, runs of white space made one space, and cut to ``limit`` characters with
    :data:`CUT_MARK` when there was more."""
    head = text[: limit * 2 + 64]
    clean = _SPACE.sub(" ", _CONTROL.sub("", head)).strip()
    if len(clean) > limit or len(head) < len(text):
        return clean[:limit].rstrip() + CUT_MARK
    return clean


def body_excerpt(body: bytes) -> str:
    """An upstream's answer in one line, cut short, for quoting its complaint."""
    return quote(body[: 4 * QUOTE_CHARS].decode("utf-8", "replace"))


async def send_capped(
    client: httpx.AsyncClient, method: str, url: str, *, limit: int, **options: object
) -> tuple[httpx.Response, bytes]:
    """Send a request and read its whole decoded body within ``limit`` bytes: the bounded form of
    ``client.get``/``client.post`` for answers that are parsed (an upstream's job, a JWKS).

    The response comes back closed, its body as the second value. Raises :class:`BodyError`
    (:class:`TooLarge` past ``limit``) and ``httpx.TransportError``.
    """
    response = await client.send(client.build_request(method, url, **options), stream=True)  # type: ignore[arg-type]
    try:
        return response, await read_capped(response, limit)
    finally:
        await response.aclose()
