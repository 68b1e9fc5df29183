"""The bot verdict of an open or a click: was it a person, or a machine fetching on its own?
Pure: the request, the token's sending time, the clock and the message's recent clicks come in
as values; docs/tracking-endpoint.md explains each rule, why it is there and what it gets wrong.

A verdict is `(machine, reason)`: `(True, "head_request")`, `(False, None)`. The first rule that
matches decides, in the order of RULES: what the request itself proves (the honeypot link, a
HEAD), then who sent it (user agent, then network), then when (a click right after sending, a
burst of clicks on one message). An admin's extra rules (`parse_rules`, `[tracking]
machine_rules_file`) come before the built-in ones; `off` names reasons not to report.
"""
from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field

OPENS, CLICKS, BOTH = "opens", "clicks", "both"
SCOPES = (OPENS, CLICKS, BOTH)
HONEYPOT_LINK = -1  # the hidden link the rewriter adds: nobody sees it, so nobody clicks it


@dataclass(frozen=True)
class Rule:
    """A user agent pattern (`agent`, a regex searched case-insensitively) or networks
    (`network`, CIDRs) that mark a request of `scope` as a machine's, with `reason`."""

    kind: str  # "agent" or "network"
    reason: str
    scope: str
    pattern: re.Pattern | None = None
    # (IP version, prefix length) -> the networks' addresses as ints: a lookup costs one set
    # probe per prefix length, however many networks (Apple's relay list has ~10^5)
    networks: dict = field(default_factory=dict)

    def applies(self, hit_kind: str) -> bool:
        return self.scope == BOTH or self.scope == hit_kind

    def contains(self, address) -> bool:
        value, bits = int(address), address.max_prefixlen
        return any(version == address.version and value >> (bits - length) << (bits - length) in nets
                   for (version, length), nets in self.networks.items())


def agent(reason: str, scope: str, regex: str) -> Rule:
    return Rule("agent", reason, scope, pattern=re.compile(regex, re.IGNORECASE))


def network(reason: str, scope: str, *cidrs: str) -> Rule:
    index: dict[tuple[int, int], set[int]] = {}
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        index.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
    return Rule("network", reason, scope, networks={k: frozenset(v) for k, v in index.items()})


# The built-in rules. Sources and false positives: docs/tracking-endpoint.md.
BUILTIN: tuple[Rule, ...] = (
    # Apple Mail Privacy Protection fetches every remote image when the message arrives, through
    # Apple's proxies, which send a bare "Mozilla/5.0" from Apple's 17.0.0.0/8.
    agent("apple_mail_privacy_protection", OPENS, r"^Mozilla/5\.0$"),
    # Gmail fetches images through its caching proxy (ggpht.com): client and place are Google's.
    agent("gmail_image_proxy", OPENS, r"GoogleImageProxy|ggpht\.com"),
    # Yahoo's and other webmail image proxies.
    agent("webmail_image_proxy", OPENS, r"YahooMailProxy|Yahoo! Slurp"),
    # Link scanners of security gateways: they fetch every link of a message before (or
    # instead of) the reader.
    agent("microsoft_link_scanner", BOTH,
          r"BingPreview|Microsoft Office Existence Discovery|Microsoft-WebDAV|ms-office|"
          r"Office ?365 ?ATP|SafeLinks"),
    agent("security_gateway_scanner", BOTH,
          r"Proofpoint|Mimecast|Barracuda|MessageLabs|Symantec|Forcepoint|TrendMicro|Sophos|"
          r"FireEye|IronPort|Cisco Secure|Zscaler|Cloudmark|Vade ?Secure|SpamTitan|Hornet ?Security"),
    agent("automated_client", BOTH,
          r"^(?:curl|Wget|python-requests|python-urllib|Python/|aiohttp|Go-http-client|Java/|"
          r"okhttp|Apache-HttpClient|libwww-perl|axios|node-fetch|undici)|HeadlessChrome|PhantomJS"),
    agent("crawler", BOTH, r"bot/|\bbot\b|crawler|spider|scanner|facebookexternalhit"),
    network("apple_mail_privacy_protection", OPENS, "17.0.0.0/8"),
)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """An admin's rules file: one rule a line, `KIND REASON SCOPE VALUE`, blank lines and `#`
    comments skipped:

        agent   security_gateway_scanner  both   ^ExampleGuard/
        network icloud_private_relay      opens  172.224.226.0/27 2a02:26f7:b3c0:4000::/64

    KIND is `agent` (VALUE: the rest of the line, a regex searched case-insensitively in the
    user agent) or `network` (VALUE: CIDRs separated by spaces); SCOPE is opens, clicks or
    both. ValueError naming the line for anything else."""
    rules = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 3)
        if len(parts) < 4:
            raise ValueError(f"line {n}: use KIND REASON SCOPE VALUE")
        kind, reason, scope, value = parts
        if not re.fullmatch(r"[a-z][a-z0-9_]*", reason):
            raise ValueError(f"line {n}: a reason is lower-case letters, digits and _")
        if scope not in SCOPES:
            raise ValueError(f"line {n}: scope must be one of {', '.join(SCOPES)}")
        try:
            if kind == "agent":
                rules.append(agent(reason, scope, value))
            elif kind == "network":
                rules.append(network(reason, scope, *value.split()))
            else:
                raise ValueError("KIND must be agent or network")
        except (re.error, ValueError) as exc:
            raise ValueError(f"line {n}: {exc}") from None
    return tuple(rules)


