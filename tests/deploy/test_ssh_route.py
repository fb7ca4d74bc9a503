"""Resolving logins from the inventory and an OpenSSH client config: patterns, aliases,
precedence, ProxyJump chains, bad config (no host is touched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from q7x2_deploy.transport.factory import transport_config
from q7x2_deploy.inventory import parse_inventory
from q7x2_deploy.ssh_route import ClientConfig, SshConfigError, load_client_config, resolve

CONFIG = """
Host bastion
    HostName 203.0.113.7
    User ops
    Port 2222
    UserKnownHostsFile /etc/site/known_hosts /etc/site/known_hosts2
    ConnectTimeout 4
    ServerAliveInterval 11

Host inner-bastion
    HostName 10.1.0.2
    ProxyJump bastion

Host gpu-*
    User trainer
    ProxyJump bastion

Host gpu-7
    HostName 10.1.0.17
    Port 2200

Host deep-*
    ProxyJump inner-bastion,ops2@10.2.0.3:2022

Host *
    ServerAliveInterval 30
"""


def cfg(text: str = CONFIG) -> ClientConfig:
    return ClientConfig.from_text(text, Path("/site/ssh_config"))


NOTHING: dict[str, object] = {}


def test_a_host_pattern_applies_and_the_first_value_wins() -> None:
    r = resolve("gpu-3", NOTHING, cfg())
    t = r.target
    assert (t.hostname, t.user, t.port) == ("gpu-3", "trainer", 22)
    assert t.keepalive_interval == 30 and t.connect_timeout == 15.0
    assert t.known_hosts == ("~/.ssh/known_hosts",)
    assert [j.name for j in r.jumps] == ["bastion"]


def test_an_alias_address_resolves_to_its_hostname_and_port() -> None:
    t = resolve("gpu-7", NOTHING, cfg()).target
    assert (t.name, t.hostname, t.port, t.user) == ("gpu-7", "10.1.0.17", 2200, "trainer")


def test_negated_patterns_follow_openssh() -> None:
    c = cfg("Host !lab-9 lab-*\n  User lab\n")
    assert resolve("lab-1", NOTHING, c).target.user == "lab"
    assert resolve("lab-9", NOTHING, c).target.user == "root"  # negated: the built-in default


def test_inventory_values_override_the_config_file() -> None:
    over = {"user": "admin", "port": 22, "identity": "/keys/id", "known_hosts": "/kh"}
    t = resolve("gpu-7", over, cfg()).target
    assert (t.user, t.port, t.identities, t.known_hosts) == ("admin", 22, ("/keys/id",), ("/kh",))
    assert t.hostname == "10.1.0.17"  # HostName is the config's: the inventory only names the host


def test_jump_host_settings_come_from_its_own_config_entry() -> None:
    (b,) = resolve("gpu-1", {"user": "admin", "identity": "/keys/id"}, cfg()).jumps
    assert (b.hostname, b.port, b.user, b.connect_timeout, b.keepalive_interval) == ("203.0.113.7", 2222, "ops", 4.0, 11)
    assert b.known_hosts == ("/etc/site/known_hosts", "/etc/site/known_hosts2")
    assert b.identities == ()  # the inventory's identity is the host's, not the bastion's: agent keys


def test_multi_hop_chain_in_connection_order() -> None:
    r = resolve("deep-1", NOTHING, cfg())
    assert [(j.name, j.hostname, j.user, j.port) for j in r.jumps] == [
        ("bastion", "203.0.113.7", "ops", 2222),  # inner-bastion's own ProxyJump comes first
        ("inner-bastion", "10.1.0.2", "root", 22),
        ("10.2.0.3", "10.2.0.3", "ops2", 2022),  # user and port written in the ProxyJump entry
    ]
    assert r.describe() == ("root@deep-1:22 via ops@203.0.113.7:2222 -> root@10.1.0.2:22 -> ops2@10.2.0.3:2022")


def test_transport_config_keeps_the_chain_and_labels_jump_hosts() -> None:
    c = transport_config("node3", resolve("deep-1", NOTHING, cfg()), accept_new_host_keys=True)
    assert [j.host for j in c.jumps] == ["jump host bastion", "jump host inner-bastion", "jump host 10.2.0.3"]
    assert all(j.accept_new_host_keys for j in c.jumps) and c.jumps[0].known_hosts == ("/etc/site/known_hosts", "/etc/site/known_hosts2")
    assert c.login == "root@deep-1:22 via ops@203.0.113.7:2222 -> root@10.1.0.2:22 -> ops2@10.2.0.3:2022"


def test_proxyjump_none_and_ipv6_hops() -> None:
    c = cfg("Host a\n  ProxyJump none\nHost b\n  ProxyJump u@[2001:db8::1]:2022\n")
    assert resolve("a", NOTHING, c).jumps == ()
    (j,) = resolve("b", NOTHING, c).jumps
    assert (j.hostname, j.user, j.port) == ("2001:db8::1", "u", 2022)


@pytest.mark.parametrize("text, message", [
    ("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n", "ProxyJump loops back to a"),
    ("Host a\n  Port 99999\n", "Port '99999' is not a port number"),
    ("Host a\n  ConnectTimeout soon\n", "ConnectTimeout 'soon' is not a whole number"),
    ("Host a\n  ProxyJump u@@b\n", "ProxyJump entry 'u@@b' is not"),
    ("Host a\n  UserKnownHostsFile none\n", "UserKnownHostsFile none turns host key checks off"),
    ("Host a\n  Port\n", "Unparsable line"),
])
def test_bad_config_is_one_line_naming_the_file(text: str, message: str) -> None:
    with pytest.raises(SshConfigError) as e:
        resolve("a", NOTHING, cfg(text))
    assert message in str(e.value) and str(e.value).startswith("/site/ssh_config: ") and "\n" not in str(e.value)


def test_a_long_chain_is_refused() -> None:
    text = "".join(f"Host h{i}\n  ProxyJump h{i + 1}\n" for i in range(12))
    with pytest.raises(SshConfigError, match="has 9 hops"):
        resolve("h0", NOTHING, cfg(text))


def test_config_files_identities_includes_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / "id_site"
    key.write_text("not read here")
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "site.conf").write_text(f"Host n*\n  IdentityFile {key}\n  IdentityFile {tmp_path}/absent\n")
    main = tmp_path / "config"
    main.write_text("Include site.conf\nHost *\n  User someone\n")
    c = load_client_config(str(main))
    t = resolve("n1", NOTHING, c).target
    assert t.identities == (str(key),)  # configured files that do not exist are skipped, as ssh does
    assert t.user == "someone"
    with pytest.raises(SshConfigError, match=r"ssh config .*/nope does not exist"):
        load_client_config(str(tmp_path / "nope"))
    assert resolve("n1", NOTHING, load_client_config(None)).config is None  # no ~/.ssh/config: none


def test_inventory_ssh_config_key_and_per_host_overrides() -> None:
    inv = parse_inventory({"ssh": {"config": "/site/ssh_config", "user": "admin"},
                           "hosts": [{"name": "a", "address": "gpu-7", "ssh": {"port": 2201}},
                                     {"name": "b", "address": "gpu-8"}]})
    a, b = (inv.ssh_target(h).model_dump() for h in inv.hosts)
    assert a == {"user": "admin", "port": 2201, "identity": None, "known_hosts": None, "config": "/site/ssh_config"}
    assert resolve("gpu-7", a, cfg()).target.login == "admin@10.1.0.17:2201"
    assert resolve("gpu-8", b, cfg()).target.login == "admin@gpu-8:22"
    with pytest.raises(Exception, match="config"):
        parse_inventory({"hosts": [{"name": "a", "address": "a", "ssh": {"config": "/x"}}]})
