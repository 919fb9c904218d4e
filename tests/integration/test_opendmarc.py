"""Interoperability: OpenDMARC computes DMARC from spfmilter's SPF verdict.

A real Postfix (tests/mta.py's PostfixLab) runs two milters in this order::

    smtpd_milters = spfmilter, OpenDMARC

spfmilter is the real daemon of conftest's ``spfmilter`` fixture (DNS from
``dns_server``, ``Authserv_Id = mx.test``, default ``Header_Type = both``).
OpenDMARC (Debian ``opendmarc`` 1.4.x, in the foreground: ``opendmarc -f -c
CONF``) is configured as tests/opendmarc-README-section.rst tells users to::

    TrustedAuthservIDs          mx.test     # spfmilter's Authserv_Id
    SPFIgnoreResults            false       # use the SPF results in the header
    SPFSelfValidate             false       # never evaluate SPF itself
    RejectFailures              true        # p=reject failures get 550 5.7.1
    IgnoreAuthenticatedClients  true        # spfmilter skips them too
    IgnoreHosts                 FILE        # 127.0.0.1 + spfmilter's skip_addresses
    AuthservID                  dmarc.test  # its own header, told apart from ours

(and, as the README's alternative, ``AuthservID mx.test``: one id for both).

How OpenDMARC gets DNS: it resolves through the C library (resolv.conf), so it
runs in a network namespace of its own (``ip netns add``) with
``/etc/netns/NS/resolv.conf`` naming 127.0.0.1, where a TestDNSServer on
127.0.0.1:53 serves tests/data/zones.yml plus the ``_dmarc`` records below.
Postfix (host namespace) reaches it over a unix socket, which crosses network
namespaces: the socket lives in the Postfix lab's work folder, which the lab
bind-mounts at /srv/lab in Postfix's mount namespace, and Postfix is
configured with symlinks (``milter/milter.sock``, ``dmarc/opendmarc.sock``)
so that a test can switch OpenDMARC configurations, or the milter order,
without a reload.  OpenDMARC logs through syslog(3); it runs in a private
mount namespace with its own /dev whose /dev/log is tests/mta.py's
``syslog-wrap`` listener, so its log lines land in a file (the host's /dev is
not touched).

What OpenDMARC 1.4.2 actually reads (measured here, pinned by the tests):

* A trusted Authentication-Results ``spf=`` result counts only when its
  ``smtp.mailfrom`` is the bare envelope *domain* -- the form spfmilter writes
  (``smtp.mailfrom=allowed.test``, RFC 7208 §9.2); the whole address would be
  skipped.  HELO results (``smtp.helo``) are never used (CVE-2019-20790 fix).
* Without a usable trusted result it takes the FIRST ``Received-SPF`` field of
  the message, whatever its receiver (no trust check), if it says
  ``identity=mailfrom`` and its ``envelope-from`` equals the envelope sender;
  spfmilter's own is at the very top, which is what protects the default
  ``Header_Type = both``.  With ``Header_Type = AR`` alone the
  trusted Authentication-Results gives aligned mail its pass, but a
  client-written ``Received-SPF: pass`` still outweighs our trusted softfail
  (a DMARC bypass) -- ``test_header_type_ar_alone_...``: keep Received-SPF.

What "OpenDMARC used OUR SPF result" rests on:

* the namespace DNS server records every query OpenDMARC makes: in the tests
  it asked for ``_dmarc.<From domain>`` TXT and nothing else -- no TXT, SPF,
  A or MX query for the MAIL FROM or HELO domains, so it evaluated no SPF
  itself; its own Authentication-Results carries no ``spf=`` result;
* a control runs OpenDMARC with ``SPFIgnoreResults true`` + ``SPFSelfValidate
  true`` on the same DNS server: the counter then does see its SPF queries
  and it writes its own ``spf=`` result;
* its verdicts follow spfmilter's result and alignment: pass for an aligned
  pass, fail (550 5.7.1 at end of data under p=reject, ``dmarc=fail`` in the
  header under p=none) for a pass of an unaligned domain or a softfail; and a
  reversed milter order (OpenDMARC first) makes the aligned pass fail, so the
  verdict did come from headers spfmilter added;
* it is not fooled by a client-written ``mx.test`` Authentication-Results
  (removed by spfmilter, which runs first -- a control with a spfmilter of
  another Authserv_Id shows the same header would pass DMARC), by a
  client-written Received-SPF below ours, nor by an aligned HELO pass.

Also shown: with one authserv-id for both, spfmilter removes a sender's forged
``dmarc=`` result too; clients spfmilter skips (SMTP AUTH, ``skip_addresses``)
get no SPF headers, and OpenDMARC refuses their mail unless it skips them too
(``IgnoreAuthenticatedClients``, ``IgnoreHosts``).

Needs root, the Postfix lab (``make mta-deps``) and ``opendmarc``
(``sudo sh scripts/install-opendmarc.sh``).  Missing: skipped, except under CI
(CI=true), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.kit import DATA, ROOT, dkimkeys, dnsserver, mta
from tests.kit.wait import wait_for

pytestmark = [pytest.mark.interop, pytest.mark.mta]

INSTALL = ("sudo sh scripts/install-opendmarc.sh  (= sudo DEBIAN_FRONTEND=noninteractive "
           "apt-get install -y --no-install-recommends opendmarc dbconfig-no-thanks)")
#: the binary (Debian path; override with SPFMILTER_OPENDMARC)
OPENDMARC = os.environ.get("SPFMILTER_OPENDMARC", "/usr/sbin/opendmarc")
PSL = "/usr/share/publicsuffix/public_suffix_list.dat"
ZONES_FILE = DATA / "zones.yml"

OUR_ID = "mx.test"          # spfmilter's Authserv_Id (conftest's spfmilter fixture)
DMARC_ID = "dmarc.test"     # OpenDMARC's own AuthservID

AUTH_V4 = "192.0.2.10"      # authorized by allowed.test and helo.test
FWD_V4 = "198.51.100.7"     # authorized by forwarder.test only
SKIPPED_NET, SKIPPED_V4 = "203.0.113.0/24", "203.0.113.5"  # an internal relay

#: DMARC records OpenDMARC finds in its namespace (besides tests/data/zones.yml)
DMARC_ZONES = {
    "_dmarc.allowed.test": [{"TXT": "v=DMARC1; p=reject"}],
    "_dmarc.monitor.test": [{"TXT": "v=DMARC1; p=none"}],
    "_dmarc.soft.test": [{"TXT": "v=DMARC1; p=reject"}],
    "_dmarc.passall.test": [{"TXT": "v=DMARC1; p=reject"}],
}

#: The settings under test (tests/opendmarc-README-section.rst).
TRUSTING = {
    "TrustedAuthservIDs": OUR_ID,
    "SPFIgnoreResults": "false",
    "SPFSelfValidate": "false",
    "RejectFailures": "true",
    # spfmilter writes no SPF result for SMTP AUTH clients nor for the
    # addresses it skips: OpenDMARC skips them too (a list: written to a file)
    "IgnoreAuthenticatedClients": "true",
    "IgnoreHosts": ("127.0.0.1", SKIPPED_NET),
}
#: The alternative the README also gives: OpenDMARC under spfmilter's own
#: authserv-id (trusted implicitly), so spfmilter also removes forged copies of
#: OpenDMARC's results.
SAME_ID = {**TRUSTING, "AuthservID": OUR_ID}
del SAME_ID["TrustedAuthservIDs"]
#: Contrast: only the four settings the trust itself needs (no Ignore*).
MINIMAL = {k: TRUSTING[k] for k in
           ("TrustedAuthservIDs", "SPFIgnoreResults", "SPFSelfValidate", "RejectFailures")}
#: Control: OpenDMARC ignores our headers and does SPF itself.
SELF_VALIDATING = {
    "TrustedAuthservIDs": OUR_ID,
    "SPFIgnoreResults": "true",
    "SPFSelfValidate": "true",
    "RejectFailures": "true",
}


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_opendmarc() -> None:
    mta.require_or_skip("postfix")
    missing = []
    if not os.access(OPENDMARC, os.X_OK):
        missing.append(OPENDMARC)
    for tool in ("ip", "unshare", "mount"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            missing.append(tool)
    if missing:
        msg = f"OpenDMARC interop: missing {', '.join(missing)}. Install with: {INSTALL}"
        if _under_ci():
            pytest.fail(msg)
        pytest.skip(msg)


# --------------------------------------------------------------------------
# the network namespace OpenDMARC resolves in


class DnsNamespace:
    """A :class:`mta.Netns` with ``/etc/netns/NAME/resolv.conf`` -> 127.0.0.1
    and a TestDNSServer on 127.0.0.1:53 inside it.  ``stop`` removes all three
    (also what a failed ``start`` left)."""

    def __init__(self, zones: dict) -> None:
        self.netns = mta.Netns(addresses=(), name=f"spfmlab-{os.getpid()}-dmarc{uuid.uuid4().hex[:6]}")
        self.etc_dir = Path("/etc/netns") / self.netns.name
        self.dns = dnsserver.TestDNSServer(zones, host="127.0.0.1", port=53)
        self._created_etc_root = False

    @staticmethod
    def remove_stale() -> None:
        """/etc/netns entries of lab namespaces whose test process is gone."""
        root = Path("/etc/netns")
        if not root.is_dir():
            return
        for d in root.iterdir():
            m = re.match(r"spfmlab-(\d+)-", d.name)
            if m and not Path(f"/proc/{m.group(1)}").exists():
                shutil.rmtree(d, ignore_errors=True)

    def start(self) -> DnsNamespace:
        try:
            self.remove_stale()
            # before any `ip netns exec`: it bind-mounts these files over /etc
            self._created_etc_root = not self.etc_dir.parent.exists()
            self.etc_dir.mkdir(mode=0o755, parents=True)
            (self.etc_dir / "resolv.conf").write_text(
                "# spfmilter OpenDMARC test (tests/test_opendmarc.py)\n"
                "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
            self.netns.start()
            # sockets bound by a thread that joined the namespace stay in it
            self.netns.run(self.dns.start)
        except BaseException:
            self.stop()
            raise
        return self

    def exec_prefix(self) -> list[str]:
        return self.netns.exec_prefix()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.dns.stop()
        self.netns.stop()
        shutil.rmtree(self.etc_dir, ignore_errors=True)
        if self._created_etc_root:
            with contextlib.suppress(OSError):  # only if nobody else put anything there
                self.etc_dir.parent.rmdir()

    # -- what OpenDMARC asked
    def queries(self) -> list[tuple[str, str]]:
        return [(name, qtype) for name, qtype, _ in self.dns.queries]

    def non_dmarc_queries(self) -> list[tuple[str, str]]:
        """Every query that is not a DMARC policy lookup: an SPF evaluation
        (TXT/SPF/A/AAAA/MX/PTR of the MAIL FROM or HELO domain) would be here."""
        return [q for q in self.queries() if not q[0].startswith("_dmarc.")]


# --------------------------------------------------------------------------
# OpenDMARC in the foreground


# Inside `ip netns exec NS unshare -m`: a private /dev (tmpfs) with the usual
# device nodes bound from the host's, so that the syslog-wrap listener can own
# /dev/log without touching the host's /dev.
_NS_PRIVATE_DEV = r"""
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 dmarclab-ns "$NS_SCRATCH"
mkdir "$NS_SCRATCH/hostdev"
mount --rbind /dev "$NS_SCRATCH/hostdev"
mount -t tmpfs -o mode=0755 dmarclab-dev /dev
for n in null zero full random urandom tty; do
  [ -e "$NS_SCRATCH/hostdev/$n" ] || continue
  touch "/dev/$n"; mount --bind "$NS_SCRATCH/hostdev/$n" "/dev/$n"
