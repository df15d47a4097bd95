"""Registry endpoints: both ways operators write them, precise errors, and redaction that never leaks."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from boshreg.bootstrap.endpoint import Endpoint, EndpointError, parse_endpoint, redact_url


def test_credentials_in_the_url() -> None:
    endpoint = parse_endpoint("http://admin:secret@10.0.0.5:25777")
    assert endpoint == Endpoint("http", "10.0.0.5", 25777, "admin", "secret")


def test_credentials_given_separately() -> None:
    assert parse_endpoint("http://10.0.0.5:25777", "admin", "secret") == parse_endpoint(
        "http://admin:secret@10.0.0.5:25777"
    )


def test_the_same_credentials_given_both_ways_are_accepted() -> None:
    assert parse_endpoint("http://admin:secret@h:1", "admin", "secret").password == "secret"


def test_percent_encoded_credentials_are_decoded_and_reencoded() -> None:
    endpoint = parse_endpoint("http://ad%3Amin:p%40ss%2Fw%3Ard@h:25777")
    assert (endpoint.user, endpoint.password) == ("ad:min", "p@ss/w:rd")
    assert endpoint.url() == "http://ad%3Amin:p%40ss%2Fw%3Ard@h:25777"


def test_ipv6_https_and_default_ports() -> None:
    endpoint = parse_endpoint("https://u:p@[fd00::5]")
    assert (endpoint.host, endpoint.port) == ("fd00::5", 443)
    assert endpoint.base_url == "https://[fd00::5]"
    assert endpoint.settings_url("vm-1") == "https://[fd00::5]/instances/vm-1/settings"


def test_trailing_slash_is_harmless() -> None:
    assert parse_endpoint("http://u:p@h:25777/").base_url == "http://h:25777"


@pytest.mark.parametrize(
    ("url", "user", "password", "expected"),
    [
        (None, None, None, "registry.endpoint is missing"),
        ("", None, None, "registry.endpoint is missing"),
        ("http://10.0.0.5:25777", None, None, "has no credentials"),
        ("http://admin@10.0.0.5:25777", None, None, "has a user (admin) but no password"),
        ("http://a:one@h:1", None, "two", "password is given twice"),
        ("ftp://a:b@h", None, None, "scheme 'ftp'"),
        ("10.0.0.5:25777", None, None, "scheme"),
        ("http://a:b@h:1/registry", None, None, "path, query or fragment"),
        ("http://a:b@h:1?x=1", None, None, "path, query or fragment"),
        ("http://a:b@h:99999", None, None, "not a valid URL"),
        ("http://a:b@:1", None, None, "no host"),
    ],
)
def test_unusable_endpoints_name_the_key_and_show_an_example(
    url: str | None, user: str | None, password: str | None, expected: str
) -> None:
    with pytest.raises(EndpointError) as raised:
        parse_endpoint(url, user, password)
    assert expected in str(raised.value)
    assert "registry." in str(raised.value)
    assert "b@" not in str(raised.value)


@pytest.mark.parametrize("url", ["http://admin:s3cr/et@h:1", "http://admin:s3cr#et@h:1", "http://admin:s3cr?et@[::1:1"])
def test_no_piece_of_a_password_is_shown_when_the_url_cannot_be_parsed(url: str) -> None:
    with pytest.raises(EndpointError) as raised:
        parse_endpoint(url)
    said = str(raised.value)
    assert "s3cr" not in said  # the parser took a piece of the password for the port or the host
    assert "%2F, %23, %3F" in said


def test_credentials_can_be_optional() -> None:
    assert not parse_endpoint("http://h:1", require_credentials=False).has_credentials


def test_printing_an_endpoint_never_shows_the_password() -> None:
    endpoint = parse_endpoint("http://admin:hunter2@h:1")
    for text in (str(endpoint), repr(endpoint), f"{endpoint}", endpoint.redacted()):
        assert "hunter2" not in text
        assert "admin:***@h:1" in text


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True) | st.ip_addresses().map(str)
users = st.text(min_size=1, max_size=20, alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]))
passwords = st.text(min_size=4, max_size=40, alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]))


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=hosts,
    port=st.integers(1, 65535),
    user=users,
    password=passwords,
)
def test_url_round_trips_through_parse(scheme: str, host: str, port: int, user: str, password: str) -> None:
    endpoint = Endpoint(
        scheme,
        parse_endpoint(f"http://{_bracket(host)}", require_credentials=False).host,
        port,
        user,
        password,
    )
    assert parse_endpoint(endpoint.url()) == endpoint


@given(host=hosts, user=users, password=passwords)
def test_no_password_survives_redaction(host: str, user: str, password: str) -> None:
    endpoint = parse_endpoint(f"http://{_bracket(host)}:25777", user, password)
    assume(password not in f"{user} {host} {endpoint.base_url} ***")
    assert password not in endpoint.redacted()
    assert password not in redact_url(f"GET {endpoint.url()}/instances/x/settings failed")


@given(
    password=st.text(
        min_size=4,
        max_size=30,
        alphabet=st.characters(codec="ascii", exclude_characters="/?#\x00 \t\n\r\x0b\x0c"),
    )
)
def test_raw_passwords_in_log_text_are_redacted(password: str) -> None:
    assume("@" not in password[:1])
    text = f"connecting to http://admin:{password}@db.example:5432 failed"
    assume(password not in "connecting to http://admin:***@db.example:5432 failed")
    assert password not in redact_url(text)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
