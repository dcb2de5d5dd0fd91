"""A private, real Samba Active Directory domain controller for the test suite.

Why a real DC: what the Active Directory connector depends on (objectGUID and objectSid, userAccountControl,
accountExpires, LDAP_MATCHING_RULE_IN_CHAIN, uSNChanged and highestCommittedUSN, tombstones under the
Show Deleted control, paged searches) is AD's behaviour, which no mock reproduces faithfully.

Each DC is provisioned into its own work directory (``samba-tool domain provision``, about 4 s) and runs
in the foreground (``samba -i -M single``). AD's ports are fixed (389, 636, 88...), so each DC listens
on a loopback address of its own, 127.0.0.2, 127.0.0.3..., claimed with a lock file so that concurrent
test runs never pick the same one. LDAPS uses a throw-away CA (``ca_file``) whose certificate names the
DC's address; simple binds on plain LDAP are allowed too (``ldap server require strong auth = no``).

Accounts: ``Administrator`` (password ``admin_password``) and ``ght-sync`` (``reader_password``), an
ordinary domain user, which is all a sync needs (AD lets authenticated users read accounts and groups),
given List Contents and Read Property on ``CN=Deleted Objects`` as a delta needs to see tombstones (what
``dsacls "CN=Deleted Objects,..." /G DOMAIN\\ght-sync:LCRP`` does on Windows).

Samba runs a domain controller only as root: `samba_unavailable()` says why tests cannot run here
(the tests then skip, with that reason). Requires the Debian packages in `APT_PACKAGES`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import ldap3

from .certs import make_test_pki
from .logscan import SECRETS
from .slapd import _answers_ldap, _set_parent_death_signal

__all__ = [
    "APT_PACKAGES",
    "UF_ACCOUNTDISABLE",
    "UF_DONT_EXPIRE_PASSWD",
    "SambaDC",
    "SambaError",
    "samba_unavailable",
    "start_samba_dc",
]

APT_PACKAGES = (
    "samba-ad-dc samba samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind ldb-tools smbclient"
)
APT_HINT = f"install it with: DEBIAN_FRONTEND=noninteractive apt-get install -y {APT_PACKAGES}"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
LOCK_DIR = Path(tempfile.gettempdir())

UF_ACCOUNTDISABLE = 0x0002
UF_PASSWD_NOTREQD = 0x0020
UF_NORMAL_ACCOUNT = 0x0200
UF_DONT_EXPIRE_PASSWD = 0x10000

_LIVE: weakref.WeakSet[SambaDC] = weakref.WeakSet()


class SambaError(RuntimeError):
    """samba-tool or samba failed; the message includes the relevant output."""


def _program(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def samba_unavailable() -> str | None:
    """Why a Samba DC cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return (
            "the Samba AD DC tests need root (samba runs a domain controller only as root): "
            "run the suite as root, as `make test` in CI does"
        )
    missing = [p for p in ("samba", "samba-tool") if _program(p) is None]
    if missing:
        return f"Samba is not installed ({', '.join(missing)} not found); {APT_HINT}"
    return None


