"""OTLP/HTTP request bodies → ``ExportMetricsServiceRequest``, or :class:`InvalidInput`.

OTLP/HTTP carries one message in two encodings: binary protobuf (``application/x-protobuf``)
and the proto3 JSON mapping (``application/json``; OTLP allows integer enums and int64 as strings
or numbers, which protobuf's JSON parser reads). Bodies may be gzip-compressed
(``Content-Encoding: gzip``). Unknown fields are ignored, as the OTLP specification requires of
receivers, so a newer SDK's additions do not get its data refused.
"""

from __future__ import annotations

import zlib

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from jobsight.errors import InvalidInput

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Both spellings appear in the wild; the OTLP specification names application/x-protobuf.
_PROTOBUF_TYPES = frozenset({PROTOBUF, "application/protobuf"})
# A 64-rank node exporting every 10 s sends a few KiB per rank; 8 MiB leaves room for large
# batches and refuses what is not telemetry.
MAX_BODY_BYTES = 8 * 1024 * 1024


class UnsupportedMediaType(InvalidInput):
    """A content type or encoding other than OTLP's; answered 415."""


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` → ``application/json`` (lower case)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decompress(body: bytes, encoding: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """Undo ``Content-Encoding`` (gzip or none), refusing output larger than ``limit`` so that a
    small compressed body cannot expand into gigabytes."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        return body
    if name != "gzip":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: use gzip or none")
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid gzip: {exc}") from exc
    if len(out) > limit:
        raise InvalidInput(f"decompressed body is larger than {limit} bytes")
    if not inflater.eof:
        raise InvalidInput("gzip body is truncated")
    return out


def decode_request(body: bytes, content_type: str | None) -> ExportMetricsServiceRequest:
    """Parse an OTLP metrics export request in the encoding ``content_type`` names."""
    kind = media_type(content_type)
    request = ExportMetricsServiceRequest()
    if kind in _PROTOBUF_TYPES:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise InvalidInput(f"body is not an OTLP ExportMetricsServiceRequest in protobuf: {exc}") from exc
        return request
    if kind == JSON:
        try:
            text = body.decode("utf-8")
            json_format.Parse(text, request, ignore_unknown_fields=True)
        except (UnicodeDecodeError, json_format.ParseError) as exc:
            raise InvalidInput(f"body is not an OTLP ExportMetricsServiceRequest in JSON: {exc}") from exc
        return request
    raise UnsupportedMediaType(f"Content-Type {content_type!r} is not OTLP: use {PROTOBUF} or {JSON}")


def encode_response(rejected: int, message: str, content_type: str | None) -> tuple[bytes, str]:
    """The ``ExportMetricsServiceResponse`` for a request, in the request's own encoding. A
    response with ``partial_success`` tells the SDK that some points were refused and why,
    without making it retry the rest (OTLP: 200 with partial success)."""
    response = ExportMetricsServiceResponse()
    if rejected:
        response.partial_success.rejected_data_points = rejected
        response.partial_success.error_message = message
    if media_type(content_type) == JSON:
        return json_format.MessageToJson(response, indent=None).encode(), JSON
    return response.SerializeToString(), PROTOBUF
