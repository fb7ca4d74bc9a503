"""The sandbox's image registry: Debian's docker-registry with TLS from a sandbox CA.

It listens on the bridge address, which the root engine (push) and every host (pull) reach
under the same name. Engines trust it through /etc/docker/certs.d/ADDR:PORT/ca.crt, which the
Docker engine reads at each pull and push, so no engine needs a restart or a config change.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from q7x2_runtime.errors import UserError
from q7x2_runtime.waiting import poll

from q7x2_deploy.sandbox.config import REGISTRY_PORT, SandboxConfig
from q7x2_deploy.sandbox.sysutil import kill_and_wait, pid_matches, which

CERTS_D = Path("/etc/docker/certs.d")


def certs_d_file(cfg: SandboxConfig) -> Path:
    return CERTS_D / cfg.registry_address / "ca.crt"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def ensure_certs(cfg: SandboxConfig) -> Path:
    """A CA and a server certificate for the bridge address; returns the CA file."""
    d = cfg.registry_dir / "certs"
    ca_crt, srv_crt, srv_key = d / "ca.crt", d / "server.crt", d / "server.key"
    if ca_crt.exists() and srv_crt.exists() and srv_key.exists():
        return ca_crt
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"q7x2 sandbox {cfg.name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    srv = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cfg.bridge_address)]))
           .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(cfg.bridge_address))]),
                          critical=False)
           .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .sign(ca_key, hashes.SHA256()))
    _write_key(srv_key, key)
    srv_crt.write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    ca_crt.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_crt


def install_trust(cfg: SandboxConfig, ca_crt: Path) -> tuple[Path, list[Path]]:
    """Place the CA where every engine looks; return the file and the dirs we had to create."""
    target = certs_d_file(cfg)
    created = [p for p in (CERTS_D.parent, CERTS_D, target.parent) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(ca_crt.read_bytes())
    return target, created


def sweep_trust(cfg: SandboxConfig) -> None:
    """Remove certs.d entries holding this sandbox's CA, whatever address they are under."""
    ca = cfg.registry_dir / "certs" / "ca.crt"
    if not ca.exists() or not CERTS_D.is_dir():
        return
    mine = ca.read_bytes()
    for entry in CERTS_D.glob("*/ca.crt"):
        try:
            if entry.read_bytes() == mine:
                entry.unlink()
                entry.parent.rmdir()
        except OSError:
            continue


def _config(cfg: SandboxConfig) -> Path:
    d = cfg.registry_dir
    (d / "data").mkdir(parents=True, exist_ok=True)
    path = d / "config.yml"
    path.write_text(f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {d / 'data'}
  delete:
    enabled: true
http:
  addr: {cfg.bridge_address}:{REGISTRY_PORT}
  tls:
    certificate: {d / 'certs' / 'server.crt'}
    key: {d / 'certs' / 'server.key'}
""", encoding="ascii")
    return path


def running(cfg: SandboxConfig, pid: int | None) -> bool:
    return pid_matches(pid, str(cfg.registry_dir / "config.yml"))


def start(cfg: SandboxConfig, pid: int | None) -> int:
    if running(cfg, pid):
        return pid  # type: ignore[return-value]
    config = _config(cfg)
    log = open(cfg.registry_dir / "registry.log", "ab")
    proc = subprocess.Popen([which("docker-registry") or "docker-registry", "serve", str(config)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    state = poll(lambda: "up" if answers(cfg) else ("exited" if proc.poll() is not None else ""),
                 timeout_s=20, interval_s=0.1)
    if state == "up":
        return proc.pid
    raise UserError(f"the sandbox registry did not start; see {cfg.registry_dir / 'registry.log'}")


def answers(cfg: SandboxConfig, timeout: float = 2.0) -> bool:
    """GET /v2/ over TLS, verified against the sandbox CA."""
    ctx = ssl.create_default_context(cafile=str(cfg.registry_dir / "certs" / "ca.crt"))
    try:
        with socket.create_connection((cfg.bridge_address, REGISTRY_PORT), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=cfg.bridge_address) as s:
                s.sendall(f"GET /v2/ HTTP/1.0\r\nHost: {cfg.registry_address}\r\n\r\n".encode())
                status = s.recv(64).split(b"\r\n", 1)[0]
                return status.startswith(b"HTTP/") and b" 200" in status
    except (OSError, ssl.SSLError):
        return False


def stop(cfg: SandboxConfig, pid: int | None) -> None:
    if running(cfg, pid):
        kill_and_wait([pid])  # type: ignore[list-item]
