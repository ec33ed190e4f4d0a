"""Pure rules of device approval: phrases and their choices, pairing codes,
device credentials, reading a device's answer, judging it, the ETag."""

from __future__ import annotations

import re
import time

import pytest

from forwardauth.devices import approvals, credentials, words
from forwardauth.devices.approvals import Answer, Decision, Verdict, etag, etag_matches, judge, new_request
from forwardauth.state.records import ApprovalState

T = 1_700_000_000.0


# --- phrases ---------------------------------------------------------------------

def test_word_list_is_common_lowercase_words_without_repeats():
    assert len(words.WORDS) == len(set(words.WORDS)) == 256
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in words.WORDS)


def test_phrase_is_three_distinct_words():
    for _ in range(200):
        p = words.phrase().split()
        assert len(p) == 3 and len(set(p)) == 3 and set(p) <= set(words.WORDS)


def test_choices_hold_the_right_phrase_once_and_two_decoys_sharing_no_word():
    for _ in range(300):
        right = words.phrase()
        c = words.choices(right)
        assert len(c) == 3 and c.count(right) == 1
        all_words = [w for p in c for w in p.split()]
        assert len(all_words) == len(set(all_words)) == 9


def test_the_right_phrase_is_not_always_in_the_same_place():
    places = {words.choices(r).index(r) for r in (words.phrase() for _ in range(200))}
    assert places == {0, 1, 2}


def test_normalise_ignores_case_and_spacing():
    assert words.normalise("  Amber   RIVER candle ") == "amber river candle"


# --- pairing codes and credentials -------------------------------------------------

def test_pairing_code_shape_and_normalising():
    code = credentials.new_pairing_code()
    assert re.fullmatch(r"[A-HJ-NP-Z2-9]{16}", code)
    shown = credentials.format_code(code)
    assert re.fullmatch(r"([A-Z2-9]{4}-){3}[A-Z2-9]{4}", shown)
    assert credentials.normalise_code(shown.lower()) == code
    assert credentials.normalise_code(" ".join(shown.split("-"))) == code
    assert credentials.code_hash(code) != credentials.code_hash(credentials.new_pairing_code())
    assert code not in credentials.code_hash(code)


@pytest.mark.parametrize("text", ["", "ABCD", "ABCD-EFGH-JKLM-NPQ0", "ABCD-EFGH-JKLM-NPQR-S", "ABCDEFGHJKLMNPQI",
                                  "x" * 65, None, 12])
def test_not_a_pairing_code(text):
    assert credentials.normalise_code(text) is None


def test_credential_is_shown_once_stored_hashed_and_checked():
    new = credentials.new_credential()
    assert re.fullmatch(r"fad1_[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{43}", new.token)
    secret = new.token.split(".", 1)[1]
    assert secret not in new.secret_hash and new.device_id in new.token
    presented = credentials.from_authorization("Bearer " + new.token)
    assert presented is not None and presented.device_id == new.device_id
    assert presented.matches(new.secret_hash)
    other = credentials.new_credential(new.device_id)
    assert not credentials.parse_credential(other.token).matches(new.secret_hash)  # type: ignore[union-attr]


@pytest.mark.parametrize("header", [None, "", "Basic Zm9vOmJhcg==", "Bearer fa1_abc", "Bearer fad1_short.x",
                                    "Bearer fad1_" + "a" * 16 + "." + "b" * 42, "Bearer " + "x" * 400])
def test_not_a_device_credential(header):
    assert credentials.from_authorization(header) is None


def test_bearer_scheme_is_case_insensitive():
    new = credentials.new_credential()
    assert credentials.from_authorization("bEaReR  " + new.token) is not None


# --- requests, answers, judging ----------------------------------------------------

def req(**kw):
    r = new_request("alice", "app.example.com", "/admin?token=secret", "192.0.2.7", "Mozilla/5.0\x00\n", "mfa",
                    kw.pop("now", T), kw.pop("ttl", 120))
    return r


def test_new_request_keeps_what_the_device_shows():
    r = req()
    assert approvals.valid_request_id(r.id)
    assert (r.host, r.path, r.client, r.user_agent, r.level) == ("app.example.com", "/admin", "192.0.2.7",
                                                                   "Mozilla/5.0", "mfa")
    assert (r.created, r.expires, r.state) == (T, T + 120, ApprovalState.PENDING)
    assert r.phrase in r.choices and len(r.choices) == 3
    shown = approvals.request_view(r)
    assert shown["phrases"] == list(r.choices) and "phrase" not in shown and r.phrase not in str(
        {k: v for k, v in shown.items() if k != "phrases"})