done
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mkdir /dev/shm /dev/pts
umount -l "$NS_SCRATCH/hostdev"
exec "$@"
"""


class OpenDMARC:
    """``opendmarc -f -c CONF`` in ``dns_ns``'s network namespace, its socket,
    pid file, configuration and log in ``folder`` (below the Postfix lab's work
    folder, so that smtpd reaches the socket at ``lab.ns(socket_path)``)."""

    def __init__(self, folder: Path, dns_ns: DnsNamespace, settings: dict[str, str]) -> None:
        self.folder = Path(folder)
        self.dns_ns = dns_ns
        self.socket_path = self.folder / "opendmarc.sock"
        self.pid_file = self.folder / "opendmarc.pid"
        self.conf_file = self.folder / "opendmarc.conf"
        self.log_file = self.folder / "opendmarc.log"
        self.out_file = self.folder / "opendmarc.out"
        self.scratch = self.folder / "ns-scratch"
        self.settings = {
            "AuthservID": DMARC_ID,
            "Socket": f"local:{self.socket_path}",
            "PidFile": str(self.pid_file),
            # the socket must be connectable by user postfix
            "UMask": "0000",
            "Syslog": "true",
            "SyslogFacility": "mail",
            "PublicSuffixList": PSL,
            "FailureReports": "false",
            "RequiredHeaders": "false",
            "IgnoreAuthenticatedClients": "false",
            **settings,
        }
        self.proc: subprocess.Popen | None = None
        self._out = None

    def start(self, timeout: float = 20) -> OpenDMARC:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)  # searchable by user postfix
        self.scratch.mkdir(exist_ok=True)
        settings = dict(self.settings)
        if isinstance(settings.get("IgnoreHosts"), (list, tuple)):
            hosts = self.folder / "ignore-hosts"
            hosts.write_text("".join(f"{h}\n" for h in settings["IgnoreHosts"]))
            settings["IgnoreHosts"] = str(hosts)
        self.conf_file.write_text(
            "# tests/test_opendmarc.py\n" + "".join(f"{k} {v}\n" for k, v in settings.items()))
        self.log_file.touch()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        check = subprocess.run([OPENDMARC, "-n", "-c", str(self.conf_file)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise mta.LabError(f"opendmarc -n rejected {self.conf_file}: {check.stdout}{check.stderr}")
        cmd = [*self.dns_ns.exec_prefix(),
               "unshare", "-m", "--propagation", "private", "--",
               "sh", "-c", _NS_PRIVATE_DEV, "dmarc-ns",
               *mta.syslog_wrap(str(self.log_file)),
               OPENDMARC, "-f", "-c", str(self.conf_file)]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "NS_SCRATCH": str(self.scratch),
               "PYTHONPATH": str(ROOT)}
        self._out = open(self.out_file, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, timeout, "OpenDMARC to listen", interval=0.02,
                       on_timeout=self.diag)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise mta.LabError(f"OpenDMARC exited with {self.proc.returncode}\n{self.diag()}")
        try:
            is_sock = stat.S_ISSOCK(self.socket_path.stat().st_mode)
        except FileNotFoundError:
            return False
        return is_sock and re.search(r"OpenDMARC Filter v\S+ starting", self.log_text()) is not None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diag(self) -> str:
        out = ""
        with contextlib.suppress(OSError):
            out = self.out_file.read_text(errors="replace")
        return f"opendmarc log:\n{self.log_text()[-4000:]}\nstdout/stderr:\n{out[-4000:]}"

    def wait_for_log(self, regex: str, timeout: float = 10) -> re.Match:
        rx = re.compile(regex)
        return wait_for(lambda: rx.search(self.log_text()), timeout,
                              f"OpenDMARC log line /{regex}/", on_timeout=self.diag)

    def terminate(self) -> None:
        """Ask it to stop (libmilter takes seconds): :meth:`stop` waits."""
        if self.proc is not None and self.proc.poll() is None:
            # syslog-wrap forwards SIGTERM to opendmarc and waits for it
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(15)
            # anything left of the session (opendmarc itself): kill it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None
        if self._out:
            self._out.close()
            self._out = None


# --------------------------------------------------------------------------
# the lab: Postfix -> spfmilter -> OpenDMARC -> capture


@dataclass
class DmarcLab:
    postfix: mta.PostfixLab
    capture: mta.CaptureSMTP
    dns_ns: DnsNamespace
    dmarc_link: Path        # Postfix's second milter socket (a symlink we point)
    opendmarc: OpenDMARC | None = None
    milter: object = None   # conftest's SpfmilterProcess in use
    _marks: dict = field(default_factory=dict)
    instances: dict = field(default_factory=dict)

    def instance(self, name: str, settings: dict[str, str]) -> OpenDMARC:
        """The OpenDMARC started with ``settings`` (started on first use)."""
        inst = self.instances.get(name)
        if inst is None:
            inst = OpenDMARC(self.postfix.workdir / f"dmarc-{name}", self.dns_ns, settings)
            self.instances[name] = inst  # registered before start: stopped even if start fails
            inst.start()
        return inst

    def stop_instances(self) -> None:
        for inst in self.instances.values():  # all at once: each takes seconds
            inst.terminate()
        for inst in self.instances.values():
            inst.stop()

    @staticmethod
    def _point(link: Path, target: str) -> None:
        tmp = link.with_name(f".link-{uuid.uuid4().hex[:8]}")
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def use(self, milter, instance: OpenDMARC, *, spfmilter_first: bool = True) -> None:
        """Postfix's milters: ``milter`` (spfmilter) and ``instance`` (OpenDMARC),
        in that order unless ``spfmilter_first`` is false.  Symlink swaps:
        smtpd connects per session, so no reload is needed."""
        self.postfix.set_milter(milter.socket_spec)  # binds its folder at /srv/milter
        ours = f"/srv/milter/{Path(milter.socket_path).name}"
        theirs = self.postfix.ns(instance.socket_path)
        first, second = (ours, theirs) if spfmilter_first else (theirs, ours)
        self._point(self.postfix.milter_link, first)
        self._point(self.dmarc_link, second)
        self.milter, self.opendmarc = milter, instance
        # log lines of earlier tests do not count
        self._marks = {"milter": len(milter.log_text()), "opendmarc": len(instance.log_text())}

    def _wait_log(self, which: str, regex: str, timeout: float = 10) -> re.Match:
        proc = self.milter if which == "milter" else self.opendmarc
        rx, start = re.compile(regex), self._marks[which]
        return wait_for(lambda: rx.search(proc.log_text(), start), timeout,
                              f"{which} log line /{regex}/",
                              on_timeout=lambda: proc.log_text()[start:][-4000:])

    def milter_log(self, regex: str) -> re.Match:
        """Wait for a line of spfmilter's log written since :meth:`use`."""
        return self._wait_log("milter", regex)

    def dmarc_log(self, regex: str) -> re.Match:
        """Wait for a line of OpenDMARC's log written since :meth:`use`."""
        return self._wait_log("opendmarc", regex)

    def dmarc_log_since_use(self) -> str:
        return self.opendmarc.log_text()[self._marks["opendmarc"]:]


