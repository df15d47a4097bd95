"""``boshreg agent resolve`` (also ``python -m boshreg.agent resolve`` inside a VM): standard library only.

Settings go to standard output (or --out, written with mode 0600: they hold credentials); the trace
goes to standard error, as text or, with --json, as JSON. Exit 0 with settings, 1 without, 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from boshreg.agent.resolver import (
    DEFAULT_DEADLINE,
    KEY_INSTANCE_ID,
    KEY_SERVER_NAME,
    ResolveError,
    resolve,
    settings_json,
)
from boshreg.agent.sources import (
    DEFAULT_METADATA_URL,
    DEFAULT_USER_DATA_FILE,
    ConfigDriveSource,
    FileSource,
    MetadataServiceSource,
    SettingsSource,
)

SOURCE_KINDS = ("metadata", "config-drive", "file")
EXIT_NO_SETTINGS = 1
EXIT_USAGE = 2


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where to look, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"boshreg: error: {message} (see '{self.prog} --help')\n")


def build_parser(prog: str = "boshreg agent") -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=prog, description="Resolve this VM's settings as bosh-agent does.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    resolve_parser = commands.add_parser(
        "resolve",
        help="find the user data, then the settings; print the settings",
        description="Find the user data (metadata service, config drive, file), then the settings (from the "
        "user data itself, or the registry it names), within one deadline. Settings go to standard output, the "
        "trace to standard error.",
        epilog="example: boshreg agent resolve --source metadata --metadata-url http://127.0.0.1:8775 --json",
    )
    resolve_parser.add_argument(
        "--source",
        action="append",
        choices=SOURCE_KINDS,
        dest="sources",
        help="a source to try, in order (repeatable; default: metadata, config-drive, file)",
    )
    resolve_parser.add_argument(
        "--metadata-url",
        default=DEFAULT_METADATA_URL,
        help=f"metadata service base URL (default {DEFAULT_METADATA_URL})",
    )
    resolve_parser.add_argument(
        "--config-drive",
        metavar="PATH",
        help="mounted directory, ISO image or device (default: the device labelled config-2)",
    )
    resolve_parser.add_argument(
        "--user-data-file",
        metavar="PATH",
        default=DEFAULT_USER_DATA_FILE,
        help=f"user data file (default {DEFAULT_USER_DATA_FILE})",
    )
    resolve_parser.add_argument(
        "--key",
        choices=(KEY_SERVER_NAME, KEY_INSTANCE_ID),
        default=KEY_SERVER_NAME,
        help="registry key: server-name (OpenStack, default) or instance-id (AWS)",
    )
    resolve_parser.add_argument(
        "--deadline",
        type=_seconds,
        default=DEFAULT_DEADLINE,
        help=f"give up after this many seconds (default {DEFAULT_DEADLINE:g})",
    )
    resolve_parser.add_argument("--cacert", metavar="FILE", help="CA certificate for an https registry")
    resolve_parser.add_argument(
        "--bind",
        metavar="ADDR",
        type=_local_address,
        help="connect from this local address (a VM with several interfaces; or one test cloud VM, "
        "as in `boshreg testcloud metadata --vm NAME=DIR@ADDR`)",
    )
    resolve_parser.add_argument("--out", metavar="FILE", help="write the settings here (mode 0600) instead of stdout")
    resolve_parser.add_argument("--json", action="store_true", help="write the trace as JSON")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 3600 seconds")
    return value


def _local_address(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address of this machine") from None
    with socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET) as probe:
        try:
            probe.bind((text, 0))
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"{text} is not an address of this machine ({exc.strerror})") from None
    return text


def sources_from(args: argparse.Namespace) -> list[SettingsSource]:
    chosen = args.sources or list(SOURCE_KINDS)
    built: dict[str, SettingsSource] = {
        "metadata": MetadataServiceSource(args.metadata_url, source_address=args.bind),
        "config-drive": ConfigDriveSource(args.config_drive),
        "file": FileSource(args.user_data_file),
    }
    return [built[kind] for kind in dict.fromkeys(chosen)]


def main(argv: Sequence[str] | None = None, prog: str = "boshreg agent") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        resolution = resolve(
            sources_from(args), key=args.key, deadline=args.deadline, cacert=args.cacert, source_address=args.bind
        )
    except ResolveError as exc:
        _report(exc.trace.to_json() | {"error": str(exc)} if args.json else f"{exc.trace.to_text()}", args.json)
        if not args.json:
            print(f"boshreg: error: {exc}", file=sys.stderr)
        return EXIT_NO_SETTINGS
    text = settings_json(resolution.settings)
    if args.out:
        _write_private(Path(args.out), text + "\n")
    else:
        print(text)
    _report(resolution.trace.to_json() if args.json else resolution.trace.to_text(), args.json)
    return 0


def _report(trace: object, as_json: bool) -> None:
    print(json.dumps(trace, indent=2) if as_json else trace, file=sys.stderr)


def _write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the owner only: settings carry the agent's credentials."""
    fd, temporary = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
