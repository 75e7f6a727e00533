"""The one typed settings object.

Sources, later ones winning: defaults, a TOML file (``--config``, else
``triage.toml`` in the working directory if present, else ``$TRIAGE_CONFIG``),
``TRIAGE_*`` environment variables, and CLI flags. Nested keys use a double
underscore in the environment: ``TRIAGE_LISTENER__PORT=11113`` sets
``[listener] port``.

Any bad key or value raises :class:`ConfigError` with one line naming the key
and where it came from, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from triage.errors import ConfigError
from triage.names import looks_alike, name_problem, normalise_name
from triage.vocabulary import FINDING_KINDS, PRIORITY_CLASSES

if TYPE_CHECKING:
    from dicom_io.listener import ListenerOptions

ENV_PREFIX = "TRIAGE_"
DEFAULT_CONFIG_NAME = "triage.toml"
# Environment variables with the prefix that are not settings keys.
_NON_SETTING_ENV = {"TRIAGE_CONFIG", "TRIAGE_USER"}  # TRIAGE_USER: the acting reader (triage case)

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, no backslash


def _check_networks(values: list[str]) -> list[str]:
    import ipaddress

    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address or CIDR network") from None
    return values


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable ASCII characters without '\\', not all spaces")
    return value.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TLSSettings(_Section):
    """DICOM TLS (PS3.15 Annex B.9). Off unless ``cert`` and ``key`` are set."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = Field(None, description="CA bundle to verify peers' certificates")
    require_client_cert: bool = True

    @property
    def enabled(self) -> bool:
        return self.cert is not None and self.key is not None


class PeerSettings(_Section):
    """One ``[[listener.peers]]`` entry: a calling AE title and the hosts it may call from."""

    ae_title: str
    hosts: list[str] = Field(min_length=1)  # IPs or CIDR networks

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, values: list[str]) -> list[str]:
        return _check_networks(values)


