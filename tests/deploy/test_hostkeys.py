"""known_hosts is parsed once per version of the file, and each host gets only its own keys."""

from __future__ import annotations

import paramiko

from q7x2_deploy.transport import hostkeys
from q7x2_deploy.transport.hostkeys import append_known_host, keys_for, known_hosts_name, load_known_hosts


def _key() -> paramiko.PKey:
    return paramiko.RSAKey.generate(1024)


def test_parsed_once_per_version_and_per_host_lookup(tmp_path, monkeypatch):
    path = tmp_path / "known_hosts"
    keys = {f"10.0.0.{i}": _key() for i in range(1, 6)}
    for addr, key in keys.items():
        append_known_host(path, known_hosts_name(addr, 2222), key)
    loads = []
    real_load = paramiko.HostKeys.load
    monkeypatch.setattr(paramiko.HostKeys, "load", lambda self, f: (loads.append(f), real_load(self, f))[1])
    for addr, key in keys.items():
        found = keys_for(path, known_hosts_name(addr, 2222))
        assert list(found) == ["ssh-rsa"] and found["ssh-rsa"] == key
    assert len(loads) == 1  # not once per host
    assert keys_for(path, "10.0.0.9") == {} and keys_for(path, known_hosts_name("10.0.0.1", 22)) == {}
    # An accepted new host changes the file: the next lookup sees it.
    new = _key()
    append_known_host(path, "[10.0.0.9]:2222", new)
    assert keys_for(path, "[10.0.0.9]:2222")["ssh-rsa"] == new
    assert len(loads) == 2


def test_hashed_entries_and_a_missing_file(tmp_path):
    path = tmp_path / "known_hosts"
    assert len(load_known_hosts(path)) == 0
    key = _key()
    hashed = paramiko.HostKeys.hash_host("[10.0.0.7]:2222")
    path.write_text(f"{hashed} {key.get_name()} {key.get_base64()}\n")
    assert keys_for(path, "[10.0.0.7]:2222")["ssh-rsa"] == key
    assert keys_for(path, "[10.0.0.8]:2222") == {}
    hostkeys._PARSED.clear()


def test_the_name_index_answers_as_paramiko_lookup_does(tmp_path, monkeypatch):
    path = tmp_path / "known_hosts"
    a, b, c = _key(), _key(), _key()
    # Two entries for one host (the first key of a type wins), a line naming two hosts.
    path.write_text("".join(f"{names} {k.get_name()} {k.get_base64()}\n"
                            for names, k in (("10.0.0.1", a), ("10.0.0.1", b), ("10.0.0.2,[10.0.0.3]:2222", c))))
    table = load_known_hosts(path)
    lookups = []
    real_lookup = paramiko.HostKeys.lookup
    monkeypatch.setattr(paramiko.HostKeys, "lookup", lambda self, n: (lookups.append(n), real_lookup(self, n))[1])
    for name in ("10.0.0.1", "10.0.0.2", "[10.0.0.3]:2222", "10.0.0.3", "10.0.0.9"):
        found = real_lookup(table, name)
        assert keys_for(path, name) == (dict(found.items()) if found else {})
    assert keys_for(path, "10.0.0.1")["ssh-rsa"] == a
    assert lookups == []  # answered from the index, not by walking every entry per host
