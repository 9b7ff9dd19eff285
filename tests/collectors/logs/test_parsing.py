"""Line decoding: plain, JSON, CRI and docker formats, rank prefixes, timestamps, bad bytes."""

from __future__ import annotations

import json

import pytest

from collectors.logs.parsing import (
    CriDecoder,
    DockerDecoder,
    TextDecoder,
    TimestampParser,
    clean_text,
    detect_level,
    pod_labels,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("2016-10-06T00:17:09.669794202Z", 1475713029.669794202),
    ("2026-11-29T05:00:00+02:00", 1795928400.0 - 7200),
    ("2026-11-29 05:00:00,250 INFO x", 1795928400.25),
    ("2026-11-29T05:00:00.5-0130", 1795928400.5 + 5400),
])
def test_timestamps(text: str, expected: float) -> None:
    value = TimestampParser().parse(text)
    assert value is not None and abs(value - expected) < 1e-6


@pytest.mark.parametrize("text", ["step 1", "2026-13-45T99:00:00Z", "12:00:00 foo", ""])
def test_not_a_timestamp(text: str) -> None:
    assert TimestampParser().parse(text) is None


@pytest.mark.parametrize(("text", "level"), [
    ("2026-11-29 05:00:00,250 WARNING low disk", "warning"),
    ("[E1206 18:44:12.715298746 ProcessGroupNCCL.cpp:607] boom", "error"),
    ("W1206 18:44:12.715 foo.cpp:1] careful", "warning"),
    ("plain words only", None),
])
def test_levels(text: str, level: str | None) -> None:
    assert detect_level(text) == level


@pytest.mark.parametrize(("line", "rank", "rest"), [
    ("[rank14]: Traceback (most recent call last):", 14, "Traceback (most recent call last):"),
    ("i.pretrain/0 [default2]:[rank2]: RuntimeError: boom", 2, "RuntimeError: boom"),
    ("29: [rank29]:   File \"train.py\", line 3", 29, "  File \"train.py\", line 3"),
    ("[default0]:hello", None, "[default0]:hello"),
    ("no prefix [rank3]: here", None, "no prefix [rank3]: here"),
])
def test_rank_prefixes(line: str, rank: int | None, rest: str) -> None:
    decoded = TextDecoder("plain").decode(line.encode(), 0, len(line) + 1)
    assert decoded is not None
    assert (decoded.rank, decoded.text) == (rank, rest)


def test_json_lines() -> None:
    decoder = TextDecoder("auto")
    raw = json.dumps({"time": "2026-11-29T05:00:00Z", "levelname": "ERROR", "msg": "boom\n", "rank": "7"})
    line = decoder.decode(raw.encode(), 10, 10 + len(raw) + 1)
    assert line is not None and line.structured
    assert (line.text, line.level, line.rank, line.timestamp) == ("boom", "error", 7, 1795928400.0)
    millis = decoder.decode(b'{"ts": 1795928400500, "message": "x"}', 0, 1)
    assert millis is not None and millis.timestamp == 1795928400.5
    no_message = decoder.decode(b'{"step": 3, "loss": 0.2}', 0, 1)
    assert no_message is not None and no_message.text == '{"step": 3, "loss": 0.2}'
    broken = decoder.decode(b'{"not json', 0, 1)
    assert broken is not None and not broken.structured and broken.text == '{"not json'
    plain = TextDecoder("plain").decode(b'{"message": "x"}', 0, 1)
    assert plain is not None and not plain.structured


def test_invalid_utf8_and_nul_bytes_become_replacement_characters() -> None:
    assert clean_text(b"ok \xff\xfe bad \x00 nul\r") == "ok \ufffd\ufffd bad \ufffd nul"
    line = TextDecoder().decode(b"\x00\x00\x00binary\xc3", 0, 10)
    assert line is not None and "\x00" not in line.text and line.text.endswith("binary\ufffd")


def test_cri_partial_lines_are_joined_per_stream() -> None:
    decoder = CriDecoder(max_line_bytes=1024)
    lines = [
        b"2016-10-06T00:17:09.669794202Z stdout P First part ",
        b"2016-10-06T00:17:09.669794203Z stderr F an error line",
        b"2016-10-06T00:17:09.669794204Z stdout P second part ",
        b"2016-10-06T00:17:09.669794205Z stdout F last part",
        b"2016-10-06T00:17:10Z stdout F ",
    ]
    out = []
    offset = 0
    for raw in lines:
        decoded = decoder.decode(raw, offset, offset + len(raw) + 1)
        offset += len(raw) + 1
        if decoded is not None:
            out.append(decoded)
        if len(out) == 0 and decoded is None:
            assert decoder.pending_offset() == 0
    assert [(line.stream, line.text, line.offset) for line in out] == [
        ("stderr", "an error line", len(lines[0]) + 1),
        ("stdout", "First part second part last part", 0),
        ("stdout", "", offset - len(lines[4]) - 1),
    ]
    assert out[1].timestamp is not None and abs(out[1].timestamp - 1475713029.669794) < 1e-3
    assert decoder.pending_offset() is None


def test_cri_fragments_are_bounded_and_malformed_lines_kept() -> None:
    decoder = CriDecoder(max_line_bytes=64)
    first = decoder.decode(b"2016-10-06T00:17:09Z stdout P " + b"a" * 40, 0, 71)
    assert first is None
    second = decoder.decode(b"2016-10-06T00:17:09Z stdout P " + b"b" * 40, 71, 142)
    assert second is not None and second.truncated and len(second.text) == 64
    odd = decoder.decode(b"not a cri line at all", 142, 164)
    assert odd is not None and odd.text == "not a cri line at all" and decoder.malformed == 1
    held = decoder.decode(b"2016-10-06T00:17:09Z stderr P tail without end", 164, 200)
    assert held is None
    assert [line.text for line in decoder.finish(200)] == ["tail without end"]


def test_docker_json_file_fragments() -> None:
    decoder = DockerDecoder(max_line_bytes=1 << 20)
    part = json.dumps({"log": "x" * 16384, "stream": "stdout", "time": "2016-10-05T00:00:30.082640485Z"})
    rest = json.dumps({"log": "tail\n", "stream": "stdout", "time": "2016-10-05T00:00:30.082640486Z"})
    err = json.dumps({"log": "[rank1]: RuntimeError: boom\n", "stream": "stderr",
                      "time": "2016-10-05T00:00:31Z"})
    assert decoder.decode(part.encode(), 0, len(part) + 1) is None
    assert decoder.pending_offset() == 0
    errline = decoder.decode(err.encode(), 1, 2)
    assert errline is not None
    assert (errline.stream, errline.rank, errline.text) == ("stderr", 1, "RuntimeError: boom")
    joined = decoder.decode(rest.encode(), 3, 4)
    assert joined is not None and joined.text == "x" * 16384 + "tail" and joined.offset == 0
    assert decoder.decode(b"garbage", 5, 6) is not None and decoder.malformed == 1


def test_pod_labels_from_paths() -> None:
    uid = "0f0e0d0c-1111-2222-3333-444455556666"
    assert pod_labels(f"/var/log/pods/ml_trainer-0_{uid}/pytorch/0.log") == {
        "namespace": "ml", "pod": "trainer-0", "pod_uid": uid, "container": "pytorch"}
    link = "/var/log/containers/trainer-0_ml_pytorch-" + "a" * 64 + ".log"
    assert pod_labels(link) == {"pod": "trainer-0", "namespace": "ml", "container": "pytorch",
                                "container_id": "a" * 64}
    assert pod_labels("/data/jobs/4711/train.log") == {}
