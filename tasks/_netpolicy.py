"""Where ``http_request`` may connect: no loopback, private, link-local (cloud metadata) or
other non-public address, unless the operator allows it.

``FLOW_HTTP_ALLOW_PRIVATE=1`` turns the check off (local development, tests);
``FLOW_HTTP_ALLOWED_HOSTS`` lists the hosts that skip it (``billing.internal``,
``*.corp.example``, ``10.0.0.5``). Both are read from the environment on each request, so the
web server, the worker and ``runflow`` apply whatever their environment (and ``.env``) says;
``flowmanager/settings.py`` reads them once at start so that a bad value stops the process.

The check runs where the socket is opened (an httpcore network backend): the name is resolved
once, every address it has must be public, and the socket goes to one of those checked
addresses while TLS and the Host header keep the name. A name that answers differently a
moment later (DNS rebinding) gets no second lookup, and every redirect hop opens its own
connection through the same check.

Not a task type: the registry loads ``task_*.py`` files only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import anyio
import httpcore
import httpx

ALLOW_PRIVATE = "FLOW_HTTP_ALLOW_PRIVATE"
ALLOWED_HOSTS = "FLOW_HTTP_ALLOWED_HOSTS"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_METADATA = ipaddress.ip_address("169.254.169.254")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class NetPolicy:
    allow_private: bool = False
    hosts: frozenset[str] = frozenset()
    # "*.corp.example" is kept as ".corp.example": a subdomain matches, the bare name does not.
    suffixes: tuple[str, ...] = ()

    def allows_host(self, host: str) -> bool:
        name = _normal_host(host)
        return name in self.hosts or name.endswith(self.suffixes)


def policy_from_env(environ: Mapping[str, str] = os.environ) -> NetPolicy:
    """The policy the environment sets; ValueError naming the variable when a value is bad."""
    raw = environ.get(ALLOW_PRIVATE, "")
    if raw.strip().lower() not in _TRUE | _FALSE:
        raise ValueError(f"{ALLOW_PRIVATE}={raw!r} is not a boolean: use 1/0, true/false, yes/no")
    hosts: set[str] = set()
    suffixes: list[str] = []
    for entry in environ.get(ALLOWED_HOSTS, "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name = _normal_host(entry)
        if name.startswith("*.") and _is_host_name(name[2:]):
            suffixes.append(name[1:])
        elif _is_host_name(name) or _is_address(name):
            hosts.add(name)
        else:
            raise ValueError(
                f"{ALLOWED_HOSTS}: {entry!r} is not a host name; list names or addresses "
                "without scheme, port or path, comma-separated "
                "(billing.internal, *.corp.example, 10.0.0.5)"
            )
    return NetPolicy(raw.strip().lower() in _TRUE, frozenset(hosts), tuple(suffixes))


def _normal_host(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def _is_host_name(name: str) -> bool:
    labels = name.split(".")
    return all(
        label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
        for label in labels
    )


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def refusal_reason(address: IPAddress) -> str | None:
    """Why a connection to ``address`` is refused ("a loopback address"), or None if public."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 form of an IPv4 address reaches that IPv4 address: judge that one.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal_reason(embedded)
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address" + (" (cloud metadata)" if address == _METADATA else "")
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a public address"
    return None


class AddressRefused(Exception):
    """A connection the policy does not allow; ``url`` is the request (or redirect) refused."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        self.url = ""
        if _normal_host(host) == _normal_host(address):
            detail = f"{address} is {reason}"
        else:
            detail = f"{host} resolves to {address}, {reason}"
        super().__init__(detail)

    def hint(self) -> str:
        return f"set {ALLOWED_HOSTS}={_normal_host(self.host)} or {ALLOW_PRIVATE}=1 to allow it"


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` has, in the order the resolver prefers (the event loop's
    getaddrinfo, as a plain connect would use)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the policy allows, and to exactly those."""

    def __init__(self, policy: NetPolicy) -> None:
        self.policy = policy
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self.policy.allows_host(host):
            return await self._backend.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        # Every address, not only the first: a client may fall back to any of them.
        for address in addresses:
            reason = refusal_reason(ipaddress.ip_address(address))
            if reason is not None:
                raise AddressRefused(host, address, reason)
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, connecting through :class:`GuardedBackend`.

    httpx passes no network backend through, so the connection pool is replaced by one built
    with it; the rest (request conversion, exception mapping) stays httpx's. Environment
    proxies are not used: the check must see the address the socket goes to.
    """

    def __init__(self, policy: NetPolicy) -> None:
        super().__init__()
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            # Fail closed: never run unguarded because httpx changed inside.
            raise RuntimeError("this httpx keeps no httpcore pool in _pool: cannot guard it")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=GuardedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except AddressRefused as exc:
            exc.url = str(request.url)
            raise


def transport_for(policy: NetPolicy) -> httpx.AsyncBaseTransport | None:
    """The transport ``http_request`` uses: None (httpx's default) when the check is off."""
    if policy.allow_private:
        return None
    return GuardedTransport(policy)