@pytest.fixture(scope="module")
def dmarc_lab(tmp_path_factory):
    _require_opendmarc()
    zones = yaml.safe_load(ZONES_FILE.read_text())
    assert not set(DMARC_ZONES) & set(zones)
    zones.update(DMARC_ZONES)
    work = tmp_path_factory.mktemp("opendmarc-lab")
    # Until a test points it at a running spfmilter, the first milter is a
    # socket nobody listens on (same file name as the spfmilter fixture's).
    placeholder = tmp_path_factory.mktemp("no-milter") / "spfmilter.sock"
    with contextlib.ExitStack() as stack:
        dns_ns = DnsNamespace(zones)
        stack.callback(dns_ns.stop)            # last: namespace, /etc/netns entry
        dns_ns.start()
        cap = stack.enter_context(mta.CaptureSMTP())
        postfix = mta.PostfixLab(work, f"unix:{placeholder}", cap.port)
        dmarc_link = work / "dmarc" / "opendmarc.sock"
        dmarc_link.parent.mkdir(parents=True)
        # two milters; which socket is first is decided by DmarcLab.use
        postfix.extra_settings["smtpd_milters"] = (
            f"unix:{postfix.ns(postfix.milter_link)}, unix:{postfix.ns(dmarc_link)}")
        lab = DmarcLab(postfix, cap, dns_ns, dmarc_link)
        stack.callback(lab.stop_instances)     # OpenDMARC processes, before the namespace
        lab._point(dmarc_link, postfix.ns(lab.instance("trusting", TRUSTING).socket_path))
        stack.enter_context(postfix)           # first to stop
        yield lab