class ListenerSettings(_Section):
    ae_title: str = "TRIAGE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    max_associations: int = Field(32, ge=1, le=1024)  # across all listener processes
    # Listener processes sharing the port (Python runs one thread at a time per
    # process); 0 = one per available CPU core, 1 = in the main process.
    processes: int = Field(0, ge=0, le=64)
    # Our Maximum PDU Length (PS3.8 D.3.3.1); 0 means unlimited. A large PDU cuts
    # per-PDU overhead for big images; peers may still send smaller ones.
    max_pdu: int = Field(1 << 20, ge=0)
    network_timeout: float = Field(60.0, gt=0)
    # Empty list: every calling AE title is accepted.
    allowed_ae_titles: list[str] = Field(default_factory=list)
    # Empty list: every peer address is accepted (unless [[listener.peers]] is set). Entries are IPs or CIDR networks.
    allowed_peers: list[str] = Field(default_factory=list)
    # Known peers (like Orthanc's DicomModalities): when set, a calling AE title is accepted only from
    # its hosts, and connections from other addresses are closed at accept.
    peers: list[PeerSettings] = Field(default_factory=list)
    # Called AE titles answered besides ae_title (others are rejected, PS3.8 reason 7); "*" answers any.
    called_ae_titles: list[str] = Field(default_factory=list)
    # Open connections from one address, and ARTIM: connect to a complete A-ASSOCIATE-RQ (TLS included).
    max_per_peer: int = Field(16, ge=1, le=1024)
    acse_timeout: float = Field(30.0, gt=0)
    # Instances larger than this are refused (0xA700); they stream to disk as they arrive, never into memory.
    max_instance_mb: int = Field(4096, ge=1)
    # Refuse stores (0xA700) when the data volume has less free space than this.
    min_free_mb: int = Field(256, ge=0)
    # On SIGTERM: how long active associations may take to release by themselves.
    shutdown_grace: float = Field(5.0, ge=0)
    tls: TLSSettings = Field(default_factory=TLSSettings)

    @property
    def process_count(self) -> int:
        return self.processes or min(available_cores(), 8)

    def options(self) -> ListenerOptions:
        """The plain options dicom_io's listener takes (it never reads the application's settings)."""
        from dicom_io.listener import KnownPeer, ListenerOptions, TLSOptions  # here: the listener imports pynetdicom
        from triage import __version__

        tls = self.tls
        return ListenerOptions(
            ae_title=self.ae_title,
            host=self.host,
            port=self.port,
            max_associations=self.max_associations,
            max_pdu=self.max_pdu,
            network_timeout=self.network_timeout,
            allowed_ae_titles=tuple(self.allowed_ae_titles),
            allowed_peers=tuple(self.allowed_peers),
            peers=tuple(KnownPeer(p.ae_title, tuple(p.hosts)) for p in self.peers),
            called_ae_titles=tuple(self.called_ae_titles),
            max_per_peer=self.max_per_peer,
            acse_timeout=self.acse_timeout,
            shutdown_grace=self.shutdown_grace,
            tls=TLSOptions(cert=tls.cert, key=tls.key, ca=tls.ca, require_client_cert=tls.require_client_cert),
            implementation_version=f"TRIAGE_{__version__}"[:16],
        )

    @field_validator("ae_title")
    @classmethod
    def _check_own_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("allowed_ae_titles")
    @classmethod
    def _check_allowed(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]

    @field_validator("allowed_peers")
    @classmethod
    def _check_peers(cls, values: list[str]) -> list[str]:
        return _check_networks(values)

    @field_validator("called_ae_titles")
    @classmethod
    def _check_called(cls, values: list[str]) -> list[str]:
        return [v if v == "*" else _check_ae_title(v) for v in values]

    @model_validator(mode="after")
    def _one_ae_rule(self) -> ListenerSettings:
        if self.peers and self.allowed_ae_titles:
            raise ValueError("set listener.peers or listener.allowed_ae_titles, not both (peers binds each AE title to its hosts)")
        titles = [p.ae_title for p in self.peers]
        if len(set(titles)) != len(titles):
            raise ValueError("listener.peers: an AE title is listed twice (give one entry with all its hosts)")
        return self


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class CompletenessSettings(_Section):
    """When a series counts as complete: no new instance for ``stable_after`` s."""

    stable_after: float = Field(15.0, gt=0)
    # Overrides per modality, e.g. {"CR" = 5, "CT" = 20}.
    per_modality: dict[str, float] = Field(default_factory=lambda: {"CR": 5.0, "DX": 5.0})
    check_interval: float = Field(0.5, gt=0)  # seconds between checks: part of the time to triage

    @field_validator("per_modality")
    @classmethod
    def _check_per_modality(cls, values: dict[str, float]) -> dict[str, float]:
        for modality, seconds in values.items():
            if seconds <= 0:
                raise ValueError(f"{modality}: must be > 0 seconds, got {seconds}")
        return {k.upper(): v for k, v in values.items()}

    def stable_after_for(self, modality: str | None) -> float:
        return self.per_modality.get((modality or "").upper(), self.stable_after)


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DetectorSettings(_Section):
    """The inference engine and which models score (``[detectors]``).

    Whether a CUDA or MPS device exists is checked when the engine starts, not
    here: a settings file is valid on a machine without the GPU it names.
    """

    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    max_batch: int = Field(8, ge=1)  # items per module call
    max_wait_ms: float = Field(10.0, ge=0)  # longest an item waits for its batch to fill
    workers: int = Field(2, ge=1)  # threads reading pixels / postprocessing
    # External model cards (TOML beside TorchScript weights); one for the same
    # finding kind and image family replaces the shipped detector.
    external: list[Path] = Field(default_factory=list)
    # The site's operating points (detector name -> calibrated probability),
    # chosen on its own labelled studies by `triage evaluate --set-operating-point`;
    # each replaces the card's threshold. Names are checked when detectors load.
    operating_points: dict[str, float] = Field(default_factory=dict)

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        v = v.strip().lower()
        if not _DEVICE.match(v):
            raise ValueError('must be "auto", "cpu", "cuda", "cuda:N" or "mps"')
        return v

    @field_validator("external")
    @classmethod
    def _expand(cls, values: list[Path]) -> list[Path]:
        return [p.expanduser() for p in values]

    @field_validator("operating_points")
    @classmethod
    def _check_operating_points(cls, values: dict[str, float]) -> dict[str, float]:
        for name, point in values.items():
            if not name.strip():
                raise ValueError("a detector name must not be empty")
            if not math.isfinite(point) or not 0.0 <= point <= 1.0:
                raise ValueError(f"{name}: must be a probability in [0, 1], got {point}")
        return values


