"""Hand-built facts for the doctor's rules: spfmilter's own, as a configuration would give them."""

from spfmilter.doctor.findings import Ours
from spfmilter.endpoint import Endpoint


def ours(socket: str = "unix:/run/spfmilter/spfmilter.sock", lookup: float = 20,
         running: bool | None = True, conf: str = "/etc/spfmilter.conf") -> Ours:
    ep = Endpoint.parse(socket).connectable()
    return Ours(conf, socket, ep, None, None, running, lookup)
