"""The one typed settings object.

Sources, later ones winning: defaults, one TOML file (the first of ``--config``,
``$TRIAGE_CONFIG``, ``./triage.toml``, the user's config directory and
``/etc/triage/triage.toml``: see :func:`resolve_config_path`), ``TRIAGE_*``
environment variables, and CLI flags. Nested keys use a double underscore in the
environment: ``TRIAGE_LISTENER__PORT=11113`` sets ``[listener] port``.
``TRIAGE_*`` variables that name no setting are ignored with one warning (see
:func:`_env_overrides`); unknown keys in the file are errors.

Any bad key or value raises :class:`ConfigError` with one line naming the key
and where it came from (the file, the variable, the flag, or "default"), so the
CLI can print it and exit 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from triage.clock import host_zone_name, zone_problem
from triage.errors import ConfigError
from triage.names import looks_alike, name_problem, normalise_name
from triage.vocabulary import FINDING_KINDS, PRIORITY_CLASSES

if TYPE_CHECKING:
    from dicom_io.listener import ListenerOptions

logger = logging.getLogger(__name__)

ENV_PREFIX = "TRIAGE_"
DEFAULT_CONFIG_NAME = "triage.toml"
# The system-wide settings file, last in the lookup; tests point it elsewhere.
SYSTEM_CONFIG_FILE = Path("/etc/triage/triage.toml")
# Environment variables with the prefix that are not settings keys, read elsewhere: never warned about.
# TRIAGE_USER: the acting reader (triage case); TRIAGE_REALDATA: detectors.realdata's download cache.
_NON_SETTING_ENV = {"TRIAGE_CONFIG", "TRIAGE_USER", "TRIAGE_REALDATA"}

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


class SiteSettings(_Section):
    """``[site]``: where the system runs. Times are stored in UTC and shown on the site's clock."""

    # IANA zone name ("Europe/Berlin"): the worklist and CLI show times in it, and the result
    # objects' own dates and times and TimezoneOffsetFromUTC (PS3.3 C.12.1) are written in it,
    # beside the study's local StudyDate/StudyTime. Default: the host's zone (triage.clock.host_zone_name).
    timezone: str = Field(default_factory=host_zone_name)

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        problem = zone_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class RetentionSettings(_Section):
    """``[retention]``: when stored pixels are deleted (see ``triage.store.retention``).

    Only a signed study whose every result the destinations acknowledged is
    ever eligible; its index rows, reports and audit events stay.
    """

    # Off by default: deleting patient images is a site's decision, taken in its configuration.
    enabled: bool = False
    # Days after the (last) signature when an eligible study's pixels go; 0: never by age.
    days: float = Field(30.0, ge=0)
    # When the data volume is fuller than this (percent used), the oldest eligible studies go,
    # younger than `days` too, until it is below `low_water_percent`; 0: no high-water clean-up.
    high_water_percent: float = Field(85.0, ge=0, lt=100)
    low_water_percent: float = Field(75.0, gt=0, lt=100)
    # Even under high water, a study signed less than this many hours ago is kept (amendments follow signing).
    high_water_min_hours: float = Field(1.0, ge=0)
    interval_s: float = Field(60.0, gt=0)  # seconds between the server's checks

    @model_validator(mode="after")
    def _check_marks(self) -> RetentionSettings:
        if self.high_water_percent and self.low_water_percent >= self.high_water_percent:
            low, high = self.low_water_percent, self.high_water_percent
            raise ValueError(f"low_water_percent ({low:g}) must be below high_water_percent ({high:g})")
        return self


