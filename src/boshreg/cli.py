"""The ``boshreg`` command: parses arguments, calls one function per subcommand, prints.

Every error a user can cause is printed as one line naming the problem and the fix, with exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, TypeVar

import click
from click.core import ParameterSource

from boshreg import __version__
from boshreg.agent.agent_json import read_agent_settings
from boshreg.agent.cli import main as agent_main
from boshreg.banner import banner
from boshreg.bootstrap.endpoint import Endpoint, EndpointError, parse_endpoint, reachability_warnings, redact_url
from boshreg.bootstrap.net import is_ip_address
from boshreg.bootstrap.nova import CLOUDS
from boshreg.bootstrap.userdata import decode as decode_user_data
from boshreg.bootstrap.verdict import STEMCELL_ORDER, Word, source_order
from boshreg.cpi.credentials import per_vm_endpoint
from boshreg.cpi.delivery import Delivery
from boshreg.cpi.delivery import render as render_bootstrap
from boshreg.cpi.inspect import inspect_request
from boshreg.cpi.mode import CPIS, read_manifest, registry_mode
from boshreg.doctor import diagnose, load_manifest
from boshreg.errors import BoshregError
from boshreg.fleet_view import COLOURS, aligned, fleet_from_database, fleet_from_endpoint, table_lines
from boshreg.registry.audit import parse_since, query_events
from boshreg.registry.auth import hash_password
from boshreg.registry.config import RegistryConfig, load_config
from boshreg.registry.datadir import (
    DEFAULT_DATA_DIR,
    local_endpoint,
    zero_config_for_reading,
)
from boshreg.registry.fleet import AGENT_WAIT_SECONDS, MAX_AGENT_WAIT, State
from boshreg.registry.reading import read_database, stored_settings
from boshreg.registry.server import serve
from boshreg.registry.service_unit import UnitOptions, render_unit
from boshreg.registry.startup import open_registry
from boshreg.registry.transfer import export_records, header_line, import_records, read_records, write_private
from boshreg.testcloud.boot import boot
from boshreg.testcloud.configdrive import drive_files, write_iso
from boshreg.testcloud.drill import ADDRESS_CHECK, DEFAULT_AGENT_DEADLINE, DRIVE_FAULTS, MODES, drill
from boshreg.testcloud.metadata import MetadataFaults, MetadataServer
from boshreg.testcloud.netlab import DEFAULT_SUBNET
from boshreg.testcloud.storm import AGENTS, LEAN, MAX_VMS, storm
from boshreg.testcloud.vms import TestVm, check_vm_set, default_meta_data, parse_vm_spec
from boshreg.why import (
    READ_OK,
    registry_side_from_database,
    registry_side_from_endpoint,
    vm_side_from_trace,
    vm_side_from_user_data,
)
from boshreg.why import diagnose as why_diagnose

if TYPE_CHECKING:
    from boshreg.client import RegistryClient

log = logging.getLogger("boshreg")

EXIT_USAGE = 2


config_file_option = click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="BOSHREG_CONFIG",
    help="Registry YAML config (the original's keys). [env: BOSHREG_CONFIG]",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_DATA_DIR,
    envvar="BOSHREG_DATA_DIR",
    show_default=True,
    help="A zero-config registry's directory: its SQLite database, admin password and instance secret. "
    "[env: BOSHREG_DATA_DIR]",
)
cacert_option = click.option(
    "--cacert",
    type=click.Path(exists=True, dir_okay=False),
    envvar="BOSHREG_CACERT",
    help="CA certificate for an https registry. [env: BOSHREG_CACERT]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
cloud_option = click.option(
    "--cloud",
    type=click.Choice(CLOUDS),
    default="openstack",
    show_default=True,
    help="Whose size limit applies: nova's 65,535 base64 characters, or EC2's 16 KiB.",
)
agent_config_option = click.option(
    "--agent-config",
    type=click.Path(dir_okay=False),
    help="The stemcell's agent.json, whose Sources order decides what feeds the VM "
    "(default: the current OpenStack stemcell's).",
)
FC = TypeVar("FC", bound=Callable[..., object])
work_dir_option = click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the test cloud's registry data, its log and drive images go (default: a temporary directory).",
)


def deadline_option(default: float, help: str) -> Callable[[FC], FC]:
    """The agent's --deadline, as ``boshreg testcloud`` commands take it."""
    return click.option("--deadline", type=click.FloatRange(1, 600), default=default, show_default=True, help=help)


