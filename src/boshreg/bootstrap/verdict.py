"""The verdict on a VM's bootstrap: three words, "fed by", and the costs of a drive, defined once.

``portable``: boots now and would still boot with the config drive gone (a drive may be attached: its
costs are listed beside the word). ``pinned``: boots now only thanks to the drive (without it the agent
finds no user data, another endpoint or key, or loses content only the drive carries). ``broken``: does
not boot now. "Fed by" is a separate fact: the first source in the agent's order that answers.

The agent side (a real walk of the sources) and the CPI side (a prediction from a create request or a
manifest) both describe what each source gives as ``Reading`` values and ask ``judge``; neither defines
a word, a cost or a rule of its own. Standard library only.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from boshreg.bootstrap import nova
from boshreg.bootstrap.endpoint import EndpointError, parse_endpoint, reachability_warnings, redact_url
from boshreg.bootstrap.userdata import is_registry_less, validate


class Word(enum.StrEnum):
    """The three verdicts; nothing else in boshreg spells them."""

    PORTABLE = "portable"
    PINNED = "pinned"
    BROKEN = "broken"


# Where an agent reads its user data: the agent.json source types, in our words.
FILE = "file"
CONFIG_DRIVE = "config-drive"
METADATA = "metadata"
KIND_NAMES = {FILE: "file", CONFIG_DRIVE: "config drive", METADATA: "metadata service"}
KIND_OF_TYPE = {"File": FILE, "ConfigDrive": CONFIG_DRIVE, "HTTP": METADATA}


def source_order(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The kinds of an agent.json's Sources, in its order (types we do not walk left out)."""
    sources = settings.get("Sources")
    entries = sources if isinstance(sources, list) else []
    return tuple(KIND_OF_TYPE[e["Type"]] for e in entries if isinstance(e, Mapping) and e.get("Type") in KIND_OF_TYPE)


STEMCELL_ORDER = source_order(nova.OPENSTACK_STEMCELL_SETTINGS)

# The costs of an attached config drive, each said once (DESIGN.md, "What a config drive costs").
COST_DEPENDENCY = (
    "the drive is built on the VM's hypervisor and goes away with it (a provider turning config drives off, a "
    "rebuild): only what another source also gives survives"
)
COST_MIGRATION = (
    "a config drive may block live migration on older clouds (without shared storage, or an ISO 9660 drive)"
)
COST_PERSONALITY = (
    "injected (personality) files exist only on the config drive, never on the metadata service; compute API "
    f"microversion {nova.PERSONALITY_REMOVED_MICROVERSION} and later refuse them with 400; evacuation, "
    "shelve/unshelve and cross-cell resize rebuild the drive and lose them"
)
NOTE_MULTI_NETWORK = (
    "multi-network VMs on OpenStack with DHCP off need a director-wide config drive to configure their networks "
    "before they can reach the metadata service: a drive there is by design"
)

_SHOWN_VALUE_CHARS = 80


@dataclass(frozen=True)
class Reading:
    """What one source gives the agent: its user data and public key, or why it gives nothing usable."""

    kind: str  # FILE, CONFIG_DRIVE or METADATA
    where: str  # the path, image, device or URL, redacted
    document: Mapping[str, Any] | None = None
    public_key: str | None = None
    registry_key: str | None = None  # what the agent would GET its settings under, when it uses a registry
    problem: str | None = None  # why no usable user data; None when ``document`` is usable

    @property
    def fed_by(self) -> str:
        return f"{KIND_NAMES.get(self.kind, self.kind)} {self.where}"


@dataclass(frozen=True)
class Verdict:
    """A word, the reasons for it, the source that feeds the VM and what an attached drive costs."""

    word: Word
    fed_by: str | None = None
    fed_by_kind: str | None = None
    reasons: tuple[str, ...] = ()
    costs: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def boots(self) -> bool:
        return self.word is not Word.BROKEN

    def line(self) -> str:
        """One line: the word, what feeds the VM, why, and the costs."""
        parts = [str(self.word)]
        if self.fed_by:
            parts.append(f"fed by {self.fed_by}")
        if self.reasons:
            label = "does not boot" if self.word is Word.BROKEN else "without the drive"
            parts.append(f"{label}: {'; '.join(self.reasons)}")
        if self.costs:
            parts.append(f"costs of the attached drive: {'; '.join(self.costs)}")
        return "; ".join(parts)

    def to_text(self) -> str:
        """The verdict for a terminal: the word and what feeds the VM, then one line per reason and cost."""
        head = f"verdict: {self.word}" + (f" (fed by {self.fed_by})" if self.fed_by else "")
        label = "does not boot" if self.word is Word.BROKEN else "without the drive"
        lines = [head, *(f"  {label}: {reason}" for reason in self.reasons)]
        lines += [f"  cost of the drive: {cost}" for cost in self.costs]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": str(self.word),
            "fed_by": self.fed_by,
            "fed_by_kind": self.fed_by_kind,
            "reasons": list(self.reasons),
            "costs": list(self.costs),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "line": self.line(),
        }


