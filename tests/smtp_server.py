"""A real SMTP server for tests: aiosmtpd with STARTTLS, AUTH and scripted failures."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER, PASSWORD = "mailer", "s3cret-pass"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Script:
    """What the server does: reject some recipients, fail DATA a number of times, drop."""

    reject: dict[str, str] = field(default_factory=dict)  # address -> reply, e.g. "550 no"
    reject_all: str | None = None  # the reply to every RCPT
    mail_reply: str | None = None  # the reply to MAIL FROM (a refused sender)
    data_failures: list[str] = field(default_factory=list)  # replies for the next DATAs
    drop_next_data: int = 0  # close the connection after the end of data, before replying
    drop_next_rcpt: int = 0  # close the connection at RCPT (before any data)
    double_reply_next_data: int = 0  # answer the end of data twice (a desynchronised server)
    # address -> an event the server waits for (up to 30 s) before it answers that RCPT
    rcpt_gate: dict[str, threading.Event] = field(default_factory=dict)
    # recipient domain -> the reply to each RCPT / each end of data for that domain (a
    # receiving domain that refuses us by policy, size or rate limit)
    domain_rcpt: dict[str, str] = field(default_factory=dict)
    domain_data: dict[str, str] = field(default_factory=dict)
    # domains that greylist: an address's first RCPT gets this reply, later ones pass
    greylist: dict[str, str] = field(default_factory=dict)


class Handler:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.messages: list[tuple[list[str], bytes]] = []
        self.senders: list[str] = []  # envelope sender of each accepted message
        self.sessions: list[tuple[str, int]] = []  # peer (host, port) of each DATA
        self.rcpts: list[str] = []  # every RCPT TO address, in order, whatever the reply
        self.greylisted: set[str] = set()

    def tried(self, domain: str) -> int:
        """How many RCPTs named an address at ``domain``."""
        return sum(a.lower().endswith("@" + domain) for a in self.rcpts)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.script.mail_reply:
            return self.script.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.script.drop_next_rcpt:
            self.script.drop_next_rcpt -= 1
            server.transport.close()
            return "421 closing"
        self.rcpts.append(address)
        domain = address.rpartition("@")[2].lower()
        if domain in self.script.domain_rcpt:
            return self.script.domain_rcpt[domain]
        if domain in self.script.greylist and address.lower() not in self.greylisted:
            self.greylisted.add(address.lower())
            return self.script.greylist[domain]
        gate = self.script.rcpt_gate.get(address.lower())
        if gate is not None:  # a server slow to answer this one, until the test lets it
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
        reply = self.script.reject.get(address.lower()) or self.script.reject_all
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.sessions.append(tuple(session.peer))
        if self.script.drop_next_data:
            self.script.drop_next_data -= 1
            server.transport.close()
            return "421 closing"
        if self.script.data_failures:
            return self.script.data_failures.pop(0)
        domains = {a.rpartition("@")[2].lower() for a in envelope.rcpt_tos}
        for domain in sorted(domains & set(self.script.domain_data)):
            return self.script.domain_data[domain]
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        self.senders.append(envelope.mail_from)
        if self.script.double_reply_next_data:
            self.script.double_reply_next_data -= 1
            return "250 Message accepted\r\n250 OK"
        return "250 Message accepted"


def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == USER
        and auth_data.password.decode() == PASSWORD
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd replies 535


class SmtpServer:
    """STARTTLS + AUTH server on 127.0.0.1 with a scripted handler."""

    def __init__(self, folder: Path, port: int = 0) -> None:
        self.cert, key = self_signed(folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.script = Script()
        self.handler = Handler(self.script)
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=port or free_port(),
            tls_context=context,
            require_starttls=True,
            authenticator=authenticate,
            auth_require_tls=True,
        )

    @property
    def port(self) -> int:
        return self.controller.port

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
