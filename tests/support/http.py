"""HTTP from a chosen loopback source address, as another VM (or an intruder) would send it."""

from __future__ import annotations

import base64
import http.client

import httpx


def get_from(url: str, source_ip: str = "127.0.0.1", auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    parsed = httpx.URL(url)
    connection = http.client.HTTPConnection(parsed.host, parsed.port, timeout=10, source_address=(source_ip, 0))
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        connection.request("GET", parsed.raw_path.decode(), headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