class CliError(BoshregError):
    """A problem with the command's input; printed as one line."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="boshreg")
def cli() -> None:
    """boshreg: the bootstrap path of BOSH VMs on OpenStack and AWS.

    \b
    Quick start:
      boshreg serve                      # registry on SQLite in ./.boshreg, port 25777
      boshreg settings put vm-1 s.json   # store a VM's agent settings
      boshreg settings get vm-1          # read them back, as the agent would
    """


@cli.command()
@config_file_option
@data_dir_option
@click.option("--host", envvar="BOSHREG_HOST", help="Address to listen on (http.host). [env: BOSHREG_HOST]")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="BOSHREG_PORT",
    help="Port to listen on (http.port, default 25777). [env: BOSHREG_PORT]",
)
@click.pass_context
def serve_command(
    ctx: click.Context, config_file: Path | None, data_dir: Path, host: str | None, port: int | None
) -> None:
    """Start the registry.

    With no config file it needs nothing: an SQLite database and a generated admin password in the
    data directory, and it prints the registry block to paste into a deployment manifest.

    \b
    Examples:
      boshreg serve
      boshreg serve --config /var/vcap/jobs/registry/config/registry.yml
    """
    given = ctx.get_parameter_source("data_dir") in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    registry = open_registry(config_file, data_dir, data_dir_given=given, host=host, port=port)
    click.echo(banner(registry))
    sys.stdout.flush()
    serve(registry.config, registry.store, registry.listening, registry.data_dir)


cli.add_command(serve_command, "serve")


endpoint_option = click.option(
    "--endpoint",
    envvar="BOSHREG_ENDPOINT",
    help="Registry URL with credentials, http://USER:PASSWORD@HOST:PORT. Default: the local zero-config "
    "registry of --data-dir. [env: BOSHREG_ENDPOINT]",
)
ask_registry_option = click.option(
    "--endpoint",
    "endpoint_url",
    envvar="BOSHREG_ENDPOINT",
    help="Ask a running registry (admin credentials) instead of reading its database. [env: BOSHREG_ENDPOINT]",
)
timeout_option = click.option(
    "--deadline",
    "timeout",
    type=click.FloatRange(0.1, 300),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the registry.",
)


@cli.command("events")
@config_file_option
@data_dir_option
@click.option("--instance", "instance_id", help="Only this VM's events.")
@click.option("--since", help="Only events this recent: 30s, 10m, 2h, 7d.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
def events_command(
    config_file: Path | None, data_dir: Path, instance_id: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """Show the registry's audit trail, newest first: who read, wrote or deleted which settings.

    The answer to "why does this VM hang?" from the registry's side: never fetched, 401, 403, not found.

    \b
    Examples:
      boshreg events --instance vm-3f1c --since 1h
      boshreg events --config registry.yml --json
    """
    config, where = _registry_database(config_file, data_dir)
    after = parse_since(since)
    found = read_database(
        config, where, lambda engine: query_events(engine, instance_id=instance_id, since=after, limit=limit)
    )
    if as_json:
        _print_json([event.to_json() for event in found])
        return
    for event in found:
        click.echo(event.to_text())
    if not found:
        click.echo("no events" + (f" for {instance_id}" if instance_id else ""), err=True)


@cli.command("why")
@click.argument("instance")
@config_file_option
@data_dir_option
@ask_registry_option
@click.option(
    "--user-data",
    "user_data_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The VM's user data (what the CPI gave nova), to join the VM's side.",
)
@click.option(
    "--trace",
    "trace_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A saved `boshreg agent resolve --json` trace (its standard error), to join the VM's side.",
)
@cacert_option
@timeout_option
@json_option
@click.pass_context
def why_command(
    ctx: click.Context,
    instance: str,
    config_file: Path | None,
    data_dir: Path,
    endpoint_url: str | None,
    user_data_file: Path | None,
    trace_file: Path | None,
    cacert: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Why does INSTANCE hang? ("Timed out pinging ... after 600 seconds")

    Joins the registry's side (are settings stored, did the VM ever ask, how did its reads end) with the
    VM's side when given (its user data, or a saved agent trace) into one diagnosis. Exit 0 when the
    registry side is fine (the VM read its settings), 1 when a cause was found.

    \b
    Examples:
      boshreg why vm-3f1c                                  # the local zero-config registry's database
      boshreg why vm-3f1c --config registry.yml --user-data user_data.json
      boshreg why vm-3f1c --endpoint http://admin:PASSWORD@10.0.0.5:25777 --json
    """
    if user_data_file is not None and trace_file is not None:
        raise CliError("give --user-data or --trace, not both")
    if endpoint_url:
        endpoint = parse_endpoint(endpoint_url, key="--endpoint")
        registry = registry_side_from_endpoint(endpoint, instance, timeout=timeout, cacert=cacert)
    else:
        config, where = _registry_database(config_file, data_dir)
        registry = registry_side_from_database(config, instance, where)
    vm = None
    if user_data_file is not None:
        vm = vm_side_from_user_data(user_data_file)
    elif trace_file is not None:
        vm = vm_side_from_trace(trace_file)
    diagnosis = why_diagnose(registry, vm)
    if as_json:
        _print_json(
            {
                "instance": instance,
                "diagnosis": diagnosis.code,
                "message": diagnosis.message,
                "fix": diagnosis.fix,
                "facts": list(diagnosis.facts),
                "registry": {
                    "where": registry.where,
                    "stored": registry.stored,
                    "events": [event.to_json() for event in registry.events],
                },
                "vm": None
                if vm is None
                else {
                    "where": vm.where,
                    "registry_key": vm.registry_key,
                    "endpoint": vm.endpoint,
                    "problems": list(vm.problems),
                    "error": vm.error,
                },
            }
        )
    else:
        click.echo(diagnosis.to_text())
    ctx.exit(0 if diagnosis.code == READ_OK else 1)


