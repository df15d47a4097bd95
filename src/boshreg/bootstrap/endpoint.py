"""The registry endpoint: one parser for every place that reads or prints one.

Operators write the endpoint two ways: a URL carrying ``user:password@``, or a bare URL plus
separate ``user`` and ``password`` keys. Both must end as the same value, and its printed form must
never carry the password. Standard library only: this module ships into VMs with the agent.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from boshreg.bootstrap.net import ip_or_none, url_host
from boshreg.errors import BoshregError

DEFAULT_PORTS = {"http": 80, "https": 443}
REDACTED = "***"

_EXAMPLE = "http://admin:<password>@10.0.0.5:25777"


class EndpointError(BoshregError, ValueError):
    """An endpoint that cannot be used; the message names the key to set and shows an example."""


@dataclass(frozen=True)
class Endpoint:
    """A validated registry endpoint; ``str()`` is the redacted form, safe for any output."""

    scheme: str
    host: str
    port: int
    user: str | None = None
    password: str | None = None

    @property
    def has_credentials(self) -> bool:
        return self.user is not None and self.password is not None

    @property
    def netloc_host(self) -> str:
        """The host as it stands in a URL: IPv6 literals in brackets."""
        return url_host(self.host)

    @property
    def base_url(self) -> str:
        """The URL without credentials, default port left out."""
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{self.netloc_host}{port}"

    def url(self) -> str:
        """The full URL with percent-encoded credentials, as an agent needs it in its user data."""
        if not self.has_credentials:
            return self.base_url
        userinfo = f"{quote(self.user or '', safe='')}:{quote(self.password or '', safe='')}@"
        return self.base_url.replace("://", f"://{userinfo}", 1)

    def redacted(self) -> str:
        """The URL with the password replaced, for logs, errors and reports."""
        if self.user is None:
            return self.base_url
        userinfo = f"{quote(self.user, safe='')}:{REDACTED}@"
        return self.base_url.replace("://", f"://{userinfo}", 1)

    def settings_url(self, instance_id: str, *, redacted: bool = False) -> str:
        """Where bosh-agent GETs its settings: ``<endpoint>/instances/<id>/settings``.

        ``redacted=True`` gives the form for messages: with the user, the password replaced.
        """
        base = self.redacted() if redacted else self.base_url
        return f"{base}/instances/{quote(instance_id, safe='')}/settings"

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"Endpoint({self.redacted()!r})"


_UNPARSABLE_WITH_CREDENTIALS = (
    "a '/', '#' or '?' in the password must be written %2F, %23, %3F; an IPv6 host goes in [brackets]"
)


def parse_endpoint(
    url: str | None,
    user: str | None = None,
    password: str | None = None,
    *,
    key: str = "registry.endpoint",
    require_credentials: bool = True,
) -> Endpoint:
    """Parse an endpoint written either way; ``key`` names the setting in every error."""
    if url is None or not url.strip():
        raise EndpointError(
            f"{key} is missing",
            f"set it, e.g. {key}: {_EXAMPLE}",
        )
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        # The parser's own words quote what it took for a port or a host, which may be a piece of the
        # password (a '/', '#' or '?' in it ends the host part early): they are shown only without one.
        reason = str(exc) if "@" not in text else _UNPARSABLE_WITH_CREDENTIALS
        raise EndpointError(
            f"{key} is not a valid URL ({redact_url(text)}: {reason})", f"write it as {_EXAMPLE}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        shown = f"'{scheme}'" if scheme else "none"
        raise EndpointError(
            f"{key} has scheme {shown}; the agent only speaks http and https",
            f"write it as {_EXAMPLE}",
        )
    host = parts.hostname
    if not host:
        raise EndpointError(f"{key} has no host ({redact_url(text)})", f"write it as {_EXAMPLE}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EndpointError(
            f"{key} has a path, query or fragment ({redact_url(text)}); the agent appends "
            "/instances/<id>/settings to the endpoint and would mangle it",
            f"give only scheme, host and port, e.g. {_EXAMPLE}",
        )
    url_user = unquote(parts.username) if parts.username is not None else None
    url_password = unquote(parts.password) if parts.password is not None else None
    final_user = _merge(url_user, user, f"{key} user", "registry.user")
    final_password = _merge(url_password, password, f"{key} password", "registry.password")
    if require_credentials and (final_user is None or final_password is None):
        missing = "no credentials" if final_user is None else f"a user ({final_user}) but no password"
        raise EndpointError(
            f"{key} has {missing} ({redact_url(text)}); the agent would be refused",
            f"put them in the URL ({_EXAMPLE}) or set registry.user and registry.password",
        )
    return Endpoint(
        scheme=scheme,
        host=_normalize_host(host),
        port=port if port is not None else DEFAULT_PORTS[scheme],
        user=final_user,
        password=final_password,
    )


def _merge(in_url: str | None, separate: str | None, what: str, separate_key: str) -> str | None:
    if in_url is not None and separate is not None and in_url != separate:
        raise EndpointError(
            f"{what} is given twice, differently (in the URL and as {separate_key})",
            f"keep one of them, e.g. drop {separate_key}",
        )
    return in_url if in_url is not None else separate


def _normalize_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


# The authority runs to the first character that really ends it; for redaction, a URL runs to the first
# white space. Anything else (control characters, quotes, Unicode spaces) is kept inside: redacting too
# much is safe, too little leaks.
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?# \t\r\n]*)")
_URL_WORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<word>[^ \t\r\n]*)")


def redact_url(text: str) -> str:
    """Replace the password of every ``scheme://user:password@`` in ``text``.

    Userinfo runs to the *last* ``@`` of the word, so a password with a raw ``@``, ``/``, ``?`` or ``#``
    (which end the authority for a URL parser, not for a reader) is still hidden whole.
    """
    if "://" not in text:
        return text  # nothing to redact; this runs on every log line

    def _redact(match: re.Match[str]) -> str:
        userinfo, at, rest = match["word"].rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if not at or not colon:
            return match[0]
        return f"{match['scheme']}{user}:{REDACTED}@{rest}"

    return _URL_WORD.sub(_redact, text)


OLD_DEFAULT_PORT = 25695  # the port of the old deployer's default endpoint, http://admin:admin@localhost:25695
_WELL_KNOWN = {("admin", "admin")}


@dataclass(frozen=True)
class EndpointWarning:
    """Something that will likely stop VMs from using an endpoint, and what to do about it.

    ``fatal``: an agent given this endpoint cannot boot (it reaches itself, or cannot parse the URL);
    the others are risks an operator should know about.
    """

    problem: str
    fix: str
    code: str = ""
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.problem}; {self.fix}"


# What Go's net/url accepts in userinfo (bosh-agent parses the endpoint with it); anything else must be
# percent-encoded, or the agent fails with "net/url: invalid userinfo".
_GO_USERINFO = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._:~!$&'()*+,;=%@")
_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def userinfo_warning(raw_url: str) -> EndpointWarning | None:
    """A warning when the URL's ``user:password@`` is not percent-encoded as the agent's parser needs."""
    authority = _AUTHORITY.match(raw_url.strip())
    if authority is None:
        return None
    userinfo, at, _host = authority["authority"].rpartition("@")
    if not at:
        return None
    bad = sorted({char for char in userinfo if char not in _GO_USERINFO})
    if not bad and not _PERCENT_ESCAPE.search(userinfo):
        return None
    shown = ", ".join(repr(char) for char in bad) if bad else "a '%' that starts no %XX escape"
    return EndpointWarning(
        f"{redact_url(raw_url)}: the credentials hold {shown} unencoded; the agent's URL parser refuses them",
        "percent-encode the user and password in the URL (e.g. `python3 -c 'import urllib.parse,sys; "
        'print(urllib.parse.quote(sys.argv[1], safe=""))\' PASSWORD`), or let `boshreg userdata render` write it',
        code="unencoded-credentials",
        fatal=True,
    )


def reachability_warnings(
    endpoint: Endpoint, *, raw: str | None = None, resolve: bool = True, timeout: float = 2.0
) -> list[EndpointWarning]:
    """Why VMs may fail to reach or use ``endpoint``; empty when nothing looks wrong from here.

    ``raw``: the endpoint as written (in user data or a manifest), checked for unencoded credentials.
    """
    warnings: list[EndpointWarning] = []
    where = endpoint.redacted()
    routable_fix = f"give the registry host's address on the VMs' network, e.g. {_EXAMPLE}"
    address = ip_or_none(endpoint.host)
    if endpoint.host == "localhost" or (address is not None and address.is_loopback):
        warnings.append(
            EndpointWarning(
                f"{where} is a loopback address: a VM connecting to it reaches itself, not the registry "
                "(only a deployer's SSH tunnel makes that work)",
                routable_fix,
                code="loopback",
                fatal=True,
            )
        )
    elif address is not None and address.is_unspecified:
        warnings.append(
            EndpointWarning(
                f"{where}: {endpoint.host} is a listen-on-all address, not one to connect to",
                routable_fix,
                code="unspecified",
                fatal=True,
            )
        )
    elif address is None and resolve:
        resolved = _resolve(endpoint.host, endpoint.port, timeout)
        if resolved is None:
            warnings.append(
                EndpointWarning(
                    f"{where}: {endpoint.host} does not resolve here",
                    "make sure VMs resolve it (the user data's dns.nameserver), or give an IP address",
                    code="unresolvable",
                )
            )
        elif resolved and all(_is_loopback_ip(ip) for ip in resolved):
            warnings.append(
                EndpointWarning(
                    f"{where}: {endpoint.host} resolves to loopback here ({', '.join(resolved)})",
                    routable_fix,
                    code="resolves-to-loopback",
                )
            )
    if endpoint.port == OLD_DEFAULT_PORT:
        warnings.append(
            EndpointWarning(
                f"{where} uses port {OLD_DEFAULT_PORT}, the old deployer's default",
                "use the port the registry listens on (http.port, 25777 by default)",
                code="old-port",
            )
        )
    if (endpoint.user, endpoint.password) in _WELL_KNOWN:
        warnings.append(
            EndpointWarning(
                f"{where} uses the well-known credentials admin:admin: anyone who can reach the registry can read "
                "every VM's settings",
                "use a generated password (`boshreg serve` prints one in its registry block)",
                code="well-known-credentials",
            )
        )
    unencoded = userinfo_warning(raw) if raw is not None else None
    if unencoded is not None:
        warnings.append(unencoded)
    return warnings


def _is_loopback_ip(text: str) -> bool:
    address = ip_or_none(text)
    return address is not None and address.is_loopback


def _resolve(host: str, port: int, timeout: float) -> list[str] | None:
    """The addresses ``host`` resolves to here, or None; bounded by ``timeout`` (getaddrinfo has none)."""
    result: list[list[str] | None] = [None]

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result[0] = sorted({str(info[4][0]) for info in infos})
        except OSError:
            result[0] = None

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    return result[0]
