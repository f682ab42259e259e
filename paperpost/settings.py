"""Configuration: environment variables with the ``PAPERPOST_`` prefix, or a ``.env`` file.

Every setting has a default that runs the bundled examples; see the README's
configuration table. A bad value raises :class:`ConfigError`, one line per variable.
"""

from __future__ import annotations

import json
import re
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from dotenv.parser import parse_stream
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from paperpost.errors import ConfigError

_CONTROL = re.compile("[\x00-\x1f\x7f]")  # CR, LF, NUL...: never in a header

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Public, so anyone can sign links with it: fine for the outbox and tests, refused where
# links reach real people (SMTP delivery, `paperpost web`).
DEVELOPMENT_KEY = "paperpost-development-key-change-me"
MIN_KEY_CHARS = 16
_ENV_KEY = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)")
GENERATE_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _split_list(value: Any) -> Any:
    """A list setting from the environment: a JSON list, a comma-separated list or one value."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("a comma-separated list, one value, or a valid JSON list of strings")
        return items
    return [item.strip() for item in text.split(",") if item.strip()]


# A list of strings; in the environment: `a`, `a,b` or `["a", "b"]`.
ListSetting = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


class Settings(BaseSettings):
    """All of paperpost's settings. Field names map to ``PAPERPOST_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="PAPERPOST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    sources: ListSetting = Field(
        default_factory=lambda: [str(PROJECT_ROOT / "examples" / "dumps")],
        description="Dumps to read: files, folders, globs or http(s) URLs (comma-separated).",
        examples=["examples/dumps,https://huggingface.co/api/daily_papers"],
    )
    subscribers_dir: Path = Field(
        default=PROJECT_ROOT / "subscribers", description="Folder of subscriber YAML files."
    )
    state_dir: Path = Field(
        default=Path("state"), description="Folder for the SQLite database and run state."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<state_dir>/paperpost.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
        examples=["sqlite:///state/paperpost.db"],
    )
    delivery: Literal["outbox", "smtp"] = Field(
        default="outbox", description="Where digests go: .eml files in outbox_dir, or SMTP."
    )
    outbox_dir: Path = Field(default=Path("outbox"), description="Folder for .eml digests.")
    sender: str = Field(
        default="paperpost <digest@paperpost.invalid>", description="From: address."
    )
    base_url: str | None = Field(
        default=None,
        description="Public https URL of `paperpost web`, for unsubscribe and vote links.",
        examples=["https://paperpost.example.org"],
    )
    secret_key: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_KEY),
        description="Key that signs unsubscribe and vote links. Set your own in production.",
    )
    smtp_host: str = Field(default="localhost", description="SMTP server.")
    smtp_port: int = Field(default=587, description="SMTP port (465 = implicit TLS).")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", description="starttls, tls (implicit, port 465) or none."
    )
    smtp_username: str | None = Field(default=None, description="SMTP AUTH user.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP AUTH password.")
    smtp_ca_file: Path | None = Field(
        default=None,
        description="PEM file of CAs to trust for a private SMTP server (verification stays on).",
    )
    smtp_connections: int = Field(default=4, ge=1, description="SMTP connections in parallel.")
    smtp_rate_limit: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Most messages per second to send (none: no cap).",
    )
    smtp_recycle_after: int = Field(
        default=100, ge=1, description="Messages per SMTP connection before reconnecting."
    )
    max_error_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Pause a run once more than this share of deliveries fail (after 20).",
    )
    smtp_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="SMTP socket timeout in seconds.",
    )
    fetch_timeout: float = Field(
        default=20.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="HTTP read timeout in seconds; a whole download gets 6x this.",
    )
    max_dump_mb: float = Field(
        default=20.0,
        gt=0,
        le=10_000,
        allow_inf_nan=False,
        description="Largest dump accepted, in MB.",
    )
    send_empty: bool = Field(
        default=False, description="Send a digest even when no paper passes min_score."
    )
    semantic: bool = Field(
        default=False,
        description="Rank with the semantic signal too (needs the paperpost[semantic] extra; "
        "tags that are not a vocabulary topic: docs/ranking.md).",
    )
    resend_ambiguous: bool = Field(
        default=False,
        description="Resend digests whose SMTP end-of-data was sent but whose reply was never "
        "read (may duplicate); default: report them and do not resend.",
    )
    systemic_domains: int = Field(
        default=3,
        ge=2,
        description="Pause the run when the same 5xx reply comes for this many distinct "
        "recipient domains before any message is accepted (the server refuses everyone).",
    )
    bounce_address: str | None = Field(
        default=None,
        description="Base of the VERP envelope sender (bounces go to local+token@domain); "
        "default bounces@ the sender's domain.",
    )
    bounce_mailbox: str | None = Field(
        default=None,
        description='Where bounces and complaints arrive: "imap" (the PAPERPOST_IMAP_* '
        "settings), a Maildir folder or an mbox file; none: bounce processing is off.",
    )
    imap_host: str = Field(default="localhost", description="IMAP server for bounces.")
    imap_port: int = Field(default=993, description="IMAP port (993 = implicit TLS).")
    imap_security: Literal["tls", "starttls"] = Field(
        default="tls", description="tls (implicit, port 993) or starttls (port 143)."
    )
    imap_username: str | None = Field(default=None, description="IMAP login.")
    imap_password: SecretStr | None = Field(default=None, description="IMAP password.")
    imap_folder: str = Field(default="INBOX", description="IMAP folder to read bounces from.")
    imap_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="IMAP socket timeout in seconds.",
    )
    imap_ca_file: Path | None = Field(
        default=None, description="PEM file of CAs to trust for a private IMAP server."
    )
    soft_bounce_limit: int = Field(
        default=3, ge=1, description="Suppress an address after this many soft bounces..."
    )
    soft_bounce_days: int = Field(default=14, ge=1, description="...within this many days.")
    batch_size: int = Field(default=2000, ge=1, description="Subscribers per flow task.")
    dask_address: str | None = Field(
        default=None,
        description='Run flow batches on Dask: "local" (a local cluster per run) or a '
        "scheduler address like tcp://10.0.0.5:8786.",
    )

    def __init__(self, **values: Any) -> None:
        unreadable = _unreadable_lines(values.get("_env_file", self.model_config.get("env_file")))
        if unreadable:  # python-dotenv would skip them with a warning: the defaults would rule
            raise ConfigError(unreadable)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError([_explain(type(self), e) for e in exc.errors()]) from None
        except SettingsError as exc:
            raise ConfigError([_explain_source(type(self), exc)]) from None

    @field_validator("sender", "bounce_address")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        """One address on one line (it goes into every digest's From: and envelope)."""
        if value is None:
            return value
        _, address = parseaddr(value)
        if (
            _CONTROL.search(value)
            or len(getaddresses([value])) != 1  # "a@x.org, b@y.org" is two From addresses
            or not address.isascii()
            or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address)
        ):
            raise ValueError(
                'one email address on one line, with an ASCII domain, like "paperpost '
                '<digest@example.org>"'
            )
        return value

    @field_validator("smtp_username", "smtp_password", "imap_username", "imap_password")
    @classmethod
    def _ascii_login(cls, value: str | SecretStr | None) -> str | SecretStr | None:
        """smtplib (AUTH PLAIN/LOGIN) and imaplib (LOGIN) send logins as ASCII: any other
        character failed at send time (every digest marked failed, or the run crashed)."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is not None and not text.isascii():
            raise ValueError(
                "ASCII letters, digits and punctuation only: SMTP AUTH and IMAP LOGIN as "
                "paperpost sends them cannot carry other characters; set a login of ASCII "
                "characters on the server"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str | None) -> str | None:
        """SQLite or PostgreSQL (psycopg), the two the store is built and tested for: any
        other URL failed deep inside SQLAlchemy (``mysql://``: a 40-line traceback ending in
        ``No module named 'MySQLdb'``, exit 1)."""
        if value is None:
            return value
        scheme = re.match(r"([A-Za-z0-9+.-]+)://", value)
        if scheme is None or scheme[1].lower() not in SUPPORTED_DATABASES:
            given = f"{scheme[1]} is not supported" if scheme else "this is not a URL"
            raise ValueError(
                f"a sqlite:///path/to/file.db or postgresql+psycopg://user:password@host/db "
                f"URL ({given}: paperpost runs on SQLite and PostgreSQL)"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _https_only(cls, value: str | None) -> str | None:
        """A scheme, a host and an optional path: links are built as ``<base>/unsubscribe/...``
        and go into List-Unsubscribe as they are, so nothing may follow the path."""
        if value is None:
            return value
        try:
            parts = urlsplit(value) if value.isascii() else None
        except ValueError:  # an unbalanced [ in the host
            parts = None
        if (
            parts is None
            or parts.scheme not in {"https", "http"}
            or not value.startswith(("https://", "http://"))
            or not parts.hostname
            or parts.username is not None
            or "?" in value
            or "#" in value
            or not re.fullmatch(r"[A-Za-z0-9._~:/%!$&()*+,;=@\[\]-]+", value)
        ):
            raise ValueError(
                "an https:// URL (or http:// for testing): a host and an optional path, with "
                "no query (?), fragment (#), login, quotes, angle brackets or spaces"
            )
        return value.rstrip("/")

    def require_own_key(self, purpose: str) -> None:
        """Refuse the public development key (or a short one) for ``purpose``."""
        key = self.secret_key.get_secret_value()
        if key == DEVELOPMENT_KEY or len(key) < MIN_KEY_CHARS:
            problem = "is not set" if key == DEVELOPMENT_KEY else "is too short"
            raise ConfigError(
                [
                    f"PAPERPOST_SECRET_KEY {problem}: {purpose} needs a key of your own (links "
                    "signed with the public development key can be forged by anyone); generate "
                    f"one with {GENERATE_KEY} and set PAPERPOST_SECRET_KEY to it"
                ]
            )

    @property
    def db_url(self) -> str:
        """The database URL in effect."""
        return self.database_url or f"sqlite:///{self.state_dir / 'paperpost.db'}"


# URL schemes the store runs on (``postgresql`` is psycopg in SQLAlchemy 2.1)
SUPPORTED_DATABASES = {"sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg"}
_EXPECTED = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "int_type": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "greater_than": "a number greater than {gt}",
    "greater_than_equal": "a number of at least {ge}",
    "less_than": "a number below {lt}",
    "less_than_equal": "a number of at most {le}",
    "literal_error": "one of {expected}",
}
_EXAMPLE_BY_TYPE = {"int": "10", "float": "1.5", "bool": "true"}
_PASSWORD_IN_URL = re.compile(r"(://[^/:@]*:)[^@/]*@")


def _explain(model: type[BaseSettings], error: Any) -> str:
    """``PAPERPOST_X=value: expected ..., e.g. PAPERPOST_X=example`` for one pydantic error."""
    name = str(error["loc"][0]) if error["loc"] else "?"
    ctx = {k: (v if isinstance(v, str) else repr(v)) for k, v in (error.get("ctx") or {}).items()}
    template = _EXPECTED.get(error["type"])
    if template:
        expected = template.format(**ctx)
    else:
        expected = str(error["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
    return _line(model, name, error.get("input"), expected)


def _unreadable_lines(env_file: object) -> list[str]:
    """One error per line of the .env file(s) that python-dotenv cannot parse (it skips them
    with a warning, so the variable's default would be used: a new empty database, the
    development sender). The line's value is not shown: it may be a secret."""
    files = env_file if isinstance(env_file, list | tuple) else [env_file]
    problems = []
    for each in files:
        path = Path(str(each)).expanduser() if each else None
        if path is None or not path.is_file():
            continue
        with path.open(encoding="utf-8", errors="replace") as stream:
            for binding in parse_stream(stream):
                if not binding.error:
                    continue
                name = _ENV_KEY.match(binding.original.string)
                what = f"the line for {name[1]}" if name else "this line"
                problems.append(
                    f"{path.resolve()}:{binding.original.line}: cannot read {what}: a quoted value "
                    "must end the line (or be followed by a space and a # comment), and a line "
                    'is KEY=value; write KEY=value, KEY="value" or KEY=\'value with "quotes"\' '
                    "(e.g. PAPERPOST_SENDER='\"Lab Papers\" <papers@lab.org>')"
                )
    return problems


def _explain_source(model: type[BaseSettings], exc: SettingsError) -> str:
    found = re.search(r'field "(\w+)"', str(exc))
    if not found:
        return f"configuration: {exc}"
    return _line(model, found.group(1), None, "a value in the form below")


def _line(model: type[BaseSettings], name: str, value: Any, expected: str) -> str:
    variable = f"PAPERPOST_{name.upper()}"
    field = model.model_fields.get(name)
    if field is None:
        return f"{variable}: expected {expected}"
    if value is None:
        shown = ""
    elif "SecretStr" in str(field.annotation):
        shown = "=<hidden>"
    else:
        text = _PASSWORD_IN_URL.sub(r"\1***@", str(value))
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)  # one line
        shown = "=" + (text if len(text) <= 60 else text[:57] + "...")
    if field.examples:
        example = str(field.examples[0])
    elif field.default is not None and not isinstance(field.default, SecretStr):
        example = str(field.default).lower() if isinstance(field.default, bool) else field.default
    else:
        kind = re.search(r"\b(int|float|bool)\b", str(field.annotation))
        example = _EXAMPLE_BY_TYPE[kind.group(1)] if kind else "..."
    return f"{variable}{shown}: expected {expected}, e.g. {variable}={example}"