@cli.command("fleet")
@config_file_option
@data_dir_option
@ask_registry_option
@click.option(
    "--state",
    "states",
    type=click.Choice([state.value for state in State]),
    multiple=True,
    help="Only instances in this state (repeatable).",
)
@click.option(
    "--agent-wait",
    type=click.FloatRange(1, MAX_AGENT_WAIT),
    default=AGENT_WAIT_SECONDS,
    show_default=True,
    help="Seconds a stored, never-read instance is waiting before it counts as never read (the director's "
    "wait for the agent).",
)
@cacert_option
@timeout_option
@json_option
def fleet_command(
    config_file: Path | None,
    data_dir: Path,
    endpoint_url: str | None,
    states: tuple[str, ...],
    agent_wait: float,
    cacert: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Every stored instance at a glance: when stored, last read from where and how, and its state.

    States: waiting (stored, never read, younger than --agent-wait), never-read (older: about to time
    out, or has), ok (last read succeeded), failing (last read refused; CAUSE says how).

    \b
    Examples:
      boshreg fleet                                   # the local zero-config registry's database
      boshreg fleet --state never-read --state failing
      boshreg fleet --endpoint http://admin:PASSWORD@10.0.0.5:25777 --json
    """
    if endpoint_url:
        endpoint = parse_endpoint(endpoint_url, key="--endpoint")
        rows = fleet_from_endpoint(endpoint, agent_wait, timeout=timeout, cacert=cacert)
    else:
        config, where = _registry_database(config_file, data_dir)
        rows = fleet_from_database(config, where, agent_wait)
    if states:
        rows = [row for row in rows if row.get("state") in states]
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no instances" + (f" in state {', '.join(states)}" if states else ""), err=True)
        return
    colour = _colour_on_stdout()
    for cells, widths in aligned(table_lines(rows)):
        shown = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        if colour and cells[1] in COLOURS:
            shown[1] = click.style(shown[1], fg=COLOURS[cells[1]])
        click.echo("  ".join(shown).rstrip(), color=colour)


DOCTOR_STYLES: dict[str, dict[str, Any]] = {"ok": {"fg": "green"}, "warn": {"fg": "yellow"},
                                            "fail": {"fg": "red", "bold": True}}  # fmt: skip


def _progress_on_terminal() -> Callable[[str, int, int], None] | None:
    """A progress line on standard error, rewritten in place, for a person watching; none when it is piped."""
    if not sys.stderr.isatty():
        return None

    def show(phase: str, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        click.echo(f"\r   {done:,}/{total:,} {phase} ({100 * done // max(total, 1)}%)", nl=False, err=True)
        click.echo(end, nl=False, err=True)

    return show


def _colour_on_stdout() -> bool:
    """Colour for a person at a terminal; none when piped, or with NO_COLOR set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@cli.command("export")
@config_file_option
@data_dir_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file (created 0600: settings hold credentials). Default: standard output.",
)
def export_command(config_file: Path | None, data_dir: Path, output: Path | None) -> None:
    """Write every instance's settings, credential generation and fleet record as JSON Lines.

    The settings text is written exactly as stored: an export of an imported copy is byte for byte the
    export of the original. With `boshreg import`, the way from one database to another.

    \b
    Examples:
      boshreg export --config registry.yml -o registry.jsonl
      boshreg export --data-dir .boshreg | gzip > registry.jsonl.gz
    """
    config, where = _registry_database(config_file, data_dir)
    _check_output_directory(output)
    records = read_database(config, where, lambda engine: list(export_records(engine)))
    lines = [header_line(), *(record.to_line() for record in records)]
    text = "".join(line + "\n" for line in lines)
    if output is None:
        click.echo(text, nl=False)
        return
    write_private(output, text.encode("utf-8"))
    click.echo(f"exported {len(records)} instances to {output}", err=True)


@cli.command("import")
@click.argument("import_file", metavar="FILE|-", type=click.File("r", encoding="utf-8"))
@config_file_option
@data_dir_option
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@json_option
def import_command(import_file: TextIO, config_file: Path | None, data_dir: Path, dry_run: bool, as_json: bool) -> None:
    """Load a `boshreg export` file into this registry's database: all of it or nothing.

    Instances in the file are created or made equal to it; others are left alone. Importing the same file
    again changes nothing. A bad line is named by its number, and nothing is imported.

    \b
    Examples:
      boshreg import registry.jsonl --config postgres.yml --dry-run
      boshreg export --data-dir old | boshreg import - --config postgres.yml
    """
    records = read_records(import_file, import_file.name)
    config, where = _registry_database(config_file, data_dir)
    summary = read_database(config, where, lambda engine: import_records(engine, records, dry_run=dry_run))
    if as_json:
        _print_json({"dry_run": dry_run, **summary.to_json()})
        return
    verb = "would " if dry_run else ""
    click.echo(
        f"{'dry run: ' if dry_run else ''}{len(records)} instances in {import_file.name}: {verb}create "
        f"{len(summary.created)}, {verb}change {len(summary.changed)}, {summary.unchanged} unchanged"
    )
    for instance_id in summary.created:
        click.echo(f"  {verb}create {instance_id}")
    for instance_id in summary.changed:
        click.echo(f"  {verb}change {instance_id}")


@cli.command("service-unit")
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The registry's YAML config (its SQLite database, if any, must be under /var/lib/boshreg). "
    "Default: zero-config mode in /var/lib/boshreg.",
)
@click.option("--user", help="Run as this existing user. Default: a dynamic user systemd makes (DynamicUser).")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="Overrides http.port (below 1024: the capability is granted)."
)
@click.option(
    "--executable",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The boshreg program to run. Default: the one on the PATH.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write the unit here.")
def service_unit_command(
    config_file: Path | None, user: str | None, port: int | None, executable: Path | None, output: Path | None
) -> None:
    """Print a hardened systemd unit that runs the registry as a service.

    Its own user, its data in /var/lib/boshreg (0700) and nothing else writable, no new privileges, a file
    limit for the connection caps, restarted on failure, stopped with SIGTERM (in-flight requests finish).

    \b
    Examples:
      boshreg service-unit --config /etc/boshreg/registry.yml > /etc/systemd/system/boshreg.service
      boshreg service-unit -o boshreg.service && systemd-analyze verify boshreg.service
    """
    found = executable or (Path(which) if (which := shutil.which("boshreg")) else None)
    if found is None:
        raise CliError("boshreg is not on the PATH here; give --executable /path/to/boshreg")
    _check_output_directory(output)
    options = UnitOptions(found.resolve(), config_file.resolve() if config_file else None, user, port)
    text = render_unit(options)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}; install it as /etc/systemd/system/boshreg.service", err=True)


@cli.command("hash-password")
@click.password_option(
    prompt="Password",
    confirmation_prompt=True,
    envvar="BOSHREG_PASSWORD",
    help="The password (prompted for when not given). [env: BOSHREG_PASSWORD]",
)
def hash_password_command(password: str) -> None:
    """Print a bcrypt hash for http.password_hash, so no password sits in the config in clear.

    \b
    Example:
      boshreg hash-password        # prompts twice, prints $2b$12$...
    """
    click.echo(hash_password(password))