@pytest.fixture
def chain(dmarc_lab, spfmilter):
    """``chain(opendmarc="trusting", spfmilter_first=True, **spfmilter_settings)``:
    a spfmilter with these settings (Authserv_Id mx.test unless overridden)
    and the named OpenDMARC configuration as Postfix's two milters, in that
    order unless ``spfmilter_first`` is false; capture emptied, the namespace
    DNS server's query log cleared.  May be called again within a test."""
    def setup(opendmarc: str = "trusting", spfmilter_first: bool = True, **settings) -> DmarcLab:
        dmarc_lab.postfix.wait_idle()
        dmarc_lab.capture.clear()
        milter = spfmilter(**settings)
        inst = dmarc_lab.instance(opendmarc, {"trusting": TRUSTING, "same-id": SAME_ID,
                                              "minimal": MINIMAL,
                                              "self-validating": SELF_VALIDATING}[opendmarc])
        dmarc_lab.use(milter, inst, spfmilter_first=spfmilter_first)
        dmarc_lab.dns_ns.dns.clear_queries()
        return dmarc_lab
    return setup


# --------------------------------------------------------------------------
# helpers


def message(header_from: str, subject: str, extra_headers=()) -> bytes:
    return mta.make_message(header_from, "rcpt@example.com", subject=subject,
                            extra_headers=extra_headers)


