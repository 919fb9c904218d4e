"""Configuration: parse ``Key = value`` files once into a frozen, typed Settings.

The file says two kinds of things: how mail is decided (parsed into the core's
``Policy``, in the core's own words, so the core never reads this module) and
how the service runs (sockets, user, workers, ...: fields of ``Settings`` that
only the daemon and the front ends read).

Key names follow python policyd-spf / pyspf-milter where the concept is the same,
so that their users can point spfmilter at the files they already have.  Every
mistake is reported as one ``ConfigError`` line naming file, line and key; the
daemon prints that line and exits instead of starting with a guess.  What each
key's value may be is ``config_values``; this module is the file's structure:
the key table, ``[recipient ...]`` sections and Settings.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spfmilter import config_values as v
from spfmilter.config_values import parse_policy_socket
from spfmilter.core.policy import (
    DEFAULT_REASON,
    DEFAULT_URL,
    POLICY_FIELDS,
    REASON_FIELDS,
    HeaderType,
    HeloPolicy,
    MailFromPolicy,
    PassAllPolicy,
    Policy,
    RecipientPolicy,
    UnreadableHop,
)
from spfmilter.endpoint import Endpoint

# The policy's words are the core's; callers that configure (and the tests) name them
# through this module too, as what a value in the file is parsed into.
__all__ = ["DEFAULT_REASON", "DEFAULT_URL", "DEFAULT_SOCKET", "REASON_FIELDS", "ConfigError",
           "HeaderType", "HeloPolicy", "MailFromPolicy", "PassAllPolicy", "Policy",
           "RecipientPolicy", "Settings", "UnreadableHop", "from_mapping", "load", "parse",
           "parse_policy_socket", "parse_text", "source"]


class ConfigError(Exception):
    """A configuration mistake, rendered as one line an administrator can act on."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "<settings>"
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.message}"


DEFAULT_SOCKET = Endpoint.parse("unix:/run/spfmilter/spfmilter.sock")