@cli.group()
def settings() -> None:
    """Read and write one VM's agent settings in a registry.

    \b
    Examples:
      boshreg settings put vm-3f1c settings.json --endpoint http://admin:secret@10.0.0.5:25777
      cat settings.json | boshreg settings put vm-3f1c -
      boshreg settings get vm-3f1c
      boshreg settings delete vm-3f1c
    """


@settings.command("get")
@click.argument("instance_id")
@endpoint_option
@data_dir_option
@cacert_option
@timeout_option
def settings_get(instance_id: str, endpoint: str | None, data_dir: Path, cacert: str | None, timeout: float) -> None:
    """Print the settings stored for INSTANCE_ID, exactly as stored."""
    with _registry_client(_endpoint(endpoint, data_dir), timeout=timeout, cacert=cacert) as client:
        settings_text = client.get_settings(instance_id)
    click.echo(settings_text, nl=not settings_text.endswith("\n"))


@settings.command("put")
@click.argument("instance_id")
@click.argument("settings_file", metavar="FILE|-", type=click.File("rb"))
@endpoint_option
@data_dir_option
@cacert_option
@timeout_option
def settings_put(
    instance_id: str,
    settings_file: BinaryIO,
    endpoint: str | None,
    data_dir: Path,
    cacert: str | None,
    timeout: float,
) -> None:
    """Store FILE (or standard input, -) as the settings of INSTANCE_ID."""
    content = settings_file.read()
    with _registry_client(_endpoint(endpoint, data_dir), timeout=timeout, cacert=cacert) as client:
        client.put_settings(instance_id, content)
    click.echo(f"stored settings of {instance_id} ({len(content)} bytes)")


@settings.command("delete")
@click.argument("instance_id")
@endpoint_option
@data_dir_option
@cacert_option
@timeout_option
def settings_delete(instance_id: str, endpoint: str | None, data_dir: Path, cacert: str | None, timeout: float) -> None:
    """Remove the settings of INSTANCE_ID (succeeds when there were none)."""
    with _registry_client(_endpoint(endpoint, data_dir), timeout=timeout, cacert=cacert) as client:
        client.delete_settings(instance_id)
    click.echo(f"deleted settings of {instance_id}")


@cli.group("credentials")
def credentials_group() -> None:
    """Revoke one VM's per-VM read credential.

    \b
    Example:
      boshreg credentials revoke vm-3f1c --endpoint http://admin:secret@10.0.0.5:25777
    """


@credentials_group.command("revoke")
@click.argument("instance_id")
@endpoint_option
@data_dir_option
@cacert_option
@timeout_option
def credentials_revoke(
    instance_id: str, endpoint: str | None, data_dir: Path, cacert: str | None, timeout: float
) -> None:
    """End INSTANCE_ID's per-VM credential at once, in every worker and replica; its settings stay.

    The VM reads nothing with its old user data from then on: render new user data (`boshreg userdata
    render --per-vm-credentials`, or `--instance-secret-file` with the printed generation) and recreate
    it. Deleting a VM's settings revokes its credential too.
    """
    with _registry_client(_endpoint(endpoint, data_dir), timeout=timeout, cacert=cacert) as client:
        generation = client.revoke_credentials(instance_id)
    click.echo(f"revoked the per-VM credential of {instance_id}; its credentials are now of generation {generation}")


@cli.group("endpoint")
def endpoint_group() -> None:
    """Check registry endpoints before VMs depend on them."""


@endpoint_group.command("check")
@click.argument("url")
@click.option("--user", help="Registry user, when not in the URL (registry.user).")
@click.option(
    "--password",
    envvar="BOSHREG_PASSWORD",
    help="Registry password, when not in the URL (registry.password). [env: BOSHREG_PASSWORD]",
)
@json_option
@click.pass_context
def endpoint_check(ctx: click.Context, url: str, user: str | None, password: str | None, as_json: bool) -> None:
    """Validate and normalise a registry endpoint; warn when VMs could not reach it.

    \b
    Examples:
      boshreg endpoint check http://admin:secret@10.0.0.5:25777
      boshreg endpoint check http://10.0.0.5:25777 --user admin --password secret --json
    """
    try:
        endpoint = parse_endpoint(url, user, password)
    except EndpointError as exc:
        if not as_json:
            raise
        _print_json({"valid": False, "error": exc.problem, "fix": exc.fix})
        ctx.exit(EXIT_USAGE)
    warnings = reachability_warnings(endpoint)
    if as_json:
        _print_json(
            {
                "valid": True,
                "endpoint": endpoint.redacted(),
                "user": endpoint.user,
                "warnings": [{"problem": w.problem, "fix": w.fix} for w in warnings],
            }
        )
        return
    click.echo(endpoint.redacted())
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@cli.group("userdata")
def userdata_group() -> None:
    """Build the user data the CPI gives nova."""