def _claim_address() -> tuple[str, IO[str]]:
    """A loopback address no other DC (of this or another test run) uses, and the lock that holds it."""
    for n in range(2, 255):
        host = f"127.0.0.{n}"
        handle = (LOCK_DIR / f"ght-samba-{host}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        if _answers_ldap(host, 389, timeout=0.2):  # something else already serves LDAP there
            handle.close()
            continue
        return host, handle
    raise SambaError("no free loopback address in 127.0.0.2-254 for a Samba DC")


# Run by Samba's own Python (python3-samba): adds the ACEs of an SDDL to the DACL of the Deleted Objects
# container, or with "-" removes every ACE for the account, as `dsacls /G` and `/R` do on Windows (the
# container only appears under the Show Deleted control, so `samba-tool dsacl set` cannot find it).
_GRANT_ON_DELETED_OBJECTS = """
import sys
import ldb
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_pack, ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB

conf, url, account, sddl = sys.argv[1:5]
lp = LoadParm()
lp.load(conf)
db = SamDB(url=url, session_info=system_session(), lp=lp)
base = db.get_default_basedn()
raw = db.search(base, ldb.SCOPE_SUBTREE, "(sAMAccountName=%s)" % account, ["objectSid"])[0]["objectSid"][0]
sid = str(ndr_unpack(security.dom_sid, raw))
dn = "CN=Deleted Objects,%s" % base
controls = ["show_deleted:1", "sd_flags:1:4"]
found = db.search(dn, ldb.SCOPE_BASE, attrs=["nTSecurityDescriptor"], controls=controls)
descriptor = ndr_unpack(security.descriptor, found[0]["nTSecurityDescriptor"][0])
if sddl == "-":
    for ace in list(descriptor.dacl.aces):
        if str(ace.trustee) == sid:
            descriptor.dacl_del_ace(ace)
else:
    domain = security.dom_sid(db.get_domain_sid())
    for ace in security.descriptor.from_sddl("D:" + sddl.replace("SID", sid), domain).dacl.aces:
        descriptor.dacl_add(ace)
message = ldb.Message()
message.dn = ldb.Dn(db, dn)
message["nTSecurityDescriptor"] = ldb.MessageElement(
    ndr_pack(descriptor), ldb.FLAG_MOD_REPLACE, "nTSecurityDescriptor"
)
db.modify(message, controls=controls)
"""
SAMBA_PYTHON = "/usr/bin/python3"  # the interpreter python3-samba is built for


def _filetime(moment: datetime) -> int:
    return int((moment - datetime(1601, 1, 1, tzinfo=UTC)).total_seconds() * 10_000_000)


class SambaDC:
    """A running private Samba AD DC; see the module docstring for its accounts."""

    def __init__(self, workdir: Path, realm: str, host: str, address_lock: IO[str]) -> None:
        self.workdir = workdir
        self.realm = realm.upper()
        self.domain = self.realm.split(".")[0][:15]
        self.host = host
        self.admin_password = f"Adm-{secrets.token_urlsafe(12)}-9a"
        self.reader_password = f"Sync-{secrets.token_urlsafe(12)}-7b"
        SECRETS.add(self.admin_password)  # never to be found in a log (tests/test_zz_log_secrets.py)
        SECRETS.add(self.reader_password)
        self.ca_file = workdir / "tls" / "ca.pem"
        self.conf = workdir / "etc" / "smb.conf"
        self.log_file = workdir / "samba.log"
        self._address_lock: IO[str] | None = address_lock
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ----------------------------------------------------------------- names

    @property
    def base_dn(self) -> str:
        """The domain's root, `DC=chnimes,DC=test` for realm CHNIMES.TEST."""
        return ",".join(f"DC={part}" for part in self.realm.lower().split("."))

    @property
    def url(self) -> str:
        return f"ldap://{self.host}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}"

    @property
    def reader(self) -> str:
        """The sync account's bind name (a UPN: AD accepts it for a simple bind)."""
        return f"ght-sync@{self.realm.lower()}"

    @property
    def reader_password_file(self) -> Path:
        """A file holding the sync account's password, as a mapping names it: {file: PATH}."""
        path = self.workdir / "ght-sync.password"
        if not path.exists():
            path.write_text(self.reader_password + "\n")
            path.chmod(0o600)
        return path

    @property
    def admin_name(self) -> str:
        return f"Administrator@{self.realm.lower()}"

    # ----------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start samba and wait until it answers LDAP on its address."""
        if self.running:
            return
        samba = _program("samba")
        assert samba is not None
        self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [samba, "-i", "-M", "single", "-s", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends every task it forked
            preexec_fn=_set_parent_death_signal,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while not _answers_ldap(self.host, 389):
            if self._process.poll() is not None:
                raise SambaError(f"samba exited with code {self._process.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise SambaError(f"samba did not answer on {self.url} within {timeout} s\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop samba (and every process it forked) and wait until it has exited."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop the DC and give its loopback address back."""
        self.stop()
        if self._address_lock is not None:
            self._address_lock.close()
            self._address_lock = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no samba log)"
        return "--- samba log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SambaDC {self.realm} on {self.url} {'running' if self.running else 'stopped'}>"

    # ----------------------------------------------------------------- writing, as Administrator

    def admin(self) -> ldap3.Connection:
        """A connection bound as Administrator (close it, or use it in a `with`)."""
        server = ldap3.Server(self.url, get_info=ldap3.NONE)
        return ldap3.Connection(
            server, self.admin_name, self.admin_password, auto_bind=True, raise_exceptions=True
        )

    def add_ou(self, name: str, parent: str | None = None) -> str:
        dn = f"OU={name},{parent or self.base_dn}"
        with self.admin() as conn:
            conn.add(dn, ["top", "organizationalUnit"])
        return dn

    def add_user(
        self,
        parent: str,
        sam: str,
        given: str,
        family: str,
        *,
        disabled: bool = False,
        expires: datetime | int | None = None,
        password_never_expires: bool = False,
        **attributes: Any,
    ) -> str:
        """Add a user without a password (PASSWD_NOTREQD: fast, and enough to be read); its DN."""
        dn = f"CN={given} {family},{parent}"
        uac = UF_NORMAL_ACCOUNT | UF_PASSWD_NOTREQD
        uac |= UF_ACCOUNTDISABLE if disabled else 0
        uac |= UF_DONT_EXPIRE_PASSWD if password_never_expires else 0
        values: dict[str, Any] = {
            "sAMAccountName": sam,
            "userPrincipalName": f"{sam}@{self.realm.lower()}",
            "givenName": given,
            "sn": family,
            "displayName": f"{given} {family}",
            "userAccountControl": str(uac),
            **attributes,
        }
        if expires is not None:
            values["accountExpires"] = str(expires if isinstance(expires, int) else _filetime(expires))
        with self.admin() as conn:
            conn.add(dn, ["top", "person", "organizationalPerson", "user"], values)
        return dn

    def add_users(self, parent: str, users: Iterable[Mapping[str, Any]]) -> int:
        """Add many users on one connection (about 200 per second); each mapping as `add_user`'s."""
        count = 0
        with self.admin() as conn:
            for user in users:
                attributes = dict(user)
                sam, given, family = attributes.pop("sam"), attributes.pop("given"), attributes.pop("family")
                values = {
                    "sAMAccountName": sam,
                    "userPrincipalName": f"{sam}@{self.realm.lower()}",
                    "givenName": given,
                    "sn": family,
                    "userAccountControl": str(UF_NORMAL_ACCOUNT | UF_PASSWD_NOTREQD),
                    **attributes,
                }
                conn.add(f"CN={sam},{parent}", ["top", "person", "organizationalPerson", "user"], values)
                count += 1
        return count

    def add_group(self, parent: str, name: str, members: Iterable[str] = ()) -> str:
        dn = f"CN={name},{parent}"
        values: dict[str, Any] = {"sAMAccountName": name}
        if members:
            values["member"] = list(members)
        with self.admin() as conn:
            conn.add(dn, ["top", "group"], values)
        return dn

    def add_member(self, group: str, member: str) -> None:
        self.modify(group, member=[(ldap3.MODIFY_ADD, [member])])

    def remove_member(self, group: str, member: str) -> None:
        self.modify(group, member=[(ldap3.MODIFY_DELETE, [member])])

    def modify(self, dn: str, **changes: list[tuple[str, list[Any]]]) -> None:
        with self.admin() as conn:
            conn.modify(dn, changes)

    def replace(self, dn: str, **values: Any) -> None:
        """Replace attribute values (``replace(dn, sn="Martin", title=["a", "b"])``)."""
        self.modify(
            dn, **{k: [(ldap3.MODIFY_REPLACE, v if isinstance(v, list) else [v])] for k, v in values.items()}
        )

    def set_disabled(self, dn: str, disabled: bool) -> None:
        with self.admin() as conn:
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["userAccountControl"])
            uac = int(conn.entries[0].userAccountControl.value)
            uac = uac | UF_ACCOUNTDISABLE if disabled else uac & ~UF_ACCOUNTDISABLE
            conn.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(uac)])]})

    def set_expires(self, dn: str, expires: datetime | int) -> None:
        value = expires if isinstance(expires, int) else _filetime(expires)
        self.replace(dn, accountExpires=str(value))

    def set_password(self, dn: str, password: str) -> None:
        """Give a user a password (unicodePwd: AD takes it only over an encrypted connection, LDAPS here)."""
        SECRETS.add(password)
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file))
        server = ldap3.Server(self.ldaps_url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
        with ldap3.Connection(
            server, self.admin_name, self.admin_password, auto_bind=True, raise_exceptions=True
        ) as conn:
            quoted = f'"{password}"'.encode("utf-16-le")
            conn.modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [quoted])]})

    def move(self, dn: str, new_parent: str) -> str:
        rdn = dn.split(",", 1)[0]
        with self.admin() as conn:
            conn.modify_dn(dn, rdn, new_superior=new_parent)
        return f"{rdn},{new_parent}"

    def rename(self, dn: str, new_cn: str) -> str:
        with self.admin() as conn:
            conn.modify_dn(dn, f"CN={new_cn}")
        return f"CN={new_cn},{dn.split(',', 1)[1]}"

    def delete(self, dn: str) -> None:
        with self.admin() as conn:
            conn.delete(dn)

    def invocation_id(self) -> str:
        """The DC's invocationId (the identity of its database, which USNs are relative to)."""
        from directory_sync.connectors.active_directory import guid_text

        with self.admin() as conn:
            conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["dsServiceName"])
            service = conn.response[0]["attributes"]["dsServiceName"][0]
            conn.search(service, "(objectClass=*)", ldap3.BASE, attributes=["invocationId"])
            return guid_text(conn.response[0]["raw_attributes"]["invocationId"][0])

    def restore_from_backup(self) -> str:
        """What a restore from backup does to a DC's identity: stop it, give its database a new
        invocationId (its USNs are no longer comparable with anyone's), start it. The new id."""
        with self.admin() as conn:
            conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["dsServiceName"])
            service = conn.response[0]["attributes"]["dsServiceName"][0]
        new = uuid.uuid4()
        change = self.workdir / "new-invocation-id.ldif"
        value = base64.b64encode(new.bytes_le).decode()
        change.write_text(
            f"dn: {service}\nchangetype: modify\nreplace: invocationId\ninvocationId:: {value}\n"
        )
        self.stop()
        ldbmodify = _program("ldbmodify")
        if ldbmodify is None:
            raise SambaError(f"ldbmodify not found; {APT_HINT}")
        _run(
            [ldbmodify, "-H", str(self.workdir / "private" / "sam.ldb"), "--controls=relax:0", str(change)],
            "ldbmodify",
        )
        self.start()
        return str(new)

    def allow_reading_tombstones(self, allowed: bool) -> None:
        """Grant (or take back) ght-sync List Contents and Read Property on CN=Deleted Objects."""
        _run(
            [
                SAMBA_PYTHON,
                "-c",
                _GRANT_ON_DELETED_OBJECTS,
                str(self.conf),
                str(self.workdir / "private" / "sam.ldb"),
                "ght-sync",
                "(A;;LCRP;;;SID)" if allowed else "-",
            ],
            f"{'granting' if allowed else 'taking back'} ght-sync's List Contents and Read Property "
            "on CN=Deleted Objects",
        )

    def guid(self, dn: str) -> str:
        """The objectGUID of `dn`, in the connector's text form."""
        from directory_sync.connectors.active_directory import guid_text

        with self.admin() as conn:
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["objectGUID"])
            return guid_text(conn.response[0]["raw_attributes"]["objectGUID"][0])


