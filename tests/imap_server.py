"""A real IMAP server for tests: a private Dovecot instance (Debian dovecot-imapd).

Its own configuration, ports, passwd-file, TLS certificate and Maildir, all in a
temporary folder; it runs as the current user (root or not) and never touches the
system's Dovecot. IMAPS and STARTTLS listeners; PLAIN login only over TLS.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from smtp_server import free_port, self_signed

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "bounces", "imap-s3cret"


def available() -> bool:
    return Path(DOVECOT).exists()


class ImapServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cert, key = self_signed(folder)
        self.port_starttls, self.port_tls = free_port(), free_port()
        me = getpass.getuser()
        uid, gid = os.getuid(), os.getgid()
        # Dovecot refuses to run its login processes as root: as root they run as the
        # package's unprivileged users, which must be able to reach the sockets in base_dir.
        login_user = "dovenull" if uid == 0 else me
        internal_user = "dovecot" if uid == 0 else me
        self.base_dir = Path(tempfile.mkdtemp(prefix="pp-dovecot-"))
        self.base_dir.chmod(0o755)
        if uid == 0:  # nor does it deliver mail as root: the mailbox belongs to "dovecot"
            owner = pwd.getpwnam("dovecot")
            uid, gid = owner.pw_uid, owner.pw_gid
        home = self.base_dir / "home"
        home.mkdir()
        os.chown(home, uid, gid)
        passwd = self.base_dir / "passwd"  # read by the auth process (as "dovecot" under root)
        passwd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{home}\n")
        passwd.chmod(0o644)
        self.config = folder / "dovecot.conf"
        self.config.write_text(
            f"""
protocols = imap
listen = 127.0.0.1
base_dir = {self.base_dir}
state_dir = {folder}/state
log_path = {folder}/dovecot.log
default_internal_user = {internal_user}
default_login_user = {login_user}
first_valid_uid = {uid}
first_valid_gid = {gid}
ssl = required
ssl_cert = <{self.cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port_starttls}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port_tls}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> ImapServer:
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.process.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port_tls), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen on {self.port_tls}: {self.log()}")

    def log(self) -> str:
        path = self.folder / "dovecot.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base_dir, ignore_errors=True)


class HostileImap:
    """An IMAPS server that greets, takes any login, then misbehaves (``mode``): ``lines``
    answers SELECT with an untagged ``* OK still thinking N`` line every ``pace`` seconds,
    never ending the answer; ``line`` sends one line a few bytes at a time, never its line
    end (each piece well within the client's read timeout); ``flood`` sends 900 KB lines as
    fast as they are read; ``bad`` answers SELECT ``BAD``; ``drop`` closes the connection
    right after LOGIN."""

    def __init__(self, folder: Path, mode: str, pace: float = 0.05) -> None:
        import ssl
        import threading

        self.cert, key = self_signed(folder)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self.cert, key)
        self.mode, self.pace = mode, pace
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.commands: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> HostileImap:
        self.thread.start()
        return self

    def _serve(self) -> None:
        import threading

        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), self.context.wrap_socket(raw, server_side=True) as conn:
            reader = conn.makefile("rb")
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1] hostile server ready\r\n")
            while line := reader.readline():
                tag, command = line.split()[0], line.split()[1].upper()
                self.commands.append(command)
                if command == b"SELECT" and self.mode == "bad":
                    conn.sendall(tag + b" BAD [SERVERBUG] mailbox index corrupted\r\n")
                    continue
                if command == b"SELECT":
                    self._stall(conn)
                    return
                if command == b"CAPABILITY":
                    conn.sendall(b"* CAPABILITY IMAP4rev1\r\n")
                conn.sendall(tag + b" OK done\r\n")
                if command == b"LOGIN" and self.mode == "drop":
                    return

    def _stall(self, conn: socket.socket) -> None:
        if self.mode == "flood":
            line = b"* OK " + b"Y" * 900_000 + b"\r\n"  # under imaplib's 1,000,000
            while not self.stopped.is_set():
                conn.sendall(line)
            return
        count = 0
        if self.mode == "line":
            conn.sendall(b"* OK still thinking")
        while not self.stopped.wait(self.pace):
            piece = f"* OK still thinking {count}\r\n" if self.mode == "lines" else " ."
            conn.sendall(piece.encode())
            count += 1

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