@userdata_group.command("render")
@click.option("--name", required=True, help="The VM's server name (server.name; the registry key).")
@click.option("--endpoint", "endpoint_url", help="Registry endpoint; user:password@ in it or given apart.")
@click.option("--user", help="Registry user, when not in the endpoint.")
@click.option("--password", envvar="BOSHREG_PASSWORD", help="Registry password, when not in the endpoint.")
@click.option(
    "--settings",
    "settings_file",
    type=click.File("rb"),
    help="Agent settings JSON to embed (registry-less user data, current BOSH).",
)
@click.option("--dns", multiple=True, help="A DNS server for dns.nameserver (repeatable).")
@click.option("--public-key", "public_key_file", type=click.File("r"), help="SSH public key file.")
@click.option(
    "--per-vm-credentials/--no-per-vm-credentials",
    "per_vm",
    default=None,
    help="Give the VM its own read credential instead of the admin's. Default: on when the instance "
    "secret is known (--instance-secret-file); with the flag and no secret, the registry is asked.",
)
@click.option(
    "--instance-secret-file",
    type=click.File("r"),
    envvar="BOSHREG_INSTANCE_SECRET_FILE",
    help="The registry's http.instance_secret (a data directory's instance-secret file).",
)
@click.option(
    "--generation",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="With --instance-secret-file: the VM's credential generation, 0 unless its settings were deleted or "
    "its credential revoked before (`boshreg credentials revoke` prints the new one).",
)
@cacert_option
@click.option(
    "--delivery",
    type=click.Choice([d.value for d in Delivery]),
    default=Delivery.METADATA.value,
    show_default=True,
    help="metadata: user_data only; config-drive: also a drive (the agent reads it first); legacy: also the "
    "old CPI's personality file.",
)
@cloud_option
@json_option
@click.pass_context
def userdata_render(
    ctx: click.Context,
    name: str,
    endpoint_url: str | None,
    user: str | None,
    password: str | None,
    settings_file: BinaryIO | None,
    dns: tuple[str, ...],
    public_key_file: TextIO | None,
    per_vm: bool | None,
    instance_secret_file: TextIO | None,
    generation: int,
    cacert: str | None,
    delivery: str,
    cloud: str,
    as_json: bool,
) -> None:
    """Render the user data and the nova create-server fragment for one VM, with its verdict.

    Exit 0 when the VM would boot, 1 when the agent could not boot from this user data (e.g. a loopback
    registry endpoint), 2 for bad options.

    \b
    Examples:
      boshreg userdata render --name vm-3f1c --endpoint http://admin:secret@10.0.0.5:25777 --dns 10.0.0.2
      boshreg userdata render --name vm-3f1c --settings settings.json --json
    """
    if endpoint_url is None and settings_file is None:
        raise CliError("give --endpoint (registry mode) or --settings (registry-less), or both")
    endpoint = parse_endpoint(endpoint_url, user, password, key="--endpoint") if endpoint_url else None
    settings = decode_user_data(settings_file.read(), f"--settings {settings_file.name}") if settings_file else None
    _check_dns(dns)
    secret = instance_secret_file.read().strip() if instance_secret_file else None
    if generation and secret is None:
        raise CliError("--generation needs --instance-secret-file (without it the registry is asked, and knows)")
    admin_in_vm = endpoint is not None and per_vm is None and secret is None
    if endpoint is not None and (per_vm or (per_vm is None and secret is not None)):
        endpoint = per_vm_endpoint(endpoint, name, secret=secret, generation=generation, cacert=cacert)
    bootstrap = render_bootstrap(
        name,
        endpoint=endpoint,
        settings=settings,
        dns=list(dns),
        public_key=public_key_file.read() if public_key_file else None,
        delivery=Delivery(delivery),
        cloud=cloud,
    )
    fragment = bootstrap.nova_fragment()
    verdict = bootstrap.verdict
    for warning in verdict.warnings:
        click.echo(f"warning: {warning}", err=True)
    if admin_in_vm:
        click.echo(
            "warning: the user data carries the admin credential: any process on the VM can read and "
            "overwrite every VM's settings; use --per-vm-credentials",
            err=True,
        )
    if as_json:
        _print_json(
            {
                "delivery": bootstrap.delivery.value,
                **verdict.to_json(),
                "user_data": bootstrap.user_data,
                "nova": fragment,
                "openstacksdk": bootstrap.openstacksdk_kwargs(),
            }
        )
    else:
        click.echo(json.dumps(bootstrap.user_data, indent=2, ensure_ascii=False))
        click.echo(f'\nnova POST /servers, under "server" ({bootstrap.delivery.value} delivery):')
        click.echo(json.dumps(fragment, indent=2))
        click.echo(f"\n{verdict.to_text()}")
    ctx.exit(0 if verdict.boots else 1)