def send(lab: DmarcLab, client: str, helo: str, mail_from: str, msg: bytes,
         login: str | None = None) -> mta.Transcript:
    return lab.postfix.send(client, helo, mail_from, ["rcpt@example.com"], msg, login=login)


def ar_of(m: mta.CapturedMessage, authserv_id: str) -> list[str]:
    return [v for v in m.headers("Authentication-Results")
            if re.match(rf"(?i){re.escape(authserv_id)}\s*;", v)]


def delivered(lab: DmarcLab, tr: mta.Transcript) -> mta.CapturedMessage:
    assert tr.final and tr.final.code == 250, f"{tr}\n{lab.opendmarc.diag()}"
    [m] = lab.capture.wait_for(1)
    return m


def dmarc_verdict(lab: DmarcLab, m: mta.CapturedMessage) -> str:
    """OpenDMARC's own Authentication-Results (exactly one dmarc= result)."""
    found = [v for v in ar_of(m, DMARC_ID) if "dmarc=" in v]
    assert len(found) == 1, m.text
    return found[0]


def assert_rejected_by_dmarc(lab: DmarcLab, tr: mta.Transcript, domain: str) -> None:
    assert tr.rcpt("rcpt@example.com").code == 250, str(tr)  # spfmilter let it through
    final = tr.final
    assert final is not None and final.code == 550 and final.enhanced == "5.7.1", \
        f"{tr}\n{lab.opendmarc.diag()}"
    assert f"rejected by DMARC policy for {domain}" in final.text, str(tr)
    assert lab.postfix.queue_files() == []
    assert lab.capture.count() == 0
    lab.dmarc_log(rf": {re.escape(domain)} fail\b")


def assert_no_spf_of_its_own(lab: DmarcLab, from_domain: str) -> None:
    """OpenDMARC made exactly one kind of DNS query: the From: domain's DMARC
    record.  No SPF evaluation happened on its side."""
    queries = lab.dns_ns.queries()
    assert (f"_dmarc.{from_domain}", "TXT") in queries, queries
    assert lab.dns_ns.non_dmarc_queries() == [], queries
    assert "SPF(" not in lab.dmarc_log_since_use()  # it logs "SPF(mailfrom): ..." when it checks


# --------------------------------------------------------------------------
# the verdicts