@dataclass(frozen=True)
class Settings:
    """What the file says: the policy the core decides with, and the service settings
    only the daemon and the front ends read; built only by ``parse``/``from_mapping``."""

    policy: Policy = field(default_factory=Policy)
    socket: Endpoint = DEFAULT_SOCKET
    nameservers: tuple[tuple[str, int], ...] = ()
    user_id: str | None = None
    pid_file: str | None = None
    umask: int = 0o007
    debug_level: int = 1
    log_queue_id: bool = True
    metrics: tuple[str, int] | None = None
    policy_socket: Endpoint | None = None
    policy_idle_timeout: float = 330.0
    helo_pass_restriction: str = ""
    mail_from_pass_restriction: str = ""
    workers: int = 0                  # 0: "auto", one per CPU this process may run on

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields (of the settings or of the policy) replaced, for
        command-line overrides, reloads and tests."""
        policy_changes = {k: changes.pop(k) for k in list(changes) if k in POLICY_FIELDS}
        policy = dataclasses.replace(self.policy, **policy_changes)  # type: ignore[arg-type]
        return dataclasses.replace(self, policy=policy, **changes)  # type: ignore[arg-type]


# key (lower case) -> (canonical key as documented, Policy or Settings field, parser)
_KEYS: dict[str, tuple[str, str, Callable[[str], object]]] = {
    k.lower(): (k, f, p) for k, f, p in [
        ("Socket", "socket", Endpoint.parse),
        ("HELO_reject", "helo_reject", v.enum_of(HeloPolicy)),
        ("Mail_From_reject", "mail_from_reject", v.enum_of(MailFromPolicy)),
        ("PermError_reject", "permerror_reject", v.boolean),
        ("TempError_Defer", "temperror_defer", v.boolean),
        ("TestOnly", "never_refuse", v.never_refuse),
        ("skip_addresses", "skip_addresses", v.networks),
        ("Whitelist", "whitelist", v.networks),
        ("Domain_Whitelist", "domain_whitelist", v.domains),
        ("HELO_Whitelist", "helo_whitelist", v.domains),
        ("Exempt_Recipients", "exempt_recipients", v.recipients),
        ("Header_Type", "header_type", v.enum_of(HeaderType)),
        ("Authserv_Id", "authserv_id", v.authserv_id),
        ("Hide_Receiver", "hide_receiver", v.boolean),
        ("Lookup_Time", "lookup_time", v.positive_float),
        ("Void_Limit", "void_limit", v.nonneg_int),
        ("Reason_Message", "reason_message", v.reason),
        ("Nameservers", "nameservers", v.nameservers),
        ("UserID", "user_id", v.optional_text),
        ("PidFile", "pid_file", v.optional_text),
        ("UMask", "umask", v.umask),
        ("debugLevel", "debug_level", v.nonneg_int),
        ("InternalHosts", "internal_hosts", v.networks),
        ("Reject_Not_Pass_Domains", "reject_not_pass_domains", v.domains),
        ("SPF_Enhanced_Status_Codes", "enhanced_status_codes", v.boolean),
        ("Whitelist_Lookup_Time", "whitelist_lookup_time", v.positive_float),
        ("Reason_URL", "reason_url", v.reason_url),
        ("QueueID", "log_queue_id", v.boolean),
        ("Local_Rules", "local_rules", v.mechanisms),
        ("Best_Guess", "best_guess", v.record),
        ("Pass_All_Records", "pass_all_records", v.enum_of(PassAllPolicy)),
        ("Metrics", "metrics", v.host_port),
        ("DKIM_Rescue", "dkim_rescue", v.boolean),
        ("DKIM_Max_Bytes", "dkim_max_bytes", v.byte_count),
        ("Trusted_Relays", "trusted_relays", v.networks),
        ("Trusted_Relays_Unreadable", "trusted_relays_unreadable", v.enum_of(UnreadableHop)),
        ("Policy_Socket", "policy_socket", parse_policy_socket),
        ("Policy_Idle_Timeout", "policy_idle_timeout", v.positive_float),
        ("HELO_pass_restriction", "helo_pass_restriction", v.restriction),
        ("Mail_From_pass_restriction", "mail_from_pass_restriction", v.restriction),
        ("Workers", "workers", v.workers),
    ]
}

# Keys of python policyd-spf / pyspf-milter that spfmilter does not take, and what
# to use instead: a migrating administrator gets a pointer, not just "unknown".
REFUSED_KEYS: dict[str, str] = {k.lower(): v for k, v in {
    "No_Mail": "use Mail_From_reject = Fail, which also refuses domains that publish 'v=spf1 -all'",
    "Domain_Whitelist_PTR": "use Whitelist with the forwarder's addresses, or Domain_Whitelist",
    "Mock": "to try a transaction use 'spfmilter check --ip ... --helo ... --from ...'",
    "Prospective": "to try an address use 'spfmilter check --ip ADDRESS ...'",
    "Per_User": "put per-recipient settings in [recipient ...] sections of this file",
    "defaultSeedOnly": "use TestOnly",
    "MacroList": "not needed: spfmilter reads the macros it uses (see init/postfix-main.cf)",
    "MacroListVerify": "not needed: spfmilter reads the macros it uses (see init/postfix-main.cf)",
    "IntegratedAuth": "not needed: SMTP AUTH clients ({auth_authen}) are never refused",
}.items()}

# What a [recipient ...] section may change: the decision, not what is evaluated.
RECIPIENT_KEYS = frozenset({"helo_reject", "mail_from_reject", "permerror_reject",
                            "temperror_defer", "never_refuse", "reject_not_pass_domains"})

KNOWN_KEYS: tuple[str, ...] = tuple(v[0] for v in _KEYS.values())


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


_SECTION = re.compile(r"^\[\s*recipient\s+(\S+)\s*\]$", re.I)


def parse_text(text: str, path: str = "<string>") -> Settings:
    """Parse configuration text; ``path`` only names the source in errors."""
    values: dict[str, object] = {}
    seen: dict[str, int] = {}
    sections: list[RecipientPolicy] = []
    section: dict[str, object] | None = None
    section_seen: dict[str, int] = {}
    for number, line in _lines(text):
        if line.startswith("["):
            m = _SECTION.match(line)
            if not m:
                raise ConfigError("expected a section '[recipient user@domain|user@|@domain]'",
                                  path, number)
            try:
                pattern = v.recipients(m.group(1))[0]
            except ValueError as exc:
                raise ConfigError(str(exc), path, number, "[recipient]") from None
            section, section_seen = {}, {}
            sections.append(RecipientPolicy(pattern, (), number))
            continue
        key, sep, raw = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("expected 'Key = value'", path, number, key or None)
        entry = _KEYS.get(key.lower())
        if entry is None:
            hint = REFUSED_KEYS.get(key.lower())
            if hint:
                raise ConfigError(f"not supported by spfmilter: {hint}", path, number, key)
            raise ConfigError("unknown key (known keys: " + ", ".join(KNOWN_KEYS) + ")",
                              path, number, key)
        canonical, field_name, parser = entry
        target, target_seen = (values, seen) if section is None else (section, section_seen)
        if section is not None and field_name not in RECIPIENT_KEYS:
            raise ConfigError("cannot be set per recipient (allowed: " + ", ".join(
                sorted(v[0] for v in _KEYS.values() if v[1] in RECIPIENT_KEYS)) + ")",
                path, number, canonical)
        if field_name in target_seen:
            raise ConfigError(f"given twice (first on line {target_seen[field_name]})",
                              path, number, canonical)
        target_seen[field_name] = number
        try:
            value = parser(raw.strip())
        except ValueError as exc:
            raise ConfigError(str(exc), path, number, canonical) from None
        if section is not None and value in (HeloPolicy.NO_CHECK, MailFromPolicy.NO_CHECK):
            raise ConfigError("No_Check cannot be set per recipient (use False)",
                              path, number, canonical)
        target[field_name] = value
        if section is not None:
            sections[-1] = dataclasses.replace(sections[-1], changes=tuple(section.items()))
    values["recipient_policies"] = tuple(sections)
    policy_socket = values.get("policy_socket")
    if policy_socket and policy_socket == values.get("socket", DEFAULT_SOCKET):
        raise ConfigError("must differ from Socket (the milter listens there)", path,
                          seen["policy_socket"], "Policy_Socket")
    policy = Policy(**{k: v for k, v in values.items() if k in POLICY_FIELDS})  # type: ignore[arg-type]
    return Settings(policy, **{k: v for k, v in values.items()  # type: ignore[arg-type]
                               if k not in POLICY_FIELDS})


def parse(path: str | Path) -> Settings:
    """Read and parse a configuration file; any failure is a one-line ConfigError."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", name) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8", name, line) from None
    return parse_text(text, name)


DEFAULT_PATH = "/etc/spfmilter/spfmilter.conf"


def source(path: str | None) -> str | None:
    """The file :func:`load` reads for ``path``: itself, else the installed default
    file when it exists; None means the built-in defaults."""
    if path is None and Path(DEFAULT_PATH).exists():
        return DEFAULT_PATH
    return path


def load(path: str | None, socket: str | None = None) -> Settings:
    """Settings from ``path`` (or the installed default file, or built-in defaults),
    with a command-line ``--socket`` applied on top."""
    path = source(path)
    settings = parse(path) if path else Settings()
    if socket:
        try:
            settings = settings.with_overrides(socket=Endpoint.parse(socket))
        except ValueError as exc:
            raise ConfigError(str(exc), "--socket") from None
    return settings


def from_mapping(mapping: dict[str, str], source: str = "<overrides>") -> Settings:
    """Settings from key/value pairs, validated exactly like a file (used by tests, CLI)."""
    text = "\n".join(f"{k} = {v}" for k, v in mapping.items())
    return parse_text(text, source)
