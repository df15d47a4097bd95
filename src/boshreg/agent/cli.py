"""``boshreg agent resolve`` (also ``python -m boshreg.agent resolve`` inside a VM): standard library only.

Settings go to standard output (or --output, written with mode 0600: they hold credentials) and the
trace to standard error; with --json, one JSON document on standard output holds the trace, the verdict
and the settings, as every --json of boshreg does. Exit 0 with settings, 1 without, 2 for bad arguments.
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
from typing import Any, NoReturn

from boshreg.agent.agent_json import AgentConfigError, AgentSettings, load_agent_config, retarget
from boshreg.agent.resolver import (
    DEFAULT_DEADLINE,
    KEY_INSTANCE_ID,
    KEY_SERVER_NAME,
    ResolveError,
    resolve,
    settings_json,
)
from boshreg.agent.sources import ConfigDriveSource, FileSource, HttpSource, SettingsSource
from boshreg.bootstrap import nova
from boshreg.bootstrap.verdict import CONFIG_DRIVE, FILE, METADATA, Word
from boshreg.errors import BoshregError

SOURCE_KINDS = (FILE, CONFIG_DRIVE, METADATA)
EXIT_NO_SETTINGS = 1
EXIT_USAGE = 2


class _HelpLikeTheRest(argparse.HelpFormatter):
    """argparse's help in the layout of every other boshreg command (click's): ``Usage:``, ``Options:``."""

    def add_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where to look (JSON under --json), exit 2."""

    as_json = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpLikeTheRest)
        super().__init__(*args, **kwargs)
        self._optionals.title = "Options"
        self._positionals.title = "Commands"

    def error(self, message: str) -> NoReturn:
        fix = f"see '{self.prog} --help'"
        if _OneLineParser.as_json:
            print(json.dumps({"error": message, "fix": fix}))
            self.exit(EXIT_USAGE)
        self.exit(EXIT_USAGE, f"boshreg: error: {message} ({fix})\n")


