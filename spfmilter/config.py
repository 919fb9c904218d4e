"""Configuration: parse ``Key = value`` files once into a frozen, typed Settings.

The file says two kinds of things: how mail is decided (parsed into the core's
``Policy``, in the core's own words, so the core never reads this module) and
how the service runs (sockets, user, workers, ...: fields of ``Settings`` that
only the daemon and the front ends read).

Key names follow python policyd-spf / pyspf-milter where the concept is the same,
so that their users can point spfmilter at the files they already have.  Every
mistake is reported as one ``ConfigError`` line naming file, line and key; the
daemon prints that line and exits instead of starting with a guess.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spfmilter.core.addresses import IPNetwork, is_domain, recipient_pattern
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
    gethostname,
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


# --- value parsers: each takes the raw text and returns the typed value or raises
#     ValueError with a message meant for the administrator.

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected True or False, got {text!r}")


def _enum(kind: type[enum.Enum]) -> Callable[[str], enum.Enum]:
    by_lower = {m.value.lower(): m for m in kind}

    def parse(text: str) -> enum.Enum:
        try:
            return by_lower[text.strip().lower()]
        except KeyError:
            allowed = " | ".join(m.value for m in kind)
            raise ValueError(f"expected one of {allowed}, got {text!r}") from None
    return parse


def _items(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def _networks(text: str) -> tuple[IPNetwork, ...]:
    nets = []
    for item in _items(text):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def _domains(text: str) -> tuple[str, ...]:
    out = []
    for item in _items(text):
        name = item.rstrip(".").lower()
        if not is_domain(name):
            raise ValueError(f"{item!r} is not a domain name")
        out.append(name)
    return tuple(out)


def _recipients(text: str) -> tuple[str, ...]:
    return tuple(recipient_pattern(item) for item in _items(text))


def _hostname(text: str) -> str:
    name = text.strip().rstrip(".").lower()
    if not is_domain(name):
        raise ValueError(f"{text!r} is not a host name")
    return name


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise ValueError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


MAX_WORKERS = 256


def _workers(text: str) -> int:
    # "auto" is kept as 0 and resolved where the workers start (the daemon),
    # so a config file means the same on every host it is copied to.
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a number of processes or auto, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"expected 1 to {MAX_WORKERS} processes or auto, got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError(f"expected a whole number >= 0, got {text!r}")
    return value


def _byte_count(text: str) -> int:
    value = _nonneg_int(text)
    if not 64 * 1024 <= value <= 1024 ** 3:
        raise ValueError(f"expected bytes between 65536 and 1073741824, got {text!r}")
    return value


def _umask(text: str) -> int:
    try:
        value = int(text.strip(), 8)
    except ValueError:
        raise ValueError(f"expected an octal mask such as 007, got {text!r}") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"expected an octal mask between 000 and 777, got {text!r}")
    return value


def parse_policy_socket(text: str) -> Endpoint | None:
    """Policy_Socket: empty (off), ``unix:/path`` or ``inet:PORT@HOST``, as for Socket."""
    return Endpoint.parse(text) if text.strip() else None


_RESTRICTION = re.compile(r"^[A-Za-z0-9_.-]+$")


def _restriction(text: str) -> str:
    """A Postfix restriction class name (smtpd_restriction_classes), as policyd-spf takes."""
    value = text.strip()
    if value and not _RESTRICTION.match(value):
        raise ValueError(f"expected the name of a Postfix restriction class (one word), got {text!r}")
    return value


def _nameservers(text: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in _items(text):
        host, port = item, 53
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", item)
        if m:
            host, port = m.group(1), int(m.group(2) or 53)
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
            if not p.isdigit():
                raise ValueError(f"bad port in {item!r}")
            port = int(p)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r} is not IP[:port] (IPv6 with a port: [addr]:port)") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad port in {item!r}")
        out.append((host, port))
    return tuple(out)


def _reason(text: str) -> str:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    unknown = fields - REASON_FIELDS
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; known: "
                         + ", ".join("{%s}" % f for f in sorted(REASON_FIELDS)))
    return text


def _authserv_id(text: str) -> str:
    # policyd-spf's placeholders for "this host's name"
    if text.strip().upper() in ("HOSTNAME", "HEADER"):
        return gethostname()
    return _hostname(text)


def _reason_url(text: str) -> str:
    try:
        text.format("mfrom", "user@example.com", "192.0.2.1", "mx.example")
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"bad template ({exc}); use {{0}} identity, {{1}} sender, "
                         "{2} ip, {3} receiver") from None
    return text.strip()


def _host_port(text: str) -> tuple[str, int] | None:
    value = text.strip()
    if value.lower() in ("", "off", "none", "false", "no"):
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s]+):(\d+)", value)
    if not m:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9095) or off, got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, port


_MECHANISM = re.compile(r"^[-+?~]?(all|include:\S+|a(:\S+)?(/\d+)?(//\d+)?|mx(:\S+)?(/\d+)?(//\d+)?|"
                        r"ptr(:\S+)?|ip4:[0-9./]+|ip6:[0-9A-Fa-f:./]+|exists:\S+)$", re.I)


def _mechanisms(text: str) -> str:
    terms = text.split()
    for term in terms:
        if not _MECHANISM.match(term):
            raise ValueError(f"{term!r} is not an SPF mechanism")
    return " ".join(terms)


def _record(text: str) -> str:
    value = text.strip()
    if not value:
        return ""
    if not value.lower().startswith("v=spf1"):
        raise ValueError(f"expected an SPF record starting with v=spf1, got {text!r}")
    _mechanisms(value[6:])
    return value


def _optional_text(text: str) -> str | None:
    return text.strip() or None


def _never_refuse(text: str) -> bool:
    # policyd-spf: TestOnly = 1 is normal operation, 0 means "never reject".
    return not _bool(text)


# key (lower case) -> (canonical key as documented, Policy or Settings field, parser)
_KEYS: dict[str, tuple[str, str, Callable[[str], object]]] = {
    k.lower(): (k, f, p) for k, f, p in [
        ("Socket", "socket", Endpoint.parse),
        ("HELO_reject", "helo_reject", _enum(HeloPolicy)),
        ("Mail_From_reject", "mail_from_reject", _enum(MailFromPolicy)),
        ("PermError_reject", "permerror_reject", _bool),
        ("TempError_Defer", "temperror_defer", _bool),
        ("TestOnly", "never_refuse", _never_refuse),
        ("skip_addresses", "skip_addresses", _networks),
        ("Whitelist", "whitelist", _networks),
        ("Domain_Whitelist", "domain_whitelist", _domains),
        ("HELO_Whitelist", "helo_whitelist", _domains),
        ("Exempt_Recipients", "exempt_recipients", _recipients),
        ("Header_Type", "header_type", _enum(HeaderType)),
        ("Authserv_Id", "authserv_id", _authserv_id),
        ("Hide_Receiver", "hide_receiver", _bool),
        ("Lookup_Time", "lookup_time", _positive_float),
        ("Void_Limit", "void_limit", _nonneg_int),
        ("Reason_Message", "reason_message", _reason),
        ("Nameservers", "nameservers", _nameservers),
        ("UserID", "user_id", _optional_text),
        ("PidFile", "pid_file", _optional_text),
        ("UMask", "umask", _umask),
        ("debugLevel", "debug_level", _nonneg_int),
        ("InternalHosts", "internal_hosts", _networks),
        ("Reject_Not_Pass_Domains", "reject_not_pass_domains", _domains),
        ("SPF_Enhanced_Status_Codes", "enhanced_status_codes", _bool),
        ("Whitelist_Lookup_Time", "whitelist_lookup_time", _positive_float),
        ("Reason_URL", "reason_url", _reason_url),
        ("QueueID", "log_queue_id", _bool),
        ("Local_Rules", "local_rules", _mechanisms),
        ("Best_Guess", "best_guess", _record),
        ("Pass_All_Records", "pass_all_records", _enum(PassAllPolicy)),
        ("Metrics", "metrics", _host_port),
        ("DKIM_Rescue", "dkim_rescue", _bool),
        ("DKIM_Max_Bytes", "dkim_max_bytes", _byte_count),
        ("Trusted_Relays", "trusted_relays", _networks),
        ("Trusted_Relays_Unreadable", "trusted_relays_unreadable", _enum(UnreadableHop)),
        ("Policy_Socket", "policy_socket", parse_policy_socket),
        ("Policy_Idle_Timeout", "policy_idle_timeout", _positive_float),
        ("HELO_pass_restriction", "helo_pass_restriction", _restriction),
        ("Mail_From_pass_restriction", "mail_from_pass_restriction", _restriction),
        ("Workers", "workers", _workers),
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
                pattern = _recipients(m.group(1))[0]
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
