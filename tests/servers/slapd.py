"""A private, real OpenLDAP server (slapd) for the test suite.

Why a real server: the directory connectors depend on behaviour a mock would not
reproduce faithfully (paged results, size limits, entryUUID, TLS, syncrepl). Each
instance lives in its own work directory with its own ``cn=config``, one ``back_mdb``
database per suffix (one suffix per hospital), LDAP + LDAPS listeners on free
127.0.0.1 ports, and three accounts per suffix:

* ``cn=admin,<suffix>``: the rootDN (full write access), password ``root_password``;
* ``cn=ght-sync,<suffix>``: read-only service account, password ``reader_password``;
* ``cn=limited,<suffix>``: read-only too, but capped at ``limited_size`` entries per
  search, in total across pages, to provoke ``sizeLimitExceeded`` (result code 4).

Data is bulk-loaded with ``slapadd -q`` *before* slapd starts (fast: 100,000 entries
in seconds). Requires the Debian packages ``slapd ldap-utils``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from .certs import make_test_pki
from .logscan import SECRETS

__all__ = [
    "SlapdError",
    "SlapdFactory",
    "SlapdServer",
    "Suffix",
    "free_port",
    "ldif_entry",
    "ssha",
    "start_slapd",
]

APT_HINT = "install it with: DEBIAN_FRONTEND=noninteractive apt-get install -y slapd ldap-utils"
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/usr/local/libexec", "/sbin")
MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib/openldap", "/usr/lib64/openldap", "/usr/libexec/openldap")
SCHEMA_DIRS = ("/etc/ldap/schema", "/etc/openldap/schema", "/usr/local/etc/openldap/schema")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
INDEXES = ("objectClass eq", "entryUUID eq", "uid eq", "entryCSN eq")
DB_MAX_SIZE = 4 * 1024**3  # room for well over 200,000 entries; the file itself stays sparse
START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0

_LIVE: weakref.WeakSet[SlapdServer] = weakref.WeakSet()
SlapdFactory = Callable[..., "SlapdServer"]  # type of the `slapd_factory` fixture


class SlapdError(RuntimeError):
    """slapd or slapadd failed; the message includes the relevant log."""


@dataclass
class Suffix:
    """One naming context (one hospital) served by its own mdb database.

    ``ldif`` holds the entries to bulk-load, suffix entry included. When it is None
    the fixture creates the suffix entry and ``ou=people`` itself.
    """

    suffix: str
    ldif: Path | None = None


# --------------------------------------------------------------------------- helpers


def ssha(password: str) -> str:
    """Hash ``password`` as ``{SSHA}`` (what ``slappasswd`` produces), without a subprocess."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


_SAFE_VALUE = re.compile(
    r"^[\x01-\x09\x0b-\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b-\x0c\x0e-\x7f]*$"
)


def ldif_entry(dn: str, attributes: Mapping[str, str | bytes | Iterable[str | bytes]]) -> str:
    """Render one LDIF record (RFC 2849), base64-encoding values that need it.

    Ends with a blank line so that records can simply be concatenated.
    """
    lines = [_ldif_line("dn", dn)]
    for name, values in attributes.items():
        if isinstance(values, str | bytes):
            values = [values]
        lines.extend(_ldif_line(name, value) for value in values)
    return "\n".join(lines) + "\n\n"


def _ldif_line(name: str, value: str | bytes) -> str:
    """One ``name: value`` line, or ``name:: base64`` for unsafe or binary values."""
    if isinstance(value, str) and (value == "" or (_SAFE_VALUE.match(value) and not value.endswith(" "))):
        return f"{name}: {value}"
    raw = value.encode() if isinstance(value, str) else value
    return f"{name}:: {base64.b64encode(raw).decode()}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it when binding to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _find_program(name: str) -> str:
    """Locate a slapd tool in PATH or the usual sbin directories (not always in root's PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    found = shutil.which(name, path=path)
    if found is None:
        raise SlapdError(f"OpenLDAP program {name!r} not found; {APT_HINT}")
    return found


def _find_dir(candidates: Sequence[str], marker: str, what: str) -> Path:
    """The first candidate directory that contains ``marker``."""
    for candidate in candidates:
        if (Path(candidate) / marker).exists():
            return Path(candidate)
    raise SlapdError(f"OpenLDAP {what} not found in {', '.join(candidates)}; {APT_HINT}")


def _first_rdn(dn: str) -> tuple[str, str]:
    """Attribute and value of the first RDN of a simple DN like ``dc=ch-avignon,dc=fr``."""
    rdn = dn.split(",", 1)[0]
    attr, _, value = rdn.partition("=")
    return attr.strip(), value.strip()


def _suffix_entries(suffix: str) -> str:
    """LDIF for a suffix entry and its ``ou=people`` container, used when no LDIF is given."""
    attr, value = _first_rdn(suffix)
    kind = attr.lower()
    if kind == "dc":
        top: dict[str, str | list[str]] = {"objectClass": ["top", "dcObject", "organization"], "dc": value}
        top["o"] = value
    elif kind == "o":
        top = {"objectClass": ["top", "organization"], "o": value}
    elif kind == "ou":
        top = {"objectClass": ["top", "organizationalUnit"], "ou": value}
    else:
        raise ValueError(f"cannot build a suffix entry for {suffix!r}: give an LDIF file")
    people = {"objectClass": ["top", "organizationalUnit"], "ou": "people"}
    return ldif_entry(suffix, top) + ldif_entry(f"ou=people,{suffix}", people)


def _set_parent_death_signal() -> None:
    """In the child: get SIGTERM if the test process dies, so no slapd outlives a crashed run."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