def boot_problems(
    document: Mapping[str, Any], *, live: bool = False, resolve: bool = False
) -> tuple[list[str], list[str]]:
    """Why an agent could not boot from this user data, and warnings that do not stop it.

    Checks the document (validate) and the registry endpoint inside it with every endpoint warning.
    Predicting (``live=False``): a loopback or listen-on-all host stops the agent (only a deployer's SSH
    tunnel makes loopback work). Resolving live, the registry GET itself decides reachability, so only
    credentials Go's URL parser refuses stop it here. Old ports, well-known credentials and names that do
    not resolve are warnings either way.
    """
    problems = validate(document)
    warnings: list[str] = []
    if is_registry_less(document) or problems:
        return problems, warnings
    raw = document["registry"]["endpoint"]
    try:
        endpoint = parse_endpoint(raw, require_credentials=False)
    except EndpointError as exc:  # validate already said it; keep the exact words
        return [str(exc)], warnings
    if not endpoint.has_credentials:
        warnings.append(
            f"{endpoint} carries no credentials: only a registry that checks callers' addresses against the cloud "
            "(cloud.plugin) serves this VM; any other answers 401"
        )
    for warning in reachability_warnings(endpoint, raw=raw, resolve=resolve):
        stops = warning.fatal and (not live or warning.code == "unencoded-credentials")
        (problems if stops else warnings).append(str(warning))
    return problems, warnings