class PolicySettings(_Section):
    """The urgency policy (``[policy]``, see ``triage.flow.policy``): points, class thresholds, waiting targets.

    A study's score is the sum of its finding points, order-priority points and
    context points (its *base*), plus ageing: ``ageing_points`` for every
    waiting target of its base class that it has waited. The class is read off
    the total against ``critical_at`` and ``urgent_at``.
    """

    # Points of a finding at or above its detector's operating point, per kind;
    # below the operating point a finding earns at most half of them.
    finding_points: dict[str, float] = Field(default_factory=lambda: {"bleed": 100.0, "fracture": 50.0, "nodule": 30.0})
    # Points per normalised order priority (DICOM Requested Procedure / Scheduled Procedure Step Priority).
    order_points: dict[str, float] = Field(default_factory=lambda: {"STAT": 60.0, "HIGH": 25.0, "MEDIUM": 0.0, "ROUTINE": 0.0, "LOW": -5.0})
    # Points when Current Patient Location or the requesting service names one of these words.
    emergency_words: list[str] = Field(default_factory=lambda: ["EMERGENCY", "ED", "ER", "A&E", "TRAUMA", "RESUS"])
    emergency_points: float = Field(20.0, ge=0)
    critical_at: float = Field(100.0, gt=0)
    urgent_at: float = Field(40.0, gt=0)
    # Minutes within which a case of each class should be read.
    targets_min: dict[str, float] = Field(default_factory=lambda: {"critical": 15.0, "urgent": 60.0, "routine": 240.0})
    ageing_points: float = Field(20.0, ge=0)

    @field_validator("finding_points")
    @classmethod
    def _check_findings(cls, values: dict[str, float]) -> dict[str, float]:
        for kind, points in values.items():
            if kind not in FINDING_KINDS:
                raise ValueError(f"{kind}: not a finding kind ({', '.join(FINDING_KINDS)})")
            if points < 0:
                raise ValueError(f"{kind}: must be >= 0, got {points}")
        return values

    @field_validator("order_points")
    @classmethod
    def _check_orders(cls, values: dict[str, float]) -> dict[str, float]:
        return {k.upper(): v for k, v in values.items()}

    @field_validator("emergency_words")
    @classmethod
    def _check_words(cls, values: list[str]) -> list[str]:
        return [w.strip().upper() for w in values if w.strip()]

    @field_validator("targets_min")
    @classmethod
    def _check_targets(cls, values: dict[str, float]) -> dict[str, float]:
        missing = [c for c in PRIORITY_CLASSES if c not in values]
        unknown = [c for c in values if c not in PRIORITY_CLASSES]
        if missing or unknown:
            raise ValueError(f"needs exactly {', '.join(PRIORITY_CLASSES)}")
        for name, minutes in values.items():
            if minutes <= 0:
                raise ValueError(f"{name}: must be > 0 minutes, got {minutes}")
        return values

    @model_validator(mode="after")
    def _check_thresholds(self) -> PolicySettings:
        if self.critical_at <= self.urgent_at:
            raise ValueError("critical_at must be greater than urgent_at")
        return self


class WorklistSettings(_Section):
    """Reading rules (``[worklist]``, see ``triage.reading.service``)."""

    claim_minutes: float = Field(30.0, gt=0)  # a claim not renewed for this long lapses
    # Blinded reads: the AI output of a study is hidden from a reader until they
    # have recorded their own impression of it.
    blinded: bool = False
    # The terminal worklist's image preview: "regions" draws the AI's suspect
    # regions (detection aid); "flag_only" shows the flag and probability but no
    # marks on the image (passive triage).
    display: Literal["regions", "flag_only"] = "regions"
    # The reader for `triage worklist`, among those this OS account may act as ([readers]); empty:
    # --user, else the account's only reader (triage.reading.identity).
    user: str = ""
    # PAM service that checks an OS account's password when an auth = "pam" reader signs
    # (a file in /etc/pam.d; "login" exists everywhere, a site may add its own "triage").
    pam_service: str = Field("login", min_length=1, max_length=64)