def test_aligned_spf_pass_gives_dmarc_pass(chain):
    lab = chain()
    tr = send(lab, AUTH_V4, "helo.test", "user@allowed.test",
              message("user@allowed.test", "aligned pass"))
    m = delivered(lab, tr)
    # the input: spfmilter's verdict, in both its headers
    [ours] = ar_of(m, OUR_ID)
    assert "spf=pass smtp.mailfrom=allowed.test" in ours
    assert m.headers("Received-SPF")[0].startswith("pass (mx.test: ")
    assert "identity=mailfrom" in m.headers("Received-SPF")[0]
    # the output: OpenDMARC's verdict, in its own header, with no SPF result of its own
    assert ar_of(m, DMARC_ID) == [f"{DMARC_ID}; dmarc=pass (p=reject dis=none) header.from=allowed.test"]
    lab.dmarc_log(r": allowed\.test pass\b")
    assert_no_spf_of_its_own(lab, "allowed.test")


def test_forged_from_with_unaligned_spf_pass_rejected_under_p_reject(chain):
    lab = chain()
    # SPF passes, but for forwarder.test; the From: domain publishes p=reject
    tr = send(lab, FWD_V4, "forwarder.test", "user@forwarder.test",
              message("ceo@allowed.test", "forged from"))
    assert_rejected_by_dmarc(lab, tr, "allowed.test")
    lab.milter_log(r"action=accept\b.* result=pass\b.*envelope_from=user@forwarder\.test")
    assert_no_spf_of_its_own(lab, "allowed.test")


def test_forged_from_under_p_none_delivered_with_dmarc_fail(chain):
    lab = chain()
    # the same forgery for a From: domain with p=none: the fail is in the header
    tr = send(lab, FWD_V4, "forwarder.test", "user@forwarder.test",
              message("ceo@monitor.test", "forged from, p=none"))
    m = delivered(lab, tr)
    [ours] = ar_of(m, OUR_ID)
    assert "spf=pass smtp.mailfrom=forwarder.test" in ours
    assert dmarc_verdict(lab, m) == f"{DMARC_ID}; dmarc=fail (p=none dis=none) header.from=monitor.test"
    lab.dmarc_log(r": monitor\.test fail\b")
    assert_no_spf_of_its_own(lab, "monitor.test")


def test_aligned_softfail_rejected_under_p_reject(chain):
    lab = chain()
    # aligned, but spfmilter's verdict is softfail (accepted by spfmilter): not a pass
    tr = send(lab, FWD_V4, "unknown.test", "user@soft.test", message("user@soft.test", "softfail"))
    assert_rejected_by_dmarc(lab, tr, "soft.test")
    lab.milter_log(r"action=accept\b.* result=softfail\b.*envelope_from=user@soft\.test")
    assert_no_spf_of_its_own(lab, "soft.test")


def test_aligned_helo_pass_is_not_taken_for_mail_from(chain, dns_server):
    # CVE-2019-20790: a HELO pass for a name in the From: domain must not make
    # DMARC pass.  spfmilter reports it as identity=helo / smtp.helo only.
    dns_server.update({"mx.allowed.test": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}]})
    lab = chain()
    tr = send(lab, FWD_V4, "mx.allowed.test", "user@forwarder.test",
              message("ceo@allowed.test", "aligned helo"))
    assert_rejected_by_dmarc(lab, tr, "allowed.test")
    lab.milter_log(r"action=accept\b.* result=pass\b.*helo_result=pass\b"
                            r".*helo=mx\.allowed\.test\b")
    assert_no_spf_of_its_own(lab, "allowed.test")


def test_record_authorizing_every_address_gives_no_dmarc_pass(chain, dns_server):
    # BreakSPF: the forger's own domain publishes "v=spf1 +all", so any client passes SPF
    # for it, aligned with a From: in that domain.  spfmilter reports neutral
    # (Pass_All_Records = neutral, the default): DMARC gets no SPF pass and rejects.
    dns_server.update({"passall.test": [{"TXT": "v=spf1 +all"}]})
    lab = chain()
    tr = send(lab, FWD_V4, "unknown.test", "ceo@passall.test",
              message("ceo@passall.test", "aligned via +all"))
    assert_rejected_by_dmarc(lab, tr, "passall.test")
    lab.milter_log(r"action=accept\b.* result=neutral\b.* authorizes_all=\+all\b"
                   r".*envelope_from=ceo@passall\.test")
    assert_no_spf_of_its_own(lab, "passall.test")
    # the control: with Pass_All_Records = pass the same message passes DMARC
    lab = chain(Pass_All_Records="pass")
    tr = send(lab, FWD_V4, "unknown.test", "ceo@passall.test",
              message("ceo@passall.test", "aligned via +all, reported as pass"))
    m = delivered(lab, tr)
    assert dmarc_verdict(lab, m) == \
        f"{DMARC_ID}; dmarc=pass (p=reject dis=none) header.from=passall.test"


# --------------------------------------------------------------------------
# forged headers and milter order


