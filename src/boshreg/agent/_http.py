"""The agent's one way of building an HTTP opener: never a proxy, optionally a CA and a local address.

The metadata service is link-local and the registry is on the director's network: neither is reached
through a proxy from the environment. A local (source) address matters where the answer depends on who
asks: the metadata service tells VMs apart by their address, so a VM with several interfaces, or one
test cloud VM among many on one host, must connect from its own. Standard library only.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.request


class _BoundHTTPHandler(urllib.request.HTTPHandler):
    """Plain HTTP connections opened from one local address."""

    def __init__(self, source_address: str) -> None:
        super().__init__()
        self._source = (source_address, 0)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(http.client.HTTPConnection, req, source_address=self._source)


class _BoundHTTPSHandler(urllib.request.HTTPSHandler):
    """HTTPS connections opened from one local address, verified with the given context."""

    def __init__(self, source_address: str, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self._source = (source_address, 0)
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(http.client.HTTPSConnection, req, context=self._tls, source_address=self._source)


def build_opener(*, source_address: str | None = None, cacert: str | None = None) -> urllib.request.OpenerDirector:
    """An opener that ignores proxy variables, trusts ``cacert`` if given and connects from ``source_address``."""
    context = ssl.create_default_context(cafile=cacert) if cacert is not None else None
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if source_address is not None:
        handlers += [_BoundHTTPHandler(source_address), _BoundHTTPSHandler(source_address, context)]
    elif context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)