class ReaderSettings(_Section):
    """One reader (``[readers.NAME]``): who they are, which OS accounts may act as them, how they sign.

    See ``triage.reading.identity`` (who acts) and ``triage.reading.signing`` (the
    second factor at signing, 21 CFR 11.200(a)(1)).
    """

    display_name: str = Field("", max_length=128)
    # "admin" may also reset other readers' signing passwords (`triage readers passwd NAME`).
    role: Literal["radiologist", "admin"] = "radiologist"
    # OS accounts that may act as this reader; None: the account named like the reader.
    os_accounts: list[str] | None = None
    # What signing asks for: "password" (a per-reader secret, `triage readers passwd`)
    # or "pam" (the OS account's own password, checked by PAM).
    auth: Literal["password", "pam"] = "password"

    @field_validator("os_accounts")
    @classmethod
    def _check_accounts(cls, values: list[str] | None) -> list[str] | None:
        if values is not None:
            if not values:
                raise ValueError("must name at least one OS account (or be left out)")
            for v in values:
                if not v.strip() or v != v.strip() or ":" in v or len(v) > 64:
                    raise ValueError(f"{v!r} is not an OS account name")
        return values


class PipelineSettings(_Section):
    """Scoring jobs (``[pipeline]``): the DB is the queue, claimed with a lease."""

    enabled: bool = True  # false: this `triage serve` only receives (another host scores)
    lease_seconds: float = Field(60.0, gt=0)  # a job whose lease is not renewed in this time is claimed again
    max_attempts: int = Field(3, ge=1)  # then the series shows "AI failed: <reason>"
    poll_interval: float = Field(0.5, gt=0)  # seconds between looks for new jobs
    concurrent_jobs: int = Field(4, ge=1)  # series in flight at once, so the engine can batch across them
    # While a worker scores a job it renews the lease this often, so a long job is
    # not taken over; a worker that dies stops renewing and its job is claimed
    # again once the lease runs out.
    heartbeat_seconds: float = Field(15.0, gt=0)

    @model_validator(mode="after")
    def _check_heartbeat(self) -> PipelineSettings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        return self


class Destination(_Section):
    """A DICOM peer that receives the AI results (a PACS, a VNA, a viewer)."""

    name: str = Field(min_length=1, max_length=32)
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    # DICOM TLS (PS3.15 B.1): on when ``tls`` is true. ``ca`` verifies the peer's
    # certificate (else the system's CAs); ``cert``/``key``: our client certificate
    # where the peer asks for one.
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # the name in the peer's certificate, if not ``host``

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @model_validator(mode="after")
    def _check_tls(self) -> Destination:
        if (self.cert is None) != (self.key is None):
            raise ValueError(f"{self.name}: cert and key go together")
        for path in (self.ca, self.cert, self.key):
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"{self.name}: no such file: {path}")
        return self


class ResultsSettings(_Section):
    """AI results and signed reports back to the PACS (``[results]``)."""

    # Each destination gets every result object; empty: no result objects are built or sent.
    destinations: list[Destination] = Field(default_factory=list)
    calling_ae: str = "TRIAGE"
    # A Secondary Capture per finding with its box burned in and "AI suggestion" in the image.
    key_images: bool = False
    # After a radiologist signs: "none", or "sr" (a Basic Text SR with the radiologist as author).
    report_export: Literal["none", "sr"] = "sr"
    retry_min_seconds: float = Field(5.0, gt=0)  # back-off after a failed send: doubles from here ...
    retry_max_seconds: float = Field(600.0, gt=0)  # ... up to here, and keeps trying until acknowledged
    send_interval: float = Field(1.0, gt=0)  # seconds between looks at the outbox

    @field_validator("calling_ae")
    @classmethod
    def _check_calling(cls, value: str) -> str:
        return _check_ae_title(value)


class AuditSettings(_Section):
    """The audit trail's key and anchors (``[audit]``, see ``triage.store.audit``)."""

    # The HMAC key of the hash chain, kept outside the database (created 0600 on first use).
    key_file: Path = Field(default_factory=lambda: Path(platformdirs.user_config_dir("triage")) / "audit.key")
    # Where the server appends the chain's head now and then; empty: <data_dir>/audit-anchors.jsonl.
    anchor_file: Path | None = None
    anchor_interval_s: float = Field(300.0, gt=0)  # seconds between anchors (only when the head moved)

    @field_validator("key_file", "anchor_file")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    def anchor_path(self, data_dir: Path) -> Path:
        return self.anchor_file or data_dir / "audit-anchors.jsonl"


class StorageSettings(_Section):
    """``[storage]``: who may read the data directory (see ``triage.store.permissions``)."""

    # The readers' group: folders and instances get it (rwxr-x---, rw-r-----), and the SQLite
    # index is made rw-rw---- for it; empty: the server's account alone (rw-------).
    group: str = ""