@userdata_group.command("from-registry")
@click.argument("instance_id")
@config_file_option
@data_dir_option
@ask_registry_option
@click.option("--name", help="The VM's server name (server.name). Default: INSTANCE_ID.")
@click.option("--dns", multiple=True, help="A DNS server for dns.nameserver (repeatable; default: the settings').")
@cloud_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the user data to this file (created 0600: it holds the settings' credentials).",
)
@cacert_option
@timeout_option
@json_option
def userdata_from_registry(
    instance_id: str,
    config_file: Path | None,
    data_dir: Path,
    endpoint_url: str | None,
    name: str | None,
    dns: tuple[str, ...],
    cloud: str,
    output: Path | None,
    cacert: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Turn INSTANCE_ID's stored settings into registry-less user data, for a stemcell with api_version 2.

    The settings go to the top level (with their agent_id), beside server.name and dns: what a current
    CPI sends, so the VM needs no registry. Checked against the cloud's user-data size limit.

    \b
    Examples:
      boshreg userdata from-registry vm-3f1c --config registry.yml -o user_data.json
      boshreg userdata from-registry i-0abc --endpoint http://admin:PASSWORD@10.0.0.5:25777 --cloud aws --json
    """
    _check_output_directory(output)
    _check_dns(dns)
    if endpoint_url:
        with _registry_client(parse_endpoint(endpoint_url, key="--endpoint"), timeout=timeout, cacert=cacert) as client:
            text, where = client.get_settings(instance_id), "the registry"
    else:
        config, where = _registry_database(config_file, data_dir)
        found = stored_settings(config, where, instance_id)
        if found is None:
            raise CliError(f"no settings stored for {instance_id} in {where}; check the instance id")
        text = found
    settings = decode_user_data(text, f"the settings of {instance_id} in {where}")
    bootstrap = render_bootstrap(name or instance_id, settings=settings, dns=list(dns), cloud=cloud)
    raw = json.dumps(bootstrap.user_data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if output is not None:
        write_private(output, raw)
    if as_json:
        _print_json({"instance": instance_id, "bytes": len(raw), "user_data": bootstrap.user_data,
                     "written_to": str(output) if output else None})  # fmt: skip
    elif output is None:
        click.echo(raw.decode("utf-8"))
    else:
        click.echo(f"wrote registry-less user data of {instance_id} ({len(raw):,} bytes) to {output}", err=True)


@cli.command("inspect")
@click.argument("request_file", metavar="REQUEST.json", type=click.File("rb"))
@agent_config_option
@json_option
@click.pass_context
def inspect_command(ctx: click.Context, request_file: BinaryIO, agent_config: str | None, as_json: bool) -> None:
    """Inspect a captured nova create-server request: channels, copies, and the verdict.

    The verdict walks the sources of the stemcell's agent.json (default: the current OpenStack
    stemcell's, File then ConfigDrive then HTTP) over what Nova makes of the request. Exit 0 when the VM
    is portable, 1 when it is pinned to its config drive or broken, 2 for a request that cannot be read.

    \b
    Example:
      boshreg inspect create-server.json
    """
    try:
        request = json.loads(request_file.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CliError(
            f'{request_file.name} is not JSON ({exc}); paste the request body, {{"server": {{...}}}}'
        ) from None
    order = source_order(read_agent_settings(agent_config)) if agent_config else STEMCELL_ORDER
    inspection = inspect_request(request, order=order)
    if as_json:
        _print_json(inspection.to_json())
    else:
        click.echo(inspection.to_text())
    ctx.exit(0 if inspection.word is Word.PORTABLE else 1)


@cli.command("mode")
@click.argument("stemcell", metavar="STEMCELL.MF|STEMCELL.tgz", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--director", help="The director's version, e.g. 272.0.0 (it dropped its registry in 272.0.0).")
@click.option("--cpi", type=click.Choice(CPIS), help="The CPI that creates the VMs.")
@json_option
def mode_command(stemcell: Path, director: str | None, cpi: str | None, as_json: bool) -> None:
    """Do VMs of this stemcell need a registry? Who writes their settings where, and what to do.

    \b
    Examples:
      boshreg mode stemcell.MF
      boshreg mode trusty-stemcell.tgz --director 280.0.0 --cpi openstack-ruby
    """
    answer = registry_mode(read_manifest(stemcell), director=director, cpi=cpi)
    if as_json:
        _print_json(answer.to_json())
    else:
        click.echo(answer.to_text())


@cli.command("doctor")
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--online", is_flag=True, help="Also ask the registry whether it accepts the credentials.")
@click.option(
    "--deadline",
    "timeout",
    type=click.FloatRange(0.1, 60),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the registry with --online.",
)
@cacert_option
@json_option
@click.pass_context
def doctor_command(
    ctx: click.Context, manifest: Path, online: bool, timeout: float, cacert: str | None, as_json: bool
) -> None:
    """Check a deployment manifest or CPI properties file before deploying.

    Reads cloud.properties (micro_bosh.yml), cloud_provider.properties, or the same keys at the top
    level. Exit 0 when nothing fails, 1 otherwise, 2 for an unreadable file.

    \b
    Examples:
      boshreg doctor micro_bosh.yml
      boshreg doctor cpi.yml --online --json
    """
    report = diagnose(load_manifest(manifest), str(manifest), online=online, timeout=timeout, cacert=cacert)
    if as_json:
        _print_json(report.to_json())
    elif _colour_on_stdout():
        click.echo(report.to_text(lambda label, status: click.style(label, **DOCTOR_STYLES[status.value])), color=True)
    else:
        click.echo(report.to_text())
    ctx.exit(1 if report.failed else 0)


@cli.command(
    "agent",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("agent_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def agent_command(ctx: click.Context, agent_args: tuple[str, ...]) -> None:
    """Inside a VM: resolve its settings as bosh-agent does (see 'boshreg agent resolve --help').

    The same command runs with the standard library alone as 'python -m boshreg.agent'.
    """
    ctx.exit(agent_main(list(agent_args)))


@cli.group("testcloud")
def testcloud_group() -> None:
    """A local OpenStack stand-in: metadata service, config drives, the whole chain."""


@testcloud_group.command("metadata")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8775, show_default=True, help="Port to serve on.")
@click.option(
    "--vm",
    "vm_specs",
    multiple=True,
    required=True,
    metavar="NAME=DIR[@IP]",
    help="A VM: DIR holds user_data and optionally meta_data.json; @IP serves it to that caller only.",
)
def testcloud_metadata(host: str, port: int, vm_specs: tuple[str, ...]) -> None:
    """Serve a Nova-compatible metadata service (OpenStack and EC2 paths) until interrupted.

    \b
    Example:
      boshreg testcloud metadata --host 127.0.0.1 --port 8775 --vm vm-1=./vm-1
    """
    vms = [parse_vm_spec(spec) for spec in vm_specs]
    check_vm_set(vms)
    try:
        server = MetadataServer(host, port, vms)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --host or --port") from None
    click.echo(f"metadata service at {server.url} serving {', '.join(vm.name for vm in vms)}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()


@testcloud_group.command("config-drive")
@click.option("--user-data", "user_data_file", type=click.File("rb"), help="The user data file.")
@click.option("--meta-data", "meta_data_file", type=click.File("rb"), help="meta_data.json (default: generated).")
@click.option("--name", default="vm-1", show_default=True, help="The VM's name, for generated metadata.")
@click.option("--public-key", "public_key_file", type=click.File("r"), help="SSH public key, for generated metadata.")
@click.option("--empty", is_flag=True, help="Build it without user data on purpose (what the agent then does).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The image.")
def testcloud_config_drive(
    user_data_file: BinaryIO | None,
    meta_data_file: BinaryIO | None,
    name: str,
    public_key_file: TextIO | None,
    empty: bool,
    output: Path,
) -> None:
    """Build a config drive image as Nova does (ISO 9660, label config-2).

    \b
    Example:
      boshreg testcloud config-drive --user-data user_data.json --name vm-1 -o drive.iso
    """
    if user_data_file is None and not empty:
        raise CliError("no --user-data: the agent finds nothing to boot from on such a drive; give --user-data FILE "
                       "(or --empty to build one on purpose)")  # fmt: skip
    if user_data_file is not None and empty:
        raise CliError("--empty and --user-data contradict each other; give one")
    _check_output_directory(output)
    meta = default_meta_data(name, public_key_file.read() if public_key_file else None)
    if meta_data_file is not None:
        meta = decode_user_data(meta_data_file.read(), f"--meta-data {meta_data_file.name}")
    vm = TestVm(name, user_data_file.read() if user_data_file else None, meta)
    write_iso(drive_files(vm), output)
    click.echo(f"wrote {output} (config-2, {output.stat().st_size} bytes) for {vm.meta_data.get('name', name)}")


@testcloud_group.command("boot")
@click.option(
    "--delivery",
    type=click.Choice([Delivery.METADATA.value, Delivery.CONFIG_DRIVE.value]),
    default=Delivery.METADATA.value,
    show_default=True,
)
@click.option("--registry-less", is_flag=True, help="Put the settings in the user data (current BOSH).")
@click.option(
    "--metadata-down",
    is_flag=True,
    help="The metadata service does not answer (as without DHCP): shows what a drive-fed VM depends on.",
)
@work_dir_option
@deadline_option(30.0, "The agent's deadline, in seconds.")
@json_option
@click.pass_context
def testcloud_boot(
    ctx: click.Context,
    delivery: str,
    registry_less: bool,
    metadata_down: bool,
    work_dir: Path | None,
    deadline: float,
    as_json: bool,
) -> None:
    """Run the whole chain on this machine and print the agent's trace.

    Starts a registry, stores a VM's settings as the CPI does, renders its user data, serves it from the
    metadata emulator (or a config drive), and resolves the settings as the agent does.

    \b
    Examples:
      boshreg testcloud boot
      boshreg testcloud boot --delivery config-drive
      boshreg testcloud boot --delivery config-drive --metadata-down
      boshreg testcloud boot --registry-less --json
    """
    with tempfile.TemporaryDirectory(prefix="boshreg-testcloud-") as temporary:
        report = boot(
            work_dir or Path(temporary),
            delivery=Delivery(delivery),
            registry_less=registry_less,
            deadline=deadline,
            say=(lambda _line: None) if as_json else click.echo,
            metadata_down=metadata_down,
            kept=work_dir is not None,
        )
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo("\n".join(f"   {line}" for line in report.trace.to_text().splitlines()))
        if report.ok:
            judged = report.trace.judged
            said = f"{judged.word}, fed by {judged.fed_by}" if judged is not None else report.trace.verdict
            click.echo(f"5. result    the agent got the settings the CPI stored ({said})")
        else:
            click.echo(f"5. result    FAILED: {report.error}")
    ctx.exit(0 if report.ok else 1)


@testcloud_group.command("storm")
@click.option("--vms", type=click.IntRange(1, MAX_VMS), default=1000, show_default=True, help="How many VMs boot.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 4096),
    default=256,
    show_default=True,
    help="How many VMs resolve at the same time.",
)
@click.option(
    "--agents",
    type=click.Choice(AGENTS),
    default=LEAN,
    show_default=True,
    help="lean: the agent's requests and decoding on an event loop per process; "
    "resolver: the agent's own resolver in threads (its whole walk and verdict, about twice the CPU per VM).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    help="Agent processes sharing the concurrency (default: one per core; resolvers: at least one per 64 at a time).",
)
@work_dir_option
@deadline_option(60.0, "Each agent's deadline, in seconds.")
@json_option
@click.pass_context
def testcloud_storm(
    ctx: click.Context,
    vms: int,
    concurrency: int,
    agents: str,
    processes: int | None,
    work_dir: Path | None,
    deadline: float,
    as_json: bool,
) -> None:
    """Boot many VMs at once against one registry and time how long until each has its settings.

    Starts a registry, stores every VM's settings as the CPI does, serves each VM's user data (with its
    own per-VM credential) from the metadata emulator to that VM's own loopback address, and boots them
    CONCURRENCY at a time: each makes the agent's requests from its own address and reads the answers with
    the agent's code (--agents resolver: runs the agent's whole resolver). Exit 0 when every VM got its own
    settings.

    \b
    Examples:
      boshreg testcloud storm
      boshreg testcloud storm --vms 10000 --concurrency 256 --json
    """
    with tempfile.TemporaryDirectory(prefix="boshreg-storm-") as temporary:
        report = storm(
            work_dir or Path(temporary),
            vms=vms,
            concurrency=concurrency,
            agents=agents,
            processes=processes,
            deadline=deadline,
            say=(lambda _line: None) if as_json else click.echo,
            progress=_progress_on_terminal(),
            kept=work_dir is not None,
        )
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo(report.to_text())
    ctx.exit(0 if report.ok else 1)


@testcloud_group.command("drill")
@click.option("--vms", type=click.IntRange(1, 60), default=6, show_default=True, help="How many VMs (namespaces).")
@click.option(
    "--subnet",
    default=DEFAULT_SUBNET,
    show_default=True,
    help="A private IPv4 range of your own for the bridge and the VMs (never routed anywhere).",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default=ADDRESS_CHECK,
    show_default=True,
    help="How VMs read: without credentials, checked against the Nova stand-in; or with per-VM credentials.",
)
@click.option("--metadata-delay", type=click.FloatRange(0, 30), default=0.0, help="Fault: seconds before every answer.")
@click.option("--metadata-flap", is_flag=True, help="Fault: every other metadata answer is a 503.")
@click.option(
    "--metadata-rate-limit", type=click.IntRange(0, 10_000), default=0, help="Fault: answer 429 past N requests/s."
)
@click.option("--metadata-missing", multiple=True, metavar="VM", help="Fault: the metadata service answers 404 for VM.")
@click.option(
    "--drive-fault", type=click.Choice(DRIVE_FAULTS), help="Fault: every drive has another label, or no user data."
)
@click.option(
    "--registry-late",
    type=click.FloatRange(0, 60),
    default=0.0,
    help="Fault: the registry is down for the first SECONDS.",
)
@work_dir_option
@deadline_option(DEFAULT_AGENT_DEADLINE, "Each agent's deadline, in seconds.")
@json_option
@click.pass_context
def testcloud_drill(
    ctx: click.Context,
    vms: int,
    subnet: str,
    mode: str,
    metadata_delay: float,
    metadata_flap: bool,
    metadata_rate_limit: int,
    metadata_missing: tuple[str, ...],
    drive_fault: str | None,
    registry_late: float,
    work_dir: Path | None,
    deadline: float,
    as_json: bool,
) -> None:
    """Rehearse the outage: the provider turns config drives off. Root only.

    Creates VMs as network namespaces on a bridge with no uplink (some the legacy way, some with a config
    drive, some metadata-only), predicts each one's verdict with `inspect`, boots them (phase 1), detaches
    every drive and boots again (phase 2), re-renders metadata-only and boots again (phase 3). Exit 0
    only when every prediction held. Everything made is removed at exit.

    \b
    Examples:
      sudo boshreg testcloud drill
      sudo boshreg testcloud drill --vms 3 --mode per-vm --json
    """
    faults = MetadataFaults(metadata_delay, metadata_flap, metadata_rate_limit, frozenset(metadata_missing))
    with _terminated_as_interrupt(), tempfile.TemporaryDirectory(prefix="boshreg-drill-") as temporary:
        report = drill(
            work_dir or Path(temporary),
            vms=vms,
            subnet=subnet,
            mode=mode,
            faults=faults,
            deadline=deadline,
            drive_fault=drive_fault,
            registry_late=registry_late,
            say=(lambda _line: None) if as_json else click.echo,
        )
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo(report.to_text())
    ctx.exit(0 if report.all_predictions_held else 1)


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so whatever a command made is removed on the way out."""

    def interrupt(_signal: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _registry_database(config_file: Path | None, data_dir: Path) -> tuple[RegistryConfig, str]:
    """The config of the registry whose database a command reads, and how to name it in errors."""
    if config_file is not None:
        return load_config(config_file), str(config_file)
    return zero_config_for_reading(data_dir), f"database in {data_dir}"


def _check_output_directory(output: Path | None) -> None:
    """Refuse -o into a directory that is not there, before any work is done."""
    if output is not None and not output.parent.is_dir():
        raise CliError(f"-o {output}: the directory {output.parent} does not exist; create it first")


def _check_dns(servers: tuple[str, ...]) -> None:
    for server in servers:
        if not is_ip_address(server):
            raise CliError(f"--dns {server!r} is not an IP address")


def _print_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _registry_client(endpoint: Endpoint, *, timeout: float, cacert: str | None) -> RegistryClient:
    """A client of a running registry. Its module (httpx) is loaded here, by the commands that ask one, not
    by ``boshreg serve``: every registry process would carry it (~5 MiB; test_structure)."""
    from boshreg.client import RegistryClient

    return RegistryClient(endpoint, timeout=timeout, cacert=cacert)


def _endpoint(url: str | None, data_dir: Path) -> Endpoint:
    if url:
        return parse_endpoint(url, key="--endpoint", require_credentials=False)
    local = local_endpoint(data_dir)
    if local is None:
        raise CliError(
            "no registry endpoint: pass --endpoint http://admin:PASSWORD@HOST:25777 or set "
            f"BOSHREG_ENDPOINT (no local registry in {data_dir})"
        )
    return local


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command; every user error (a ``BoshregError``) is one line, or JSON, and exit 2.

    Anything else that escapes is a bug, and keeps its traceback.
    """
    args = sys.argv[1:] if argv is None else argv
    as_json = "--json" in args
    try:
        # Without standalone mode, click returns the code given to ctx.exit() instead of raising it.
        code = cli.main(args=args, prog_name="boshreg", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("boshreg: aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `boshreg` or group: its help, as --help shows it
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return 0
    except click.ClickException as exc:
        hint = _usage_hint(exc)  # " (see 'boshreg x --help')", or ""
        return _fail(_one_line(exc.format_message()), hint.strip(" ()"), as_json, suffix=hint)
    except BoshregError as exc:
        return _fail(_one_line(exc.problem), _one_line(exc.fix), as_json)
    except KeyboardInterrupt:
        return 130


def _fail(problem: str, fix: str, as_json: bool, suffix: str | None = None) -> int:
    """Print a user error, redacted: one line on standard error, or under --json a JSON object on stdout."""
    problem = redact_url(problem)  # fixes are ours (keys, examples with <password>): printed as written
    if as_json:
        click.echo(json.dumps({"error": problem, "fix": fix}, ensure_ascii=False))
    else:
        line = f"{problem}{suffix}" if suffix is not None else (f"{problem}; {fix}" if fix else problem)
        click.echo(f"boshreg: error: {line}", err=True)
    return EXIT_USAGE


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _usage_hint(exc: click.ClickException) -> str:
    context = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and context is not None:
        return f" (see '{context.command_path} --help')"
    return ""