def test_client_forged_mx_test_header_removed_before_opendmarc(chain):
    # The client claims our verdict, in the form OpenDMARC 1.4 accepts (bare
    # envelope domain), for an aligned message whose real result is softfail.
    forged = [("Authentication-Results", f"{OUR_ID}; spf=pass smtp.mailfrom=soft.test")]
    msg = message("user@soft.test", "forged mx.test header", extra_headers=forged)
    # spfmilter (Authserv_Id mx.test, first) removes it: OpenDMARC rejects
    lab = chain()
    tr = send(lab, FWD_V4, "unknown.test", "user@soft.test", msg)
    assert_rejected_by_dmarc(lab, tr, "soft.test")
    lab.milter_log(r"action=removed-forged-header header=Authentication-Results")
    assert_no_spf_of_its_own(lab, "soft.test")
    # control: a spfmilter with another Authserv_Id leaves the header alone,
    # and the same message passes DMARC -- the removal is what protects it
    lab = chain(Authserv_Id="other.test")
    tr = send(lab, FWD_V4, "unknown.test", "user@soft.test", msg)
    m = delivered(lab, tr)
    assert ar_of(m, OUR_ID) == [forged[0][1]]
    assert "dmarc=pass" in dmarc_verdict(lab, m)
    assert_no_spf_of_its_own(lab, "soft.test")


def test_client_written_received_spf_below_ours_is_not_used(chain):
    # OpenDMARC 1.4 trusts the FIRST Received-SPF of the message, whoever wrote
    # it.  spfmilter's own (softfail) is inserted above the client's forged pass.
    forged = [("Received-SPF", 'pass (attacker) client-ip=198.51.100.7; '
                               'envelope-from="user@soft.test"; identity=mailfrom')]
    lab = chain()
    tr = send(lab, FWD_V4, "unknown.test", "user@soft.test",
              message("user@soft.test", "forged received-spf", extra_headers=forged))
    assert_rejected_by_dmarc(lab, tr, "soft.test")
    assert_no_spf_of_its_own(lab, "soft.test")


def test_opendmarc_before_spfmilter_does_not_see_our_verdict(chain):
    # Milter order matters: with OpenDMARC first, our headers are added after
    # it has looked, so the aligned pass of test_aligned_spf_pass_gives_dmarc_pass
    # has no SPF result for it (and it does no SPF of its own): DMARC fails.
    lab = chain(spfmilter_first=False)
    tr = send(lab, AUTH_V4, "helo.test", "user@allowed.test",
              message("user@allowed.test", "wrong milter order"))
    assert_rejected_by_dmarc(lab, tr, "allowed.test")
    lab.milter_log(r"action=accept\b.* result=pass\b.*envelope_from=user@allowed\.test")
    assert_no_spf_of_its_own(lab, "allowed.test")


def test_header_type_ar_alone_aligned_pass_but_forged_received_spf_wins(chain):
    # Characterises OpenDMARC 1.4.2 with Header_Type = AR (no Received-SPF from
    # spfmilter): it takes the trusted "mx.test; spf=pass smtp.mailfrom=<domain>" ...
    lab = chain(Header_Type="AR")
    tr = send(lab, AUTH_V4, "helo.test", "user@allowed.test",
              message("user@allowed.test", "AR only, aligned pass"))
    m = delivered(lab, tr)
    assert "dmarc=pass" in dmarc_verdict(lab, m)
    assert not m.headers("Received-SPF")
    # ... but a client-written Received-SPF pass still beats our trusted softfail:
    # the reason the README says to keep Header_Type = both (our Received-SPF first).
    lab.capture.clear()
    forged = [("Received-SPF", 'pass (attacker) client-ip=198.51.100.7; '
                               'envelope-from="user@soft.test"; identity=mailfrom')]
    tr = send(lab, FWD_V4, "unknown.test", "user@soft.test",
              message("user@soft.test", "AR only, forged received-spf", extra_headers=forged))
    m = delivered(lab, tr)
    assert "spf=softfail smtp.mailfrom=soft.test" in ar_of(m, OUR_ID)[0]
    assert "dmarc=pass" in dmarc_verdict(lab, m)
    assert m.headers("Received-SPF") == [forged[0][1]]


def test_same_authserv_id_for_both_removes_forged_dmarc_results(chain):
    # OpenDMARC with AuthservID = spfmilter's Authserv_Id: a sender's forged
    # "mx.test; dmarc=pass" is one of "our" headers for spfmilter, which removes
    # it; OpenDMARC's real verdict (fail, p=none) is the only dmarc= result left.
    forged = [("Authentication-Results",
               f"{OUR_ID}; dmarc=pass (p=none dis=none) header.from=monitor.test")]
    lab = chain(opendmarc="same-id")
    tr = send(lab, FWD_V4, "forwarder.test", "user@forwarder.test",
              message("ceo@monitor.test", "forged dmarc result", extra_headers=forged))
    m = delivered(lab, tr)
    assert [v for v in ar_of(m, OUR_ID) if "dmarc=" in v] == [
        f"{OUR_ID}; dmarc=fail (p=none dis=none) header.from=monitor.test"]
    assert "spf=pass smtp.mailfrom=forwarder.test" in " ".join(ar_of(m, OUR_ID))
    lab.milter_log(r"action=removed-forged-header header=Authentication-Results")
    assert_no_spf_of_its_own(lab, "monitor.test")
    # and the aligned pass still passes under the shared id
    lab.capture.clear()
    tr = send(lab, AUTH_V4, "helo.test", "user@allowed.test",
              message("user@allowed.test", "aligned pass, shared id"))
    m = delivered(lab, tr)
    assert f"{OUR_ID}; dmarc=pass (p=reject dis=none) header.from=allowed.test" in ar_of(m, OUR_ID)