class MonitoringSettings(_Section):
    """``[monitoring]``: the HTTP endpoint of ``triage serve``, ``/healthz`` and ``/metrics`` (``triage.app.health``)."""

    # Loopback by default: the endpoint has no authentication (it shows counts and ages, no patient data);
    # "0.0.0.0" where Prometheus scrapes from another host.
    http_host: str = "127.0.0.1"
    # Off unless set: two `triage serve` on one host (a worker per GPU) would fight over any fixed default.
    # 9464 is the usual choice; 0 takes a free port (tests; the log names it).
    http_port: int | None = Field(None, ge=0, le=65535)


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
    site: SiteSettings = Field(default_factory=SiteSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
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


def _set_nested(tree: dict[str, Any], dotted: str, value: Any, origins: Mapping[str, str]) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for n, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            above = ".".join(parents[: n + 1])
            raise ConfigError(
                f"config: {dotted} (from {origin_of(dotted, origins)}): {above} is not a section (from {origin_of(above, origins)})"
            )
    node[leaf] = value


def _env_value(raw: str) -> Any:
    """Environment values are strings; lists and tables may be written as JSON."""
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            pass
    return raw


# Ignored variables already named in a warning: each is named once per process, not at every load.
_warned_env: set[str] = set()


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """``TRIAGE_LISTENER__PORT`` -> ``{"listener.port": ("TRIAGE_LISTENER__PORT", raw)}``.

    A variable is a setting when its first part names a top-level key or section
    (``TRIAGE_DB``, ``TRIAGE_LISTENER__...``). Others are not ours and are
    ignored, named in one warning: Kubernetes sets ``TRIAGE_PORT=tcp://...``,
    ``TRIAGE_SERVICE_HOST`` and the like in every pod beside a Service named
    "triage". Below a known section every key is kept, so a misspelt one
    (``TRIAGE_LISTENER__PROT``) fails validation naming the variable: nothing
    else sets such names, and ignoring it would run with a value the operator
    believes changed (a misspelt ``ALLOWED_PEERS`` would leave the listener open).
    """
    out: dict[str, tuple[str, Any]] = {}
    ignored: list[str] = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NON_SETTING_ENV:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if dotted.split(".", 1)[0] not in Settings.model_fields:
            ignored.append(name)
            continue
        out[dotted] = (name, _env_value(raw))
    new = sorted(set(ignored) - _warned_env)
    if new:
        _warned_env.update(new)
        logger.warning("ignoring environment variables that name no triage setting: %s", ", ".join(new))
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


def origin_of(dotted: str, origins: Mapping[str, str]) -> str:
    """Where the value at ``dotted`` came from, for messages and ``triage config show``.

    Its own source; else the source of a table above it (``TRIAGE_LISTENER='{...}'``,
    a ``[readers.NAME]`` table); else the sources of the keys set below it (a rule
    over a whole section, such as ``policy``'s critical_at > urgent_at, is
    reported at the section); else ``"default"``.
    """
    if dotted in origins:
        return origins[dotted]
    parts = dotted.split(".")
    for n in range(len(parts) - 1, 0, -1):
        above = ".".join(parts[:n])
        if above in origins:
            return origins[above]
    below = sorted(k for k in origins if not dotted or k.startswith(dotted + "."))
    if below:
        return ", ".join(f"{k} in {origins[k]}" for k in below)
    return "default"


def _format_error(err: ValidationError, origins: Mapping[str, str]) -> str:
    first = err.errors()[0]
    dotted = ".".join(str(p) for p in first["loc"])
    origin = origin_of(dotted, origins)
    if first["type"] == "extra_forbidden":
        return f"config: unknown key '{dotted}' (from {origin})"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = f", got {value!r}" if not isinstance(value, dict) else ""
    return f"config: {dotted or 'settings'}: {msg}{shown} (from {origin})"


def config_search_path(system_file: Path | None = None) -> list[Path]:
    """Where a settings file is looked for when none is named, first first.

    ``./triage.toml``, ``triage.toml`` in the user's config directory
    (``platformdirs.user_config_dir("triage")``), then ``system_file``
    (default :data:`SYSTEM_CONFIG_FILE`, ``/etc/triage/triage.toml``).
    """
    user = Path(platformdirs.user_config_dir("triage")) / DEFAULT_CONFIG_NAME
    return [Path(DEFAULT_CONFIG_NAME), user, system_file or SYSTEM_CONFIG_FILE]


def _named_file(path: str | Path, named_by: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist (from {named_by})")
    return path


def resolve_config_path(explicit: str | Path | None, environ: Mapping[str, str], search: Sequence[Path] | None = None) -> Path | None:
    """The one TOML file to read: ``explicit`` (``--config``), else ``$TRIAGE_CONFIG``, else the first that exists of ``search``.

    ``search`` defaults to :func:`config_search_path`: ``./triage.toml``, the
    user's config directory, ``/etc/triage/triage.toml``. A file that is named
    (flag or variable) must exist; one that is looked for may not.

    The first file found is used whole; files are not merged. A site reads
    every setting that applies in the one file ``triage config show`` names,
    and a user's file cannot silently inherit ``[readers]`` or
    ``listener.peers`` from ``/etc`` that its author never saw (nor lose them
    by adding one key). Changing one key for one run is what ``TRIAGE_*``
    variables and flags are for.
    """
    if explicit:
        return _named_file(explicit, "--config")
    if environ.get("TRIAGE_CONFIG"):
        return _named_file(environ["TRIAGE_CONFIG"], "TRIAGE_CONFIG")
    for path in config_search_path() if search is None else search:
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class LoadedSettings:
    """Settings with where each came from (``triage config show``)."""

    settings: Settings
    file: Path | None  # the TOML file read, None when none was found
    origins: Mapping[str, str]  # dotted key -> file path, variable or flag; keys absent are defaults

    def origin(self, dotted: str) -> str:
        """See :func:`origin_of`."""
        return origin_of(dotted, self.origins)


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    search: Sequence[Path] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults, TOML, environment and CLI overrides.

    Parameters
    ----------
    config_file
        Path given with ``--config``; ``None`` looks for ``$TRIAGE_CONFIG``,
        then the files of ``search``.
    overrides
        Dotted keys from CLI flags (``{"listener.port": 11113}``); ``None``
        values are ignored so unset flags do not override anything.
    environ
        The environment to read ``TRIAGE_*`` from (``os.environ`` by default).
    flags
        The flag that set each override (``{"listener.port": "--port"}``), named
        in errors; an override without one is "command line".
    search
        Files to look for when none is named (default :func:`config_search_path`).

    Raises
    ------
    ConfigError
        A named file missing, a file that is not TOML, an unknown key or a bad
        value: one line naming the key and its origin.
    """
    return load_settings_with_origins(config_file, overrides, environ, flags=flags, search=search).settings


def load_settings_with_origins(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    search: Sequence[Path] | None = None,
) -> LoadedSettings:
    """:func:`load_settings`, also returning the file read and the origin of each key set."""
    environ = os.environ if environ is None else environ
    path = resolve_config_path(config_file, environ, search)
    flat: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
        except OSError as exc:  # e.g. /etc/triage/triage.toml not readable by this account
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
        for dotted, value in _flatten(data).items():
            flat[dotted], origins[dotted] = value, str(path)
    for dotted, (name, value) in _env_overrides(environ).items():
        flat[dotted], origins[dotted] = value, name
    for dotted, value in (overrides or {}).items():
        if value is not None:
            flat[dotted], origins[dotted] = value, (flags or {}).get(dotted, "command line")
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        _set_nested(tree, dotted, value, origins)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origins)) from None
    return LoadedSettings(settings, path, origins)