def judge(
    fed: Reading | None,
    *,
    drive_attached: bool,
    without_drive: Reading | None,
    boot_problem: str | None = None,
    drive_only: Sequence[str] = (),
    personality: bool = False,
    warnings: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> Verdict:
    """The verdict from what fed the VM, whether it booted, and what the sources without the drive give.

    ``fed``: the reading the agent kept (None: no source answered). ``boot_problem``: why the VM does
    not boot now (no user data, an unusable endpoint, a refused registry GET). ``without_drive``: the
    reading the agent would keep with every drive detached (None: nothing else in its order).
    ``drive_only``: content only the drive carries that nothing else delivers (personality files).
    """
    costs: list[str] = []
    if drive_attached:
        costs += [COST_DEPENDENCY, COST_MIGRATION]
    if personality:
        costs.append(COST_PERSONALITY)

    def verdict(word: Word, reasons: Sequence[str] = ()) -> Verdict:
        return Verdict(
            word,
            fed_by=fed.fed_by if fed is not None else None,
            fed_by_kind=fed.kind if fed is not None else None,
            reasons=tuple(reasons),
            costs=tuple(costs),
            warnings=tuple(warnings),
            notes=tuple(notes),
        )

    if fed is None or fed.problem is not None or boot_problem is not None:
        return verdict(Word.BROKEN, [boot_problem or (fed.problem if fed else None) or "no source gave user data"])
    lost = [f"{item} would be lost" for item in drive_only]
    if fed.kind == CONFIG_DRIVE:
        lost = _lost_without_drive(fed, without_drive) + lost
    return verdict(Word.PINNED, lost) if lost else verdict(Word.PORTABLE)


def _lost_without_drive(fed: Reading, other: Reading | None) -> list[str]:
    if other is None:
        return ["no other source in the agent's order gives user data"]
    if other.problem is not None or other.document is None:
        return [f"{other.fed_by}: {other.problem or 'no user data'}"]
    other_name = KIND_NAMES.get(other.kind, other.kind)
    found = flat_differences(fed.document or {}, other.document or {}, "drive", other_name)
    lost = [f"the {other_name} gives other user data: {difference}" for difference in found]
    if fed.registry_key != other.registry_key:
        lost.append(f"the registry key would be {other.registry_key!r}, not {fed.registry_key!r}")
    if fed.public_key and fed.public_key != other.public_key:
        lost.append(
            f"the public key ({_show(fed.public_key)}) is only on the drive"
            if not other.public_key
            else f"the {KIND_NAMES[other.kind]} gives another public key ({_show(other.public_key)})"
        )
    return lost


def flat_differences(
    first: Mapping[str, Any], second: Mapping[str, Any], first_name: str, second_name: str
) -> list[str]:
    """Key-by-key differences of two copies of user data (values redacted): a request's, or two sources'."""
    left, right = _flatten(first), _flatten(second)
    found = [f"only the {first_name} copy has {key}" for key in sorted(left.keys() - right.keys())]
    found += [f"only the {second_name} copy has {key}" for key in sorted(right.keys() - left.keys())]
    for key in sorted(left.keys() & right.keys()):
        if left[key] != right[key]:
            found.append(f"{key} differs: {first_name} {_show(left[key])}, {second_name} {_show(right[key])}")
    return found


def injected_losses(injected: Mapping[str, bytes], user_data: Mapping[str, Any] | None) -> list[str]:
    """What injected (personality) files carry that no other source delivers.

    The old CPI's copy of the user data at the personality path is compared key by key with the user
    data the agent reads; any other injected file exists only on the drive.
    """
    lost: list[str] = []
    for path, content in sorted(injected.items()):
        if path == nova.PERSONALITY_PATH:
            try:
                document = json.loads(content)
            except (ValueError, UnicodeDecodeError):
                document = None
            if isinstance(document, dict):
                if user_data is None:
                    lost.append(f"the user data itself (only in the injected {path})")
                else:
                    lost += [f"{key} (only in the injected {path})" for key in only_in(document, user_data)]
                continue
        lost.append(f"the injected file {path}")
    return lost


def only_in(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    """The keys (dotted) whose value ``first`` has and ``second`` lacks or holds differently."""
    left, right = _flatten(first), _flatten(second)
    return sorted(key for key in left if key not in right or right[key] != left[key])


def _flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _show(value: Any) -> str:
    text = redact_url(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[:_SHOWN_VALUE_CHARS] + "..."


def predict(
    readings: Mapping[str, Reading],
    *,
    order: Sequence[str] = STEMCELL_ORDER,
    drive_attached: bool,
    drive_only: Sequence[str] = (),
    personality: bool = False,
    notes: Sequence[str] = (),
    resolve: bool = False,
) -> Verdict:
    """The CPI side's verdict: the agent's walk, in its ``order``, over what the cloud will give each source.

    ``readings`` by kind: what the drive and the metadata service will carry (a kind left out gives nothing).
    A drive is there for the agent only when it carries user data; the metadata service is kept without
    a probe (the agent commits to it), exactly as ``agent resolve`` walks them live.
    """
    fed = _predicted_walk(readings, order)
    without = _predicted_walk(readings, [kind for kind in order if kind != CONFIG_DRIVE]) if drive_attached else None
    if fed is not None and fed.document is not None and fed.problem is None:
        problems, warnings = boot_problems(fed.document, resolve=resolve)
        if problems:
            fed = Reading(fed.kind, fed.where, fed.document, fed.public_key, fed.registry_key, "; ".join(problems))
    else:
        warnings = []
    if without is not None and without.document is not None and without.problem is None:
        other_problems, _ = boot_problems(without.document)
        if other_problems:
            without = Reading(without.kind, without.where, problem="; ".join(other_problems))
    return judge(
        fed,
        drive_attached=drive_attached,
        without_drive=without,
        drive_only=drive_only,
        personality=personality,
        warnings=warnings,
        notes=notes,
    )


def nova_readings(
    document: Mapping[str, Any] | None, *, drive_attached: bool, missing: str = "no user_data"
) -> dict[str, Reading]:
    """What the sources will give for a server's ``user_data``, as Nova lays it out.

    The metadata service serves it at /latest/user-data; an attached drive carries the same bytes at
    ec2/latest/user-data. Without user_data the metadata service answers 404 and the drive has no file.
    """
    on_metadata = nova.EC2_USER_DATA_PATH
    if document is None:
        return {METADATA: Reading(METADATA, on_metadata, problem=missing)}
    readings = {METADATA: Reading(METADATA, on_metadata, document)}
    if drive_attached:
        readings[CONFIG_DRIVE] = Reading(CONFIG_DRIVE, nova.DRIVE_EC2_USER_DATA, document)
    return readings


def _predicted_walk(readings: Mapping[str, Reading], order: Sequence[str]) -> Reading | None:
    for kind in order:
        reading = readings.get(kind)
        if reading is None or (kind != METADATA and reading.document is None):
            continue  # not there: the agent moves on
        return reading  # there (or the metadata service, kept without a probe)
    return None