# Anonymous simple bind, message id 1: 30 0c | 02 01 01 | 60 07 (02 01 03, 04 00, 80 00)
_ANONYMOUS_BIND = bytes.fromhex("300c020101600702010304008000")


def _answers_ldap(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when an LDAP server on host:port answers an anonymous bind (not merely accepts TCP)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_ANONYMOUS_BIND)
            return sock.recv(64)[:1] == b"\x30"
    except OSError:
        return False


def _accepts_tcp(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something listens on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- server


class SlapdServer:
    """A running private slapd; see the module docstring for the accounts it offers."""

    def __init__(
        self,
        workdir: Path,
        suffixes: list[str],
        *,
        ca_file: Path,
        root_password: str,
        reader_password: str,
        limited_size: int,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = 0
        self.ldaps_port = 0
        self.ca_file = ca_file
        self.suffixes = list(suffixes)
        self.root_password = root_password
        self.reader_password = reader_password
        self.limited_size = limited_size
        self.config_dir = workdir / "slapd.d"
        self.log_file = workdir / "slapd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._paused = False

    # ----------------------------------------------------------------- addresses

    @property
    def url(self) -> str:
        """Plain LDAP URL (StartTLS works on it too)."""
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """LDAP over TLS URL."""
        return f"ldaps://{self.host}:{self.ldaps_port}"

    @property
    def config_dn(self) -> str:
        """rootDN of ``cn=config`` (password ``root_password``), to change the config live."""
        return "cn=admin,cn=config"

    def root_dn(self, suffix: str) -> str:
        """rootDN of ``suffix``: full write access, password ``root_password``."""
        return f"cn=admin,{self._check(suffix)}"

    def reader_dn(self, suffix: str) -> str:
        """Read-only service account of ``suffix`` (reads everything, entryUUID included)."""
        return f"cn=ght-sync,{self._check(suffix)}"

    def limited_dn(self, suffix: str) -> str:
        """Read-only account whose searches stop after ``limited_size`` entries (code 4)."""
        return f"cn=limited,{self._check(suffix)}"

    def _check(self, suffix: str) -> str:
        if suffix not in self.suffixes:
            raise KeyError(f"{suffix!r} is not served by this slapd (serves {self.suffixes})")
        return suffix

    # ----------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        """PID of the running slapd, None when stopped."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """True while the slapd process is alive (paused counts as running)."""
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start slapd (again) on the same ports and data, and wait until it answers LDAP."""
        if self.running:
            return
        slapd = _find_program("slapd")
        listeners = f"ldap://{self.host}:{self.port}/ ldaps://{self.host}:{self.ldaps_port}/"
        self._log = self.log_file.open("ab")
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} starting slapd -h {listeners}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            [slapd, "-d", os.environ.get("SLAPD_DEBUG", "0"), "-F", str(self.config_dir), "-h", listeners],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_set_parent_death_signal,
        )
        self._paused = False
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self._close_log()
                raise SlapdError(f"slapd exited with code {self._process.returncode}\n{self.log_tail()}")
            if _answers_ldap(self.host, self.port) and _accepts_tcp(self.host, self.ldaps_port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise SlapdError(f"slapd did not answer on {self.url} within {timeout} s\n{self.log_tail()}")
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM slapd and wait until it has exited (up to ~1.5 s with clients connected)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            if self._paused:
                process.send_signal(signal.SIGCONT)  # a stopped process never handles SIGTERM
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._paused = False
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP slapd: the kernel still accepts TCP connections but nothing is answered."""
        if not self.running or self._process is None:
            raise SlapdError("slapd is not running")
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT slapd after :meth:`pause`."""
        if self._process is not None and self.running:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Context manager: pause on entry, resume on exit."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def log_tail(self, lines: int = 40) -> str:
        """The end of slapd's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no slapd log)"
        return "--- slapd log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SlapdServer {self.url} {self.suffixes} {state}>"


@atexit.register
def _stop_all() -> None:
    """Last resort: never leave a slapd behind when the interpreter exits."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


# --------------------------------------------------------------------------- setup


def start_slapd(
    workdir: Path,
    suffixes: Sequence[Suffix | str],
    *,
    syncprov: bool = True,
    limited_size: int = 5,
    host: str = "127.0.0.1",
) -> SlapdServer:
    """Build a private slapd in ``workdir``, bulk-load each suffix, start it and return it.

    ``workdir`` must be empty or missing. ``syncprov`` adds the RFC 4533 provider overlay
    to every database. The caller stops the server (or uses it as a context manager).
    """
    specs = [s if isinstance(s, Suffix) else Suffix(s) for s in suffixes]
    if not specs:
        raise ValueError("slapd needs at least one suffix")
    names = [s.suffix for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate suffixes: {names}")
    for program in ("slapd", "slapadd"):
        _find_program(program)
    module_dir = _find_dir(MODULE_DIRS, "back_mdb.la", "module directory (back_mdb)")
    schema_dir = _find_dir(SCHEMA_DIRS, "core.ldif", "schema directory")

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise SlapdError(f"{workdir} is not empty")
    pki = make_test_pki(workdir / "tls")
    server = SlapdServer(
        workdir,
        names,
        ca_file=pki.ca_cert,
        root_password=secrets.token_urlsafe(16),
        reader_password=secrets.token_urlsafe(16),
        limited_size=limited_size,
        host=host,
    )
    SECRETS.add(server.root_password)  # never to be found in a log (tests/test_zz_log_secrets.py)
    SECRETS.add(server.reader_password)

    config = _config_ldif(
        server,
        module_dir=module_dir,
        schema_dir=schema_dir,
        tls=(pki.ca_cert, pki.server_cert, pki.server_key),
        syncprov=syncprov,
    )
    (workdir / "config.ldif").write_text(config)
    server.config_dir.mkdir()
    for index in range(len(specs)):
        (workdir / f"db{index + 1}").mkdir()
    _slapadd(server, ["-n0", "-l", str(workdir / "config.ldif")])

    for spec in specs:
        _load_suffix(server, spec, syncprov=syncprov)

    # Ports are only free "a moment ago": retry with new ones if another process won the race.
    for attempt in range(3):
        server.port, server.ldaps_port = free_port(host), free_port(host)
        while server.ldaps_port == server.port:
            server.ldaps_port = free_port(host)
        try:
            server.start()
            return server
        except SlapdError as error:
            if attempt == 2 or "Address already in use" not in str(error):
                raise
    raise AssertionError("unreachable")


def _config_ldif(
    server: SlapdServer,
    *,
    module_dir: Path,
    schema_dir: Path,
    tls: tuple[Path, Path, Path],
    syncprov: bool,
) -> str:
    """The whole ``cn=config`` tree as LDIF, for ``slapadd -n0``."""
    ca, cert, key = tls
    workdir = server.workdir
    parts = [
        ldif_entry(
            "cn=config",
            {
                "objectClass": "olcGlobal",
                "cn": "config",
                "olcPidFile": str(workdir / "slapd.pid"),
                "olcArgsFile": str(workdir / "slapd.args"),
                "olcLogLevel": "none",  # nothing to syslog; see SLAPD_DEBUG for the log file
                "olcToolThreads": "2",
                "olcTLSCACertificateFile": str(ca),
                "olcTLSCertificateFile": str(cert),
                "olcTLSCertificateKeyFile": str(key),
            },
        ),
        ldif_entry(
            "cn=module{0},cn=config",
            {
                "objectClass": "olcModuleList",
                "cn": "module{0}",
                "olcModulePath": str(module_dir),
                "olcModuleLoad": ["{0}back_mdb", *(["{1}syncprov"] if syncprov else [])],
            },
        ),
        ldif_entry("cn=schema,cn=config", {"objectClass": "olcSchemaConfig", "cn": "schema"}),
    ]
    parts += [(schema_dir / f"{name}.ldif").read_text().strip() + "\n\n" for name in SCHEMAS]
    parts.append(
        ldif_entry(
            "olcDatabase={-1}frontend,cn=config",
            {
                "objectClass": ["olcDatabaseConfig", "olcFrontendConfig"],
                "olcDatabase": "{-1}frontend",
                "olcSizeLimit": "unlimited",
            },
        )
    )
    parts.append(
        ldif_entry(
            "olcDatabase={0}config,cn=config",
            {
                "objectClass": "olcDatabaseConfig",
                "olcDatabase": "{0}config",
                "olcRootDN": server.config_dn,
                "olcRootPW": ssha(server.root_password),
                "olcAccess": "{0}to * by * none",
            },
        )
    )
    for index, suffix in enumerate(server.suffixes, start=1):
        database = f"olcDatabase={{{index}}}mdb,cn=config"
        reader, limited = server.reader_dn(suffix), server.limited_dn(suffix)
        cap = server.limited_size
        parts.append(
            ldif_entry(
                database,
                {
                    "objectClass": ["olcDatabaseConfig", "olcMdbConfig"],
                    "olcDatabase": f"{{{index}}}mdb",
                    "olcSuffix": suffix,
                    "olcDbDirectory": str(workdir / f"db{index}"),
                    "olcDbMaxSize": str(DB_MAX_SIZE),
                    "olcDbNoSync": "TRUE",
                    "olcRootDN": server.root_dn(suffix),
                    "olcRootPW": ssha(server.root_password),
                    "olcSizeLimit": "unlimited",
                    "olcLimits": [
                        f'{{0}}dn.exact="{limited}" size.soft={cap} size.hard={cap} size.prtotal={cap}',
                        "{1}* size.prtotal=unlimited",
                    ],
                    "olcDbIndex": list(INDEXES),
                    "olcAccess": [
                        f'{{0}}to * by dn.exact="{reader}" read by dn.exact="{limited}" read'
                        " by anonymous auth by * none",
                    ],
                },
            )
        )
        if syncprov:
            parts.append(
                ldif_entry(
                    f"olcOverlay={{0}}syncprov,{database}",
                    {
                        "objectClass": ["olcOverlayConfig", "olcSyncProvConfig"],
                        "olcOverlay": "{0}syncprov",
                        "olcSpCheckpoint": "100 10",
                        "olcSpSessionlog": "10000",
                    },
                )
            )
    return "".join(parts)


def _service_entries(server: SlapdServer, suffix: str) -> str:
    """LDIF for the read-only service accounts of ``suffix``."""
    accounts = [
        (server.reader_dn(suffix), "ght-sync", "read-only synchronisation account (tests)"),
        (server.limited_dn(suffix), "limited", "read-only account with a small size limit (tests)"),
    ]
    return "".join(
        ldif_entry(
            dn,
            {
                "objectClass": ["organizationalRole", "simpleSecurityObject"],
                "cn": cn,
                "description": description,
                "userPassword": ssha(server.reader_password),
            },
        )
        for dn, cn, description in accounts
    )


def _load_suffix(server: SlapdServer, spec: Suffix, *, syncprov: bool) -> None:
    """Bulk-load one suffix with a single ``slapadd -q``: the caller's LDIF, then the accounts."""
    head = _suffix_entries(spec.suffix) if spec.ldif is None else None
    tail = _service_entries(server, spec.suffix)
    args = ["-q", "-b", spec.suffix, *(["-w"] if syncprov else [])]

    def feed(stdin: IO[bytes]) -> None:
        if head is not None:
            stdin.write(head.encode())
        else:
            assert spec.ldif is not None
            with Path(spec.ldif).open("rb") as source:
                shutil.copyfileobj(source, stdin, 1024 * 1024)
            stdin.write(b"\n\n")
        stdin.write(tail.encode())

    _slapadd(server, args, feed=feed)


def _slapadd(server: SlapdServer, args: list[str], feed: Callable[[IO[bytes]], None] | None = None) -> None:
    """Run slapadd against the instance's ``cn=config``; raise with its output on failure."""
    command = [_find_program("slapadd"), "-F", str(server.config_dir), *args]
    with (server.workdir / "slapadd.log").open("ab+") as log:
        start = log.tell()
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if feed is not None:
            assert process.stdin is not None
            try:
                feed(process.stdin)
            except BrokenPipeError:
                pass  # slapadd gave up early; its exit code and log tell why
            finally:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
        code = process.wait()
        if code != 0:
            log.seek(start)
            output = log.read().decode(errors="replace")
            raise SlapdError(f"{' '.join(command)} failed with code {code}:\n{output[-4000:]}")