def test_authenticated_clients_skipped_by_both(chain):
    # spfmilter writes no SPF result for an SMTP AUTH client (XCLIENT LOGIN=),
    # so OpenDMARC must skip those sessions too (IgnoreAuthenticatedClients).
    msg = message("user@allowed.test", "authenticated")
    lab = chain()
    tr = send(lab, FWD_V4, "badhelo.test", "user@allowed.test", msg, login="alice")
    m = delivered(lab, tr)
    assert m.headers("Authentication-Results") == [] and m.headers("Received-SPF") == []
    lab.milter_log(r'action=accept reason="skipped \(authenticated\)"')
    assert lab.dns_ns.queries() == []
    # contrast: without IgnoreAuthenticatedClients the user's own mail is refused
    lab = chain(opendmarc="minimal")
    tr = send(lab, FWD_V4, "badhelo.test", "user@allowed.test", msg, login="alice")
    assert_rejected_by_dmarc(lab, tr, "allowed.test")
    assert_no_spf_of_its_own(lab, "allowed.test")


def test_hosts_spfmilter_skips_are_skipped_by_opendmarc(chain):
    # An internal relay in spfmilter's skip_addresses gets no SPF headers, so
    # it must be in OpenDMARC's IgnoreHosts as well.
    msg = message("user@allowed.test", "internal relay")
    lab = chain(skip_addresses=SKIPPED_NET)
    tr = send(lab, SKIPPED_V4, "relay.internal.test", "user@allowed.test", msg)
    m = delivered(lab, tr)
    assert m.headers("Authentication-Results") == [] and m.headers("Received-SPF") == []
    lab.milter_log(r'action=accept reason="skipped \(skip_addresses\)"')
    assert lab.dns_ns.queries() == []
    # contrast: without IgnoreHosts the relay's mail is refused
    lab = chain(opendmarc="minimal", skip_addresses=SKIPPED_NET)
    tr = send(lab, SKIPPED_V4, "relay.internal.test", "user@allowed.test", msg)
    assert_rejected_by_dmarc(lab, tr, "allowed.test")
    assert_no_spf_of_its_own(lab, "allowed.test")


# --------------------------------------------------------------------------
# the control for the DNS counter


def test_control_self_validating_opendmarc_is_seen_by_the_dns_counter(chain):
    # The proof above is "no SPF query reached OpenDMARC's DNS server".  This
    # control shows the counter would see them: OpenDMARC told to ignore
    # headers and check SPF itself queries allowed.test and says so.
    lab = chain(opendmarc="self-validating")
    tr = send(lab, AUTH_V4, "helo.test", "user@allowed.test",
              message("user@allowed.test", "control"))
    m = delivered(lab, tr)
    assert f"{DMARC_ID}; spf=pass smtp.mailfrom=allowed.test" in ar_of(m, DMARC_ID)
    assert "dmarc=pass" in dmarc_verdict(lab, m)
    own = lab.dns_ns.non_dmarc_queries()
    assert ("allowed.test", "TXT") in own, lab.dns_ns.queries()
    lab.dmarc_log(r"SPF\(mailfrom\): allowed\.test pass")


def test_dkim_rescued_forward_gives_dmarc_pass(chain, dns_server):
    """A forward that keeps allowed.test's envelope fails SPF; spfmilter's DKIM_Rescue
    accepts it on allowed.test's signature, and OpenDMARC, trusting our header,
    finds the aligned DKIM pass: dmarc=pass under p=reject."""
    dns_server.update({"sel1._domainkey.allowed.test": [{"TXT": dkimkeys.key_record()}]})
    lab = chain(DKIM_Rescue="True")
    msg = dkimkeys.sign(message("user@allowed.test", "forwarded, signed"), "allowed.test")
    tr = send(lab, FWD_V4, "forwarder.test", "user@allowed.test", msg)
    m = delivered(lab, tr)
    [ours] = ar_of(m, OUR_ID)
    assert "dkim=pass header.d=allowed.test header.s=sel1" in ours
    assert "spf=fail smtp.mailfrom=allowed.test" in ours
    assert dmarc_verdict(lab, m) == \
        f"{DMARC_ID}; dmarc=pass (p=reject dis=none) header.from=allowed.test"