def test_long_user_agent_is_cut():
    r = new_request("a", "h", "/", None, "x" * 1000, "mfa", T, 60)
    assert len(r.user_agent) == 256 and r.user_agent.endswith("\u2026")


@pytest.mark.parametrize("body, message", [
    ([], "body: must be a JSON object"),
    ({}, 'decision: must be "approve" or "deny"'),
    ({"decision": "yes"}, 'decision: must be "approve" or "deny"'),
    ({"decision": "approve"}, "phrase: required to approve (the phrase the browser shows)"),
    ({"decision": "approve", "phrase": ""}, "phrase: must be a string of 1 to 200 characters"),
    ({"decision": "approve", "phrase": 3}, "phrase: must be a string of 1 to 200 characters"),
    ({"decision": "approve", "phrase": "a" * 201}, "phrase: must be a string of 1 to 200 characters"),
    ({"decision": "deny", "why": "no"}, "unknown field: why"),
])
def test_bad_answers(body, message):
    assert approvals.read_answer(body) == message


def test_good_answers():
    assert approvals.read_answer({"decision": "deny"}) == Answer(Decision.DENY, None)
    assert approvals.read_answer({"decision": "approve", "phrase": "a b c"}) == Answer(Decision.APPROVE, "a b c")


@pytest.mark.parametrize("body, message", [
    ("x", "body: must be a JSON object"),
    ({"name": "phone"}, "code: required (the pairing code the devices page shows)"),
    ({"code": "", "name": "phone"}, "code: required (the pairing code the devices page shows)"),
    ({"code": "ABCD"}, "name: must be 1 to 64 printable characters"),
    ({"code": "ABCD", "name": "  "}, "name: must be 1 to 64 printable characters"),
    ({"code": "ABCD", "name": "a\nb"}, "name: must be 1 to 64 printable characters"),
    ({"code": "ABCD", "name": "n" * 65}, "name: must be 1 to 64 printable characters"),
    ({"code": "ABCD", "name": "n", "user": "bob"}, "unknown field: user"),
])
def test_bad_pairing_bodies(body, message):
    assert approvals.read_pairing(body) == message


def test_judge():
    r = req()
    wrong = next(c for c in r.choices if c != r.phrase)
    assert judge(r, Answer(Decision.APPROVE, r.phrase.upper()), T + 1) is Verdict.APPROVED
    assert judge(r, Answer(Decision.APPROVE, wrong), T + 1) is Verdict.WRONG_PHRASE
    assert judge(r, Answer(Decision.APPROVE, "not even a choice"), T + 1) is Verdict.WRONG_PHRASE
    assert judge(r, Answer(Decision.DENY, None), T + 1) is Verdict.DENIED
    assert judge(r, Answer(Decision.APPROVE, r.phrase), T + 120) is Verdict.NOT_PENDING  # expired
    from dataclasses import replace

    decided = replace(r, state=ApprovalState.DENIED)
    assert judge(decided, Answer(Decision.APPROVE, r.phrase), T + 1) is Verdict.NOT_PENDING
    assert approvals.resolution(Verdict.WRONG_PHRASE) == (ApprovalState.DENIED, "wrong_phrase")
    assert approvals.resolution(Verdict.DENIED) == (ApprovalState.DENIED, "denied_on_device")
    assert approvals.resolution(Verdict.APPROVED) == (ApprovalState.APPROVED, None)


def test_etag_names_the_set_not_the_order():
    a, b = req(), req()
    assert etag([a, b]) == etag([b, a]) != etag([a]) != etag([])
    assert re.fullmatch(r'"[A-Za-z0-9_-]{16}"', etag([]))
    assert etag([]) == etag(())  # the empty set is one value


@pytest.mark.parametrize("header, matches", [
    (None, False), ("", False), ('"other"', False), ("*", True), ('"X"', True), ('W/"X"', True),
    ('"a", "X"', True), ('"a" , W/"X" ', True), ('X', False),
])
def test_if_none_match(header, matches):
    assert etag_matches(header, '"X"') is matches


def test_expiry_is_strict():
    r = req(now=time.time(), ttl=10)
    assert r.live(r.expires - 0.001) and not r.live(r.expires)
    assert r.outcome(r.expires) is ApprovalState.EXPIRED
