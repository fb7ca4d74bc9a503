"""How the deployer logs in to a host: the inventory's `ssh` settings over the operator's own
OpenSSH client configuration (`~/.ssh/config`, or the file `ssh.config` / `--ssh-config` names).

For each host the result is a `Route`: the endpoint to log in to and the jump hosts
(ProxyJump) to pass through on the way, each with its own user, port, keys and known_hosts.
The precedence is OpenSSH's, with the inventory on top: a value the inventory sets (per host,
then under `ssh:`) wins over the config file, which wins over the built-in defaults. Jump hosts
are configured by the config file alone, as they are for `ssh -J`.

Parsing is paramiko's SSHConfig (Host patterns, negation, Match, %-tokens); `Include` is
expanded here, since paramiko does not follow it. Pure and local: reading a route touches no
host, so `plan` can show it.
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import paramiko

from q7x2_runtime.errors import UserError

DEFAULT_CONFIG = "~/.ssh/config"
DEFAULT_USER = "root"
DEFAULT_PORT = 22
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_CONNECT_TIMEOUT = 15.0
# A keepalive every few seconds keeps NAT/firewall state alive during long quiet phases
# (conversion can print nothing for minutes); liveness itself is checked with `ping`.
DEFAULT_KEEPALIVE = 5
# OpenSSH has no limit, but a chain this long is a loop in all but name.
MAX_JUMPS = 8
_MAX_INCLUDE_DEPTH = 16
_HOP = re.compile(r"(?:ssh://)?(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[^\]\s]+)\]|(?P<host>[^:@\[\]\s]+))(?::(?P<port>[^:\s]+))?")


class SshConfigError(UserError):
    """The OpenSSH client configuration cannot be used: one line naming the file and the entry."""


@dataclass(frozen=True)
class Endpoint:
    """One SSH login."""

    name: str  # as the inventory or ProxyJump wrote it: an alias or an address
    hostname: str  # what is connected to: the config's HostName, else the name
    port: int
    user: str
    identities: tuple[str, ...]  # empty: the ssh-agent's keys, then the default key files
    known_hosts: tuple[str, ...]  # checked in order; new keys (when accepted) go to the first
    connect_timeout: float
    keepalive_interval: int  # seconds; 0: none

    @property
    def login(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "hostname": self.hostname, "port": self.port, "user": self.user,
                "identities": list(self.identities), "known_hosts": list(self.known_hosts),
                "connect_timeout": self.connect_timeout, "keepalive_interval": self.keepalive_interval}


@dataclass(frozen=True)
class Route:
    target: Endpoint
    jumps: tuple[Endpoint, ...]  # in connection order: the first is reached directly
    config: str | None  # the configuration file consulted, if any

    def describe(self) -> str:
        """`root@10.0.0.5:22 via ops@bastion.example:22` — one line for `plan` and `check`."""
        via = f" via {' -> '.join(j.login for j in self.jumps)}" if self.jumps else ""
        return f"{self.target.login}{via}"

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target.to_dict(), "jumps": [j.to_dict() for j in self.jumps], "config": self.config}


class ClientConfig:
    """One parsed OpenSSH client configuration (possibly none at all)."""

    def __init__(self, parsed: paramiko.SSHConfig, path: Path | None) -> None:
        self._parsed = parsed
        self.path = path

    @classmethod
    def empty(cls) -> ClientConfig:
        return cls(paramiko.SSHConfig(), None)

    @classmethod
    def from_text(cls, text: str, path: Path | None = None) -> ClientConfig:
        where = str(path) if path else "ssh config"
        try:
            parsed = paramiko.SSHConfig()
            parsed.parse(io.StringIO(text))
        except (paramiko.ConfigParseError, ValueError) as e:
            raise SshConfigError(f"{where}: {e}; fix the line (OpenSSH client config syntax)") from None
        return cls(parsed, path)

    @property
    def where(self) -> str:
        return str(self.path) if self.path else "ssh config"

    def lookup(self, name: str) -> dict[str, object]:
        try:
            return dict(self._parsed.lookup(name))
        except (paramiko.ConfigParseError, paramiko.CouldNotCanonicalize, ValueError, OSError) as e:
            raise SshConfigError(f"{self.where}: looking up Host {name}: {e}") from None


def load_client_config(path: str | None) -> ClientConfig:
    """The file `path` names (it must exist), else ~/.ssh/config when there is one."""
    explicit = path is not None
    file = Path(path if path is not None else DEFAULT_CONFIG).expanduser()
    if not explicit and not file.exists():
        return ClientConfig.empty()
    return ClientConfig.from_text(_read_with_includes(file, explicit, 0), file)


def _read_with_includes(file: Path, must_exist: bool, depth: int) -> str:
    """The file's text with every `Include` replaced by the files it names (OpenSSH's rules:
    relative paths are under ~/.ssh, globs allowed, a missing match is no error)."""
    if depth > _MAX_INCLUDE_DEPTH:
        raise SshConfigError(f"{file}: Include nests deeper than {_MAX_INCLUDE_DEPTH} files (an Include loop?)")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if must_exist:
            raise SshConfigError(f"ssh config {file} does not exist: fix ssh.config in the inventory or --ssh-config") from None
        return ""
    except (OSError, UnicodeDecodeError) as e:
        raise SshConfigError(f"cannot read ssh config {file}: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for line in text.splitlines():
        words = line.strip().replace("=", " ", 1).split()
        if words and words[0].lower() == "include":
            for pattern in words[1:]:
                expanded = os.path.expanduser(pattern)
                if not os.path.isabs(expanded):
                    expanded = os.path.join(os.path.expanduser("~/.ssh"), expanded)
                for match in sorted(glob.glob(expanded)):
                    out.append(_read_with_includes(Path(match), False, depth + 1))
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def resolve(address: str, inventory: Mapping[str, object], config: ClientConfig) -> Route:
    """The route to a host whose inventory `address` is `address` and whose inventory SSH
    settings (defaults merged with the host's overrides; None = not set) are `inventory`."""
    opts = config.lookup(address)
    target = _endpoint(address, opts, config, inventory)
    jumps = _jump_chain(opts.get("proxyjump"), config, (address,))
    return Route(target, jumps, str(config.path) if config.path else None)


def _jump_chain(spec: object, config: ClientConfig, seen: tuple[str, ...]) -> tuple[Endpoint, ...]:
    """ProxyJump `a,b` as OpenSSH runs it: a is reached with its own ProxyJump (if any), b
    through a with b's settings but not b's ProxyJump, the host through b."""
    if spec is None or str(spec).strip().lower() == "none":
        return ()
    hops = [_parse_hop(h, config, seen[0]) for h in str(spec).split(",")]
    first_name = hops[0][0]
    if first_name in seen:
        raise SshConfigError(f"{config.where}: ProxyJump loops back to {first_name} "
                             f"({' -> '.join((*seen, first_name))}); fix the ProxyJump lines")
    first_opts = config.lookup(first_name)
    chain = _jump_chain(first_opts.get("proxyjump"), config, (*seen, first_name))
    chain += tuple(_endpoint(name, config.lookup(name), config, overrides) for name, overrides in hops)
    if len(chain) > MAX_JUMPS:
        raise SshConfigError(f"{config.where}: the ProxyJump chain to {seen[0]} has {len(chain)} hops "
                             f"(at most {MAX_JUMPS}); fix the ProxyJump lines")
    return chain


def _parse_hop(text: str, config: ClientConfig, host: str) -> tuple[str, dict[str, object]]:
    m = _HOP.fullmatch(text.strip())
    if not m:
        raise SshConfigError(f"{config.where}: Host {host}: ProxyJump entry {text.strip()!r} is not "
                             "[user@]host[:port]; fix the ProxyJump line")
    overrides: dict[str, object] = {"user": m["user"], "port": None}
    if m["port"] is not None:
        overrides["port"] = _port(m["port"], config, host, "ProxyJump port")
    return m["v6"] or m["host"], overrides


def _endpoint(name: str, opts: Mapping[str, object], config: ClientConfig, over: Mapping[str, object]) -> Endpoint:
    def given(key: str) -> object:
        value = over.get(key)
        return None if value is None or value == "" else value

    # The config's own values are checked even where the inventory overrides them: a typo in
    # the file is reported the way ssh would report it, not only once it starts to matter.
    config_port = _port(str(opts["port"]), config, name, "Port") if "port" in opts else DEFAULT_PORT
    port = int(str(given("port"))) if given("port") is not None else config_port
    user = str(given("user") or opts.get("user") or DEFAULT_USER)
    identity = given("identity")
    if identity is not None:
        identities: tuple[str, ...] = (str(identity),)
    else:
        # OpenSSH skips configured identity files that do not exist; so do we.
        listed = opts.get("identityfile") or []
        identities = tuple(os.path.expanduser(str(f)) for f in (listed if isinstance(listed, list) else [listed])
                           if os.path.exists(os.path.expanduser(str(f))))
    known = given("known_hosts")
    if known is not None:
        known_hosts: tuple[str, ...] = (str(known),)
    elif opts.get("userknownhostsfile"):
        known_hosts = tuple(os.path.expanduser(p) for p in str(opts["userknownhostsfile"]).split())
        if [p for p in known_hosts if p.lower() == "none"]:
            raise SshConfigError(f"{config.where}: Host {name}: UserKnownHostsFile none turns host key checks off, "
                                 "which q7x2-deploy never does; name a file")
    else:
        known_hosts = (DEFAULT_KNOWN_HOSTS,)
    return Endpoint(
        name=name,
        hostname=str(opts.get("hostname") or name),
        port=port,
        user=user,
        identities=identities,
        known_hosts=known_hosts,
        connect_timeout=_number(opts.get("connecttimeout"), DEFAULT_CONNECT_TIMEOUT, config, name, "ConnectTimeout", positive=True),
        keepalive_interval=int(_number(opts.get("serveraliveinterval"), DEFAULT_KEEPALIVE, config, name, "ServerAliveInterval")),
    )


def _port(text: str, config: ClientConfig, host: str, what: str) -> int:
    if text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    raise SshConfigError(f"{config.where}: Host {host}: {what} {text!r} is not a port number (1-65535)")


def _number(value: object, default: float, config: ClientConfig, host: str, what: str, positive: bool = False) -> float:
    if value is None:
        return default
    text = str(value)
    if not text.isdigit() or (positive and int(text) == 0):
        raise SshConfigError(f"{config.where}: Host {host}: {what} {text!r} is not a whole number of seconds"
                             f"{' above 0' if positive else ''}")
    return float(int(text))


__all__ = ["ClientConfig", "Endpoint", "Route", "SshConfigError", "load_client_config", "resolve"]