class Settings(_Section):
    # What this `triage serve` runs: "all" (one machine), "listener" (receive and
    # index only) or "worker" (score jobs and send results only), for scale-out on PostgreSQL.
    role: Literal["all", "listener", "worker"] = "all"
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("triage")))
    # SQLAlchemy URL; empty means SQLite at <data_dir>/triage.db.
    db: str = ""
    log_level: str = "INFO"
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    completeness: CompletenessSettings = Field(default_factory=CompletenessSettings)
    detectors: DetectorSettings = Field(default_factory=DetectorSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    worklist: WorklistSettings = Field(default_factory=WorklistSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    results: ResultsSettings = Field(default_factory=ResultsSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    # The readers ([readers.NAME] tables); empty: every OS account acts as the reader of its own name.
    readers: dict[str, ReaderSettings] = Field(default_factory=dict)

    @field_validator("readers")
    @classmethod
    def _check_reader_names(cls, readers: dict[str, ReaderSettings]) -> dict[str, ReaderSettings]:
        seen: list[str] = []
        for name in readers:
            problem = name_problem(name)
            if problem is not None:
                raise ValueError(f"reader [readers.{name}]: {problem}")
            normal = normalise_name(name)
            if normal != name:
                raise ValueError(f"reader [readers.{name}]: write the name as {normal!r} (NFKC, no surrounding space)")
            for other in seen:
                if looks_alike(name, other):
                    raise ValueError(f"reader [readers.{name}]: looks like reader {other!r}")
            seen.append(name)
        return readers

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return v

    @field_validator("db")
    @classmethod
    def _check_db(cls, v: str) -> str:
        if v:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                make_url(v)
            except ArgumentError:
                raise ValueError("not an SQLAlchemy database URL") from None
        return v

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.data_dir / 'triage.db'}"


def _set_nested(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config: {dotted}: {part} is not a section")
    node[leaf] = value


def _env_value(raw: str) -> Any:
    """Environment values are strings; lists and tables may be written as JSON."""
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            pass
    return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """``TRIAGE_LISTENER__PORT`` -> ``{"listener.port": ("TRIAGE_LISTENER__PORT", raw)}``."""
    out: dict[str, tuple[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NON_SETTING_ENV:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        out[dotted] = (name, _env_value(raw))
    return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in _TABLE_VALUED:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


# Keys whose value is itself a table (not a section): kept whole when flattening.
_TABLE_VALUED = {
    "completeness.per_modality",
    "policy.finding_points",
    "policy.order_points",
    "policy.targets_min",
    "detectors.operating_points",
    "readers",  # reader names are keys and may contain dots ([readers."a.smith"])
}


def _format_error(err: ValidationError, origins: Mapping[str, str]) -> str:
    first = err.errors()[0]
    dotted = ".".join(str(p) for p in first["loc"])
    origin = origins.get(dotted) or next((o for k, o in origins.items() if dotted.startswith(k + ".")), "default")
    if first["type"] == "extra_forbidden":
        return f"config: unknown key '{dotted}' (from {origin})"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = f", got {value!r}" if not isinstance(value, dict) else ""
    return f"config: {dotted}: {msg}{shown} (from {origin})"


def resolve_config_path(explicit: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The TOML file to read: the flag, else ``$TRIAGE_CONFIG``, else ./triage.toml if present."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config: file {path} does not exist")
        return path
    if environ.get("TRIAGE_CONFIG"):
        return resolve_config_path(environ["TRIAGE_CONFIG"], {})
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def load_settings(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from defaults, TOML, environment and CLI overrides.

    Parameters
    ----------
    config_file
        Path given with ``--config``; ``None`` looks for ``$TRIAGE_CONFIG`` and
        ``./triage.toml``.
    overrides
        Dotted keys from CLI flags (``{"listener.port": 11113}``); ``None``
        values are ignored so unset flags do not override anything.
    environ
        The environment to read ``TRIAGE_*`` from (``os.environ`` by default).
    """
    environ = os.environ if environ is None else environ
    path = resolve_config_path(config_file, environ)
    flat: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
        for dotted, value in _flatten(data).items():
            flat[dotted], origins[dotted] = value, str(path)
    for dotted, (name, value) in _env_overrides(environ).items():
        flat[dotted], origins[dotted] = value, name
    for dotted, value in (overrides or {}).items():
        if value is not None:
            flat[dotted], origins[dotted] = value, "command line"
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        _set_nested(tree, dotted, value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origins)) from None
