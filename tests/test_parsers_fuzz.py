"""Any input to a parser yields a value or that module's own error type, never another exception."""

from __future__ import annotations

import base64
import json

import psutil
from hypothesis import given, settings
from hypothesis import strategies as st

from boshreg.agent.registry import RegistryFetchError
from boshreg.agent.registry import decode_answer as decode_registry_answer
from boshreg.bootstrap.endpoint import EndpointError, parse_endpoint, redact_url
from boshreg.bootstrap.userdata import UserDataError, decode, validate
from boshreg.bootstrap.verdict import Word
from boshreg.cpi import RequestError, inspect_request
from boshreg.registry.app import settings_answer

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@given(st.text(max_size=200), st.none() | st.text(max_size=20), st.none() | st.text(max_size=20))
def test_parse_endpoint_never_raises_anything_else(url: str, user: str | None, password: str | None) -> None:
    try:
        endpoint = parse_endpoint(url, user, password)
    except EndpointError:
        return
    assert endpoint.password is not None
    assert redact_url(endpoint.url()) == endpoint.redacted()


@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_user_data_never_raises_anything_else(raw: bytes) -> None:
    try:
        document = decode(raw)
    except UserDataError:
        return
    assert isinstance(validate(document), list)


server_fields = st.fixed_dictionaries(
    {},
    optional={
        "user_data": st.text(max_size=40)
        | json_values.map(lambda v: base64.b64encode(json.dumps(v).encode()).decode()),
        "config_drive": json_values,
        "personality": st.lists(
            st.fixed_dictionaries({}, optional={"path": st.text(max_size=30) | json_values, "contents": json_values}),
            max_size=3,
        )
        | json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, server_fields, server_fields.map(lambda s: {"server": s})))
def test_inspect_never_raises_anything_else(request: object) -> None:
    try:
        inspection = inspect_request(request)
    except RequestError:
        return
    assert inspection.word in (Word.PORTABLE, Word.PINNED, Word.BROKEN)
    inspection.to_text()
    json.dumps(inspection.to_json())


@given(
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | json_values.map(lambda v: json.dumps({"status": "ok", "settings": json.dumps(v)}).encode())
)
def test_agent_wrapper_decoding_never_raises_anything_else(body: bytes) -> None:
    retryable: bool | None = None
    try:
        settings = decode_registry_answer(body)
    except RegistryFetchError as exc:
        retryable = exc.retryable
    else:
        assert isinstance(settings, dict)
    assert retryable is not True  # a malformed answer does not fix itself: no retry


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300))
def test_a_read_answer_gives_back_the_stored_text_in_the_bytes_it_always_had(stored: str) -> None:
    """The agent decodes ``settings`` to the very text the CPI stored (control characters, quotes, any script);
    the answer's bytes are those of the compact UTF-8 JSON the registry wrote before its encoder was orjson."""
    answer = settings_answer(stored)
    assert json.loads(answer) == {"status": "ok", "settings": stored}
    assert (
        answer == json.dumps({"status": "ok", "settings": stored}, ensure_ascii=False, separators=(",", ":")).encode()
    )


def test_read_answers_take_the_memory_of_their_bytes_and_no_more() -> None:
    """The cache bounds what it keeps by the answers' length (http.cache_bytes): an answer that held a buffer
    twice its length (orjson's own, for 4 KiB settings) would take twice the memory the bound states."""
    process = psutil.Process()
    text = json.dumps({"agent_id": "a" * 36, "blob": "q" * 3900, "quoted": ['a"b'] * 10})
    before = process.memory_info().rss
    kept = [settings_answer(f"{text}{n}") for n in range(10_000)]
    grown = process.memory_info().rss - before
    held = sum(len(answer) for answer in kept)
    assert grown < 1.5 * held, f"{len(kept):,} answers of {held / len(kept):,.0f} bytes took {grown / held:.2f} times"