def build_parser(prog: str = "boshreg agent") -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=prog, description="Resolve this VM's settings as bosh-agent does.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    resolve_parser = commands.add_parser(
        "resolve",
        help="find the user data, then the settings; print the settings",
        description="Walk the sources of the stemcell's agent.json as bosh-agent does (the first that is there "
        "feeds the VM), then get the settings (from the user data itself, or the registry it names), within one "
        f"deadline; judge the VM {Word.PORTABLE}, {Word.PINNED} to its config drive, or {Word.BROKEN}. Settings go to "
        "standard output, the trace and the verdict to standard error; with --json, all three as one JSON document "
        "on standard output.",
        epilog="examples: boshreg agent resolve --metadata-url http://127.0.0.1:8775 --json; "
        "boshreg agent resolve --agent-config agent.json --config-drive drive.iso --metadata-url http://127.0.0.1:8775",
    )
    resolve_parser.add_argument(
        "--agent-config",
        metavar="FILE",
        help=f"the stemcell's agent.json ({nova.AGENT_JSON_PATH}): its Sources in its order, UseServerName for the "
        "registry key (default: the current OpenStack stemcell's: File, ConfigDrive, HTTP)",
    )
    resolve_parser.add_argument(
        "--source",
        action="append",
        choices=SOURCE_KINDS,
        dest="sources",
        help="instead of agent.json: a source to try, in order (repeatable)",
    )
    resolve_parser.add_argument(
        "--metadata-url",
        help=f"the HTTP source's URI (default: agent.json's, {nova.METADATA_URL} on stemcells; give the test "
        "cloud's here)",
    )
    resolve_parser.add_argument(
        "--config-drive",
        metavar="PATH",
        action="append",
        help="the ConfigDrive source's disk path: a device, an ISO image or a mounted directory (repeatable; "
        f"default: {', '.join(nova.CONFIG_DRIVE_DISK_PATHS)})",
    )
    resolve_parser.add_argument(
        "--user-data",
        dest="user_data_file",
        metavar="PATH",
        help=f"a File source reading user data from PATH (e.g. the old personality path {nova.PERSONALITY_PATH})",
    )
    resolve_parser.add_argument(  # the name before boshreg had one vocabulary; kept for scripts, not shown
        "--user-data-file", dest="user_data_file", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    resolve_parser.add_argument(
        "--key",
        choices=(KEY_SERVER_NAME, KEY_INSTANCE_ID),
        help="registry key: server-name (OpenStack) or instance-id (AWS); default: agent.json's UseServerName",
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
    resolve_parser.add_argument(
        "-o", "--output", dest="out", metavar="FILE", help="write the settings here (mode 0600) instead of stdout"
    )
    resolve_parser.add_argument("--out", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    resolve_parser.add_argument(
        "--json",
        action="store_true",
        help="write one JSON document to stdout: the trace, the verdict and the settings (unless --output)",
    )
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


def agent_settings_from(args: argparse.Namespace) -> AgentSettings:
    """The sources to walk: agent.json's (or the stemcell default's), with the options' overrides."""
    base = load_agent_config(args.agent_config, source_address=args.bind)
    if args.sources:
        built: dict[str, SettingsSource] = {
            METADATA: HttpSource(
                args.metadata_url or nova.METADATA_URL,
                source_address=args.bind,
                want_instance_id=args.key == KEY_INSTANCE_ID,
            ),
            CONFIG_DRIVE: ConfigDriveSource(args.config_drive or nova.CONFIG_DRIVE_DISK_PATHS),
            FILE: FileSource(
                args.user_data_file or nova.PERSONALITY_PATH,
                user_data_path=args.user_data_file or nova.PERSONALITY_PATH,
            ),
        }
        ordered = tuple(built[kind] for kind in dict.fromkeys(args.sources))
        return AgentSettings(ordered, args.key != KEY_INSTANCE_ID, True, "--source options")
    want_instance_id = None if args.key is None else args.key == KEY_INSTANCE_ID
    chosen = retarget(
        base,
        metadata_url=args.metadata_url,
        disk_paths=args.config_drive,
        user_data_file=args.user_data_file,
        want_instance_id=want_instance_id,
    )
    use_server_name = base.use_server_name if args.key is None else args.key == KEY_SERVER_NAME
    return AgentSettings(chosen.sources, use_server_name, base.use_registry, base.where)


class OutputError(BoshregError):
    """--output names a place the settings cannot be written to."""


def main(argv: Sequence[str] | None = None, prog: str = "boshreg agent") -> int:
    _OneLineParser.as_json = "--json" in (sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        if args.out and not Path(args.out).parent.is_dir():  # before any work: never fetch, then fail to keep
            raise OutputError(
                f"--output {args.out}: the directory {Path(args.out).parent} does not exist", "create it first"
            )
        chosen = agent_settings_from(args)
    except (AgentConfigError, OutputError) as exc:
        if args.json:
            print(json.dumps({"error": exc.problem, "fix": exc.fix}))
        else:
            print(f"boshreg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    key = KEY_SERVER_NAME if chosen.use_server_name else KEY_INSTANCE_ID
    try:
        resolution = resolve(
            chosen.sources, key=key, deadline=args.deadline, cacert=args.cacert, source_address=args.bind
        )
    except ResolveError as exc:
        if args.json:
            print(json.dumps(exc.trace.to_json() | {"settings": None, "error": str(exc)}, indent=2))
        else:
            print(f"{exc.trace.to_text()}\nboshreg: error: {exc}", file=sys.stderr)
        return EXIT_NO_SETTINGS
    text = settings_json(resolution.settings)
    if args.out:
        _write_private(Path(args.out), text + "\n")
    if args.json:
        settings = {"settings_file": args.out} if args.out else {"settings": resolution.settings}
        print(json.dumps(resolution.trace.to_json() | settings, indent=2))
        return 0
    if not args.out:
        print(text)
    print(resolution.trace.to_text(), file=sys.stderr)
    return 0


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