@atexit.register
def _stop_all() -> None:
    """Last resort: never leave a samba behind when the interpreter exits."""
    for dc in list(_LIVE):
        with contextlib.suppress(Exception):
            dc.close()


# --------------------------------------------------------------------------- setup


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise SambaError(f"{what} failed with code {done.returncode}:\n{output}")


def start_samba_dc(workdir: Path, realm: str) -> SambaDC:
    """Provision a new domain `realm` (e.g. ``CHNIMES.TEST``) in `workdir`, start its DC, return it.

    The caller closes the DC (or uses it as a context manager). Raises SambaError; check
    `samba_unavailable()` first to skip cleanly where Samba cannot run.
    """
    reason = samba_unavailable()
    if reason:
        raise SambaError(reason)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise SambaError(f"{workdir} is not empty")
    host, lock = _claim_address()
    dc = SambaDC(workdir, realm, host, lock)
    try:
        hostname = f"dc{host.rsplit('.', 1)[1]}"
        fqdn = f"{hostname}.{dc.realm.lower()}"
        pki = make_test_pki(workdir / "tls", dns_names=(fqdn,), ip_addresses=(host,), common_name=fqdn)
        samba_tool = _program("samba-tool")
        assert samba_tool is not None
        options = {
            "interfaces": f"{host}/8",  # with /8: Samba finds no interface for a bare address
            "bind interfaces only": "yes",
            "pid directory": str(workdir / "run"),
            "log file": str(workdir / "log.%m"),
            "server services": "ldap cldap rpc kdc drepl",
            "tls enabled": "yes",
            "tls keyfile": str(pki.server_key),
            "tls certfile": str(pki.server_cert),
            "tls cafile": str(pki.ca_cert),
        }
        _run(
            [
                samba_tool,
                "domain",
                "provision",
                f"--targetdir={workdir}",
                f"--realm={dc.realm}",
                f"--domain={dc.domain}",
                f"--adminpass={dc.admin_password}",
                "--server-role=dc",
                "--dns-backend=NONE",
                "--use-rfc2307",
                "--backend-store=mdb",  # as large domains use: ordered indexes (uSNChanged ranges)
                f"--host-name={hostname}",
                f"--host-ip={host}",
                *(f"--option={name}={value}" for name, value in options.items()),
            ],
            "samba-tool domain provision",
        )
        # Provision does not write this one: without it, a simple bind needs LDAPS.
        text = dc.conf.read_text()
        dc.conf.write_text(
            text.replace("[global]\n", "[global]\n\tldap server require strong auth = no\n", 1)
        )
        _run(
            [
                samba_tool,
                "user",
                "create",
                "ght-sync",
                dc.reader_password,
                "--description=read-only synchronisation account (tests)",
                "-s",
                str(dc.conf),
                "-H",
                str(workdir / "private" / "sam.ldb"),
            ],
            "samba-tool user create ght-sync",
        )
        dc.allow_reading_tombstones(True)
        dc.start()
    except BaseException:
        dc.close()
        raise
    return dc
