"""core.jsonstrict: one reading only (no key twice, no NaN), bounded nesting, messages that quote nothing."""

from __future__ import annotations

import pytest

from forwardauth.core.jsonstrict import JsonError, depth, loads


@pytest.mark.parametrize("raw, value", [
    (b'{"a": 1, "b": [true, null, "x"]}', {"a": 1, "b": [True, None, "x"]}),
    (b"[]", []),
    (b'"s\\u00e9"', "s\u00e9"),
    (b'{"a": {"a": 1}, "b": {"a": 2}}', {"a": {"a": 1}, "b": {"a": 2}}),  # the same key in two objects
    ("[1.5e3]", [1500.0]),
])
def test_ordinary_documents(raw, value):
    assert loads(raw) == value


@pytest.mark.parametrize("raw, message", [
    (b'{"sub": "alice", "sub": "admin"}', "a key appears twice in one object"),
    (b'{"a": {"sub": "x", "sub": "x"}}', "a key appears twice in one object"),
    (b"[NaN]", "NaN is not a JSON number"),
    (b"[-Infinity]", "-Infinity is not a JSON number"),
    (b"[" * 17 + b"]" * 17, "nested deeper than 16 levels"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 16 levels"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested deeper than 16 levels"),
    (b"\xff\xfe", "not UTF-8"),
    (b"{", "not valid JSON"),
    (b"1" * 5000, "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_refused(raw, message):
    with pytest.raises(JsonError) as err:
        loads(raw)
    assert str(err.value) == message


def test_the_depth_limit_is_a_parameter():
    assert loads(b"[[[1]]]", max_depth=3) == [[[1]]]
    with pytest.raises(JsonError):
        loads(b"[[[[1]]]]", max_depth=3)


def test_depth():
    assert [depth(v, 10) for v in (1, [], {}, [[]], {"a": [{"b": 1}]})] == [0, 1, 1, 2, 3]
    assert depth([[[[[[]]]]]], 2) == 3  # stops counting past the limit
