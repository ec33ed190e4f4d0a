"""Fuzz targets for device approval's messages (issue 11), added to harness/fuzz.py's TARGETS.

What a device, a phone page or a server sends that devices/ parses: the
pairing and answer bodies (through the strict JSON reader, as the routes
read them), If-None-Match against the pending set's ETag, pairing codes as
a person or a scanner types them, device credentials in Authorization
headers, and (the client's side) Retry-After and the number typed at
`forwardauth device watch`. None of them documents an
exception other than the JSON reader's JsonError: bad input is a message
(a 400's text), None or False.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from harness.fuzz import B64URL, JSON_SCALARS, JSON_VALUES, NOW, Target, mutated, text_or

ANSWER = json.dumps({"decision": "approve", "phrase": "maple river lantern"})
PAIRING = json.dumps({"code": "ABCD-EFGH-JKMN-PQRS", "name": "Anna's phone"})
ETAGS = '"3q2-7wAAAAAAAAAA", W/"zzzzzzzzzzzzzzzz"'
CODE = "abcd efgh-jkmn PQRS"
CREDENTIAL = "Bearer fad1_AAAAAAAAAAAAAAAA." + "B" * 43


def body(base: str, fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy[bytes]:
    """The real body mutated as text, or its fields given any JSON values, or any JSON value at all."""
    structured = st.fixed_dictionaries({}, optional=fields).map(json.dumps)
    return st.one_of(mutated(base), mutated(base), structured, JSON_VALUES.map(json.dumps)).map(
        lambda t: t.encode("utf-8", "surrogatepass"))


def answer_body(raw: bytes) -> object:
    from forwardauth.core import jsonstrict
    from forwardauth.devices.approvals import Answer, read_answer

    got = read_answer(jsonstrict.loads(raw))
    assert isinstance(got, (Answer, str))
    return got


def pairing_body(raw: bytes) -> object:
    from forwardauth.core import jsonstrict
    from forwardauth.devices.approvals import read_pairing
    from forwardauth.devices.credentials import normalise_code

    got = read_pairing(jsonstrict.loads(raw))
    if not isinstance(got, str):
        code, name = got
        assert isinstance(code, str) and isinstance(name, str) and name == name.strip() and name
        normalise_code(code)  # what the service does with it next
    return got


def if_none_match(header: str) -> object:
    from forwardauth.devices.approvals import etag, etag_matches

    current = etag([])
    got = etag_matches(header, current)
    assert isinstance(got, bool)
    assert etag_matches(current, current) and etag_matches(f"W/{current}", current)
    return got


def pairing_code(text: str) -> object:
    from forwardauth.devices.credentials import code_hash, format_code, normalise_code

    got = normalise_code(text)
    if got is not None:  # a code: it reads back the same, formatted or not
        assert normalise_code(format_code(got)) == got and len(code_hash(got)) == 64
    return got


def device_credential(header: str) -> object:
    from forwardauth.devices.credentials import from_authorization, parse_credential, valid_device_id

    got = from_authorization(header)
    if got is not None:
        assert valid_device_id(got.device_id) and not got.matches("0" * 64)
    parse_credential(header)
    return got


def retry_after(value: str) -> object:
    from forwardauth.devices.client import MAX_RETRY_AFTER
    from forwardauth.devices.client import retry_after as parse

    got = parse(value, NOW)
    assert got is None or 0.0 <= got <= MAX_RETRY_AFTER
    return got


def watch_choice(args: tuple[str, list[str]]) -> object:
    from forwardauth.devices.client import answer_of

    choice, phrases = args
    got = answer_of(choice, phrases)
    assert got is None or got["decision"] == "deny" or got["phrase"] in phrases
    return got


DIGITS = st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=4)


def targets() -> list[Target]:
    from forwardauth.core.jsonstrict import JsonError

    anything: Any = st.one_of(JSON_SCALARS, JSON_VALUES)
    return [
        Target("device_answer_body", body(ANSWER, {
            "decision": st.one_of(st.sampled_from(["approve", "deny", "Approve", ""]), anything),
            "phrase": st.one_of(text_or("maple river lantern"), anything), "extra": anything}),
            answer_body, (JsonError,)),
        Target("device_pairing_body", body(PAIRING, {
            "code": st.one_of(text_or("ABCD-EFGH-JKMN-PQRS"), anything),
            "name": st.one_of(text_or("Anna's phone"), st.text(max_size=100), anything), "extra": anything}),
            pairing_body, (JsonError,)),
        Target("device_if_none_match", st.one_of(text_or(ETAGS, B64URL + '"W/, *'), st.just("*")), if_none_match),
        Target("device_pairing_code", text_or(CODE, "ABCDEFGHJKLMNPQRSTUVWXYZ23456789abc -\t01IO"), pairing_code),
        Target("device_credential", text_or(CREDENTIAL, B64URL + ". "), device_credential),
        Target("device_retry_after", st.one_of(text_or("120", "0123456789 "), DIGITS,
                                               text_or("Wed, 21 Oct 2015 07:28:00 GMT")), retry_after),
        Target("device_watch_choice", st.tuples(st.one_of(text_or("2", "0123456789d"), DIGITS),
                                                st.lists(st.text(max_size=20), max_size=3)), watch_choice),
    ]