@dataclass(frozen=True)
class Settings:
    """What the verdict reads (`[tracking]` machine_* keys)."""

    click_seconds: float = 5.0  # a click this soon after sending is a scanner's
    burst_links: int = 3  # this many different links of one message ...
    burst_seconds: float = 1.0  # ... clicked within this many seconds: a scanner
    rules: tuple[Rule, ...] = BUILTIN  # extra rules first, then BUILTIN
    off: frozenset = field(default_factory=frozenset)  # reasons not reported


@dataclass(frozen=True)
class Hit:
    """One request for a pixel (`kind` OPENS) or a link (CLICKS)."""

    kind: str
    method: str
    user_agent: str
    ip: str
    sent: float  # when the token was made (the message passed the milter), Unix time
    now: float
    link: int | None = None  # the clicked link's index
    recent: tuple = ()  # (time, link index) of this message's earlier clicks, oldest first


def verdict(hit: Hit, settings: Settings = Settings()) -> tuple[bool, str | None]:
    """(machine, reason) of `hit`: the first rule that matches and is not turned off."""
    for reason in _reasons(hit, settings):
        if reason not in settings.off:
            return True, reason
    return False, None


def _reasons(hit: Hit, settings: Settings):
    if hit.kind == CLICKS and hit.link == HONEYPOT_LINK:
        yield "honeypot_link"
    if hit.method == "HEAD":
        yield "head_request"
    if not hit.user_agent.strip():
        yield "no_user_agent"
    address = _address(hit.ip)
    for rule in settings.rules:
        if not rule.applies(hit.kind):
            continue
        if rule.pattern is not None and rule.pattern.search(hit.user_agent):
            yield rule.reason
        elif address is not None and rule.networks and rule.contains(address):
            yield rule.reason
    if hit.kind == CLICKS:
        if 0 <= hit.now - hit.sent < settings.click_seconds:
            yield "click_after_sending"
        if settings.burst_links > 1:
            links = {link for at, link in hit.recent if hit.now - at < settings.burst_seconds}
            links.add(hit.link)
            if len(links) >= settings.burst_links:
                yield "click_burst"


def _address(text: str):
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


class ClickWindow:
    """The recent clicks of the last `max_messages` messages (by queue id), each kept for
    `seconds`: what `Hit.recent` is made of. Not thread-safe: the caller holds a lock."""

    def __init__(self, seconds: float, max_messages: int = 10000):
        self.seconds = seconds
        self.max_messages = max_messages
        self._clicks: OrderedDict[str, deque] = OrderedDict()

    def add(self, queue_id: str, at: float, link: int | None) -> tuple:
        """This message's clicks within `seconds` before `at` (oldest first), then records
        this one."""
        clicks = self._clicks.pop(queue_id, None) or deque()
        while clicks and at - clicks[0][0] >= self.seconds:
            clicks.popleft()
        recent = tuple(clicks)
        clicks.append((at, link))
        self._clicks[queue_id] = clicks
        while len(self._clicks) > self.max_messages:
            self._clicks.popitem(last=False)
        return recent
