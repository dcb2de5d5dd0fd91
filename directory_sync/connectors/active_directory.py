"""Active Directory connector: LDAP, with AD's anchor, account state, nested groups and deltas.

What AD adds to a plain LDAP read, and how this connector handles it:

- **Anchor**: objectGUID (16 bytes, stored in its canonical text form `a77ca201-0714-4947-...`, the form
  `Get-ADUser` prints); objectSid is kept as a fact (`S-1-5-21-...`), with the base64 of the GUID bytes
  that Entra ID calls the ImmutableId. Binary attributes are decoded once, by name.
- **Account state**: userAccountControl's ACCOUNTDISABLE bit, and accountExpires (100 ns ticks since
  1601, where 0 and 0x7FFFFFFFFFFFFFFF both mean "never"). A disabled or expired account is an
  *inactive* account (its affiliation closes), never a deleted one. Lockout (from
  msDS-User-Account-Control-Computed, as userAccountControl's LOCKOUT bit is not maintained by AD) and
  "password never expires" are kept as facts.
- **Groups**: direct `memberOf`, or, when the mapping asks for nested membership, one
  LDAP_MATCHING_RULE_IN_CHAIN search per role group (`memberOf:1.2.840.113556.1.4.1941:=`), handed to
  the mapping as `msds-memberOfTransitive`.
- **Paging**: at most 1,000 entries per page (AD's MaxPageSize; the configuration refuses more).
- **Delta**: a uSNChanged watermark. USNs are per domain controller, so the watermark keeps the DC's
  invocationId (which also changes when a DC is restored from a backup); reaching another DC means a
  full read. A delta reads, between the watermark's USN and the DC's highestCommittedUSN at the start:
  the changed entries in scope (whole), the entries that left the scope, the tombstones (Show Deleted
  control), the accounts whose accountExpires passed meanwhile (time changes no USN), and the accounts
  whose role-group membership changed (a group edit changes the group's USN, not the member's).

DirSync would also work, but needs the "Replicating Directory Changes" right and returns only changed
attributes; uSNChanged needs only read access and returns whole entries.
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import ldap3
from ldap3.utils.conv import escape_filter_chars

from ..config import ActiveDirectoryConnection, RoleMapping
from ..delta import Watermark, WatermarkRejected
from ..errors import SourceReadIncomplete, SourceUnavailable
from ..records import SourceRecord
from ..roles import TRANSITIVE_ATTRIBUTE, group_is_dn
from .ldap import LdapConnector, _close

# userAccountControl and msDS-User-Account-Control-Computed flags ([MS-ADTS] 2.2.16).
UF_ACCOUNTDISABLE = 0x0002
UF_LOCKOUT = 0x0010
UF_DONT_EXPIRE_PASSWD = 0x10000
#: accountExpires values that mean "never".
NEVER_EXPIRES = frozenset({0, 0x7FFF_FFFF_FFFF_FFFF})
LDAP_MATCHING_RULE_IN_CHAIN = "1.2.840.113556.1.4.1941"
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"
WATERMARK_KIND = "ad-usn"
_EPOCH_1601 = datetime(1601, 1, 1, tzinfo=UTC)
_GUID_BATCH = 50  # objectGUIDs per OR filter when fetching accounts by anchor

#: Attributes read for every account, whatever the mapping: the anchor and the account's state.
STATE_ATTRIBUTES = (
    "objectGUID",
    "objectSid",
    "userAccountControl",
    "accountExpires",
    "lockoutTime",
    "msDS-User-Account-Control-Computed",
    "userPrincipalName",
)


def guid_text(raw: bytes) -> str:
    """objectGUID in its canonical text form (the GUID's first three fields are little-endian)."""
    raw = bytes(raw)
    return str(uuid.UUID(bytes_le=raw)) if len(raw) == 16 else raw.hex()


def sid_text(raw: bytes) -> str:
    """A binary SID in its string form, `S-1-5-21-...` ([MS-DTYP] 2.4.2)."""
    raw = bytes(raw)
    if len(raw) < 8 or len(raw) != 8 + 4 * raw[1]:
        return raw.hex()
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack(f"<{raw[1]}I", raw[8:])
    return "-".join(["S", str(raw[0]), str(authority), *map(str, subs)])


def immutable_id(guid: str) -> str:
    """Entra ID's ImmutableId (sourceAnchor) of an AD account: the base64 of its objectGUID bytes."""
    return base64.b64encode(uuid.UUID(guid).bytes_le).decode("ascii")


def filetime_to_datetime(value: int) -> datetime | None:
    """A FILETIME (100 ns ticks since 1601-01-01 UTC) as a datetime; None for "never"."""
    if value in NEVER_EXPIRES:
        return None
    try:
        return _EPOCH_1601 + timedelta(microseconds=value // 10)
    except OverflowError:  # beyond year 9999: never, in practice
        return None


def datetime_to_filetime(moment: datetime) -> int:
    return (moment - _EPOCH_1601) // timedelta(microseconds=1) * 10


def guid_filter_value(guid: str) -> str:
    """An objectGUID as an LDAP filter value: its 16 bytes, each escaped."""
    return "".join(f"\\{b:02x}" for b in uuid.UUID(guid).bytes_le)


@dataclass(frozen=True)
class DomainController:
    """The DC a connection reached, as its rootDSE describes it when the read starts."""

    host: str  # dnsHostName
    invocation_id: str  # the DC's database identity (new after a restore)
    usn: int  # highestCommittedUSN
    naming_context: str  # defaultNamingContext: the domain's root

    @property
    def identity(self) -> str:
        return f"{self.host} (invocationId {self.invocation_id})"


class ActiveDirectoryConnector(LdapConnector):
    connection: ActiveDirectoryConnection

    value_decoders: Mapping[str, Callable[[bytes], str]] = {
        "objectguid": guid_text,
        "invocationid": guid_text,
        "msexchmailboxguid": guid_text,
        "ms-ds-consistencyguid": guid_text,
        "objectsid": sid_text,
        "sidhistory": sid_text,
    }

    def __init__(
        self,
        site: str,
        connection: ActiveDirectoryConnection,
        attributes: list[str],
        roles: RoleMapping | None = None,
    ) -> None:
        wanted = {name.lower(): name for name in (*attributes, *STATE_ATTRIBUTES)}
        wanted.pop(TRANSITIVE_ATTRIBUTE, None)  # computed here, never asked of the DC
        super().__init__(site, connection, sorted(wanted.values(), key=str.lower))
        self.roles = roles
        #: The earliest accountExpires still to come among the accounts in scope (None: none), kept with
        #: the watermark so that a delta looks for expired accounts only when one may have expired.
        self._next_expiry: datetime | None = None

    # -- the domain controller ------------------------------------------------------------------------

    def _domain_controller(self, conn: ldap3.Connection) -> DomainController:
        code = self._search_once(
            conn,
            "",
            "(objectClass=*)",
            ["dnsHostName", "highestCommittedUSN", "dsServiceName", "defaultNamingContext"],
            scope=ldap3.BASE,
        )
        root = _first_entry(conn) if code == 0 else {}
        usn, service = root.get("highestcommittedusn"), root.get("dsservicename")
        if not usn or not service:
            raise SourceUnavailable(
                self.site,
                self.url,
                "not an Active Directory domain controller (no highestCommittedUSN in its rootDSE): "
                "use kind ldap for this directory",
            )
        code = self._search_once(conn, service[0], "(objectClass=*)", ["invocationId"], scope=ldap3.BASE)
        settings = _first_entry(conn) if code == 0 else {}
        if not settings.get("invocationid"):
            raise SourceUnavailable(
                self.site, self.url, f"cannot read the DC's invocationId from {service[0]} (result {code})"
            )
        return DomainController(
            host=(root.get("dnshostname") or [self.url])[0],
            invocation_id=settings["invocationid"][0],
            usn=int(usn[0]),
            naming_context=(root.get("defaultnamingcontext") or [""])[0],
        )

    # -- full read --------------------------------------------------------------------------------------

    def read_all(self) -> Iterator[SourceRecord]:
        self.watermark, self.no_watermark_reason = None, None
        conn = self._open()
        try:
            dc = self._domain_controller(conn)  # first: a change made during the read is read again
            now = datetime.now(UTC)
            groups = self._role_groups(conn, dc)
            members = self._role_members(conn, groups)
            blind = self._deletions_hidden(conn, dc)
            self._next_expiry = None
            for page in self._pages(conn, self.attributes):
                for entry in page:
                    if entry.get("type") == "searchResEntry":
                        yield self._account(entry, now, groups, members)
            if blind:
                self.no_watermark_reason = blind
            else:
                self.watermark = self._watermark(dc, now, members)
        finally:
            _close(conn)

    def _deletions_hidden(self, conn: ldap3.Connection, dc: DomainController) -> str | None:
        """Why a delta could not see deletions, or None when it can.

        Tombstones live in CN=Deleted Objects, which AD shows to administrators only: the sync account
        needs List Contents and Read Property there, or a delta would miss every deletion. Without them,
        Windows hides the container itself, and Samba shows it but not its attributes: in both cases it
        is not seen as deleted (isDeleted), and the site gets no watermark (every run stays full).
        """
        container = f"CN=Deleted Objects,{dc.naming_context}"
        code = self._search_once(
            conn,
            container,
            "(objectClass=*)",
            ["isDeleted"],
            scope=ldap3.BASE,
            controls=[(SHOW_DELETED_OID, True, None)],
        )
        if code == 0 and (_first_entry(conn).get("isdeleted") or [""])[0].upper() == "TRUE":
            return None
        account = self.connection.bind_dn or "ANONYMOUS LOGON"
        return (
            f"the sync account cannot read {container}, so a delta would not see deletions: full reads only. "
            f'Grant it List Contents and Read Property there (dsacls "{container}" /takeownership, then '
            f'dsacls "{container}" /G "{account}:LCRP") to enable delta sync'
        )

    # -- delta read -------------------------------------------------------------------------------------

    def read_changes(self, since: Watermark) -> Iterator[SourceRecord]:
        self.watermark, self.no_watermark_reason = None, None
        if since.kind != WATERMARK_KIND:
            raise WatermarkRejected(self.site, self.url, f"the stored watermark is of kind {since.kind}")
        conn = self._open()
        try:
            dc = self._domain_controller(conn)
            if since.state.get("invocation_id") != dc.invocation_id:
                raise WatermarkRejected(
                    self.site,
                    self.url,
                    f"the watermark was taken on {since.source}, this run reached {dc.identity}: "
                    "USNs are per domain controller, so the site is read completely",
                )
            blind = self._deletions_hidden(conn, dc)
            if blind:
                raise WatermarkRejected(self.site, self.url, blind)
            low = int(since.value) + 1
            if low > dc.usn + 1:
                raise WatermarkRejected(
                    self.site, self.url, f"{dc.host}'s highestCommittedUSN {dc.usn} is behind the watermark"
                )
            now = datetime.now(UTC)
            window = f"(uSNChanged>={low})(uSNChanged<={dc.usn})"
            groups = self._role_groups(conn, dc)
            members, moved = self._membership_changes(conn, dc, groups, since, window)
            yield from self._changes(conn, dc, now, since, window, groups, members, moved)
            self.watermark = self._watermark(dc, now, members)
        finally:
            _close(conn)

    def _changes(
        self,
        conn: ldap3.Connection,
        dc: DomainController,
        now: datetime,
        since: Watermark,
        window: str,
        groups: Mapping[str, str],
        members: Mapping[str, set[str]],
        moved: set[str],
    ) -> Iterator[SourceRecord]:
        seen: set[str] = set()
        base_filter = self.connection.filter

        def accounts(search_filter: str) -> Iterator[SourceRecord]:
            for page in self._pages(conn, self.attributes, search_filter=search_filter):
                for entry in page:
                    if entry.get("type") != "searchResEntry":
                        continue
                    record = self._account(entry, now, groups, members)
                    if record.anchor not in seen:
                        seen.add(record.anchor)
                        yield record

        # 1. Accounts in scope written since the watermark: whole, as a full read would give them.
        self._next_expiry = None
        yield from accounts(f"(&{base_filter}{window})")
        changed_expiry = self._next_expiry
        # 2. Accounts whose accountExpires passed since the watermark: time changes no USN. Looked for
        #    only once the earliest expiry known at the watermark has come (accountExpires is not indexed).
        known = since.state.get("next_expiry", "unknown")
        if known == "unknown" or (known is not None and datetime.fromisoformat(known) <= now):
            taken = datetime.fromisoformat(since.state.get("taken_at", now.isoformat()))
            since_then = f"(accountExpires>={datetime_to_filetime(taken)})"
            yield from accounts(f"(&{base_filter}{since_then}(accountExpires<={datetime_to_filetime(now)}))")
            later = self._expiry_after(conn, now)
        else:
            later = datetime.fromisoformat(known) if known else None
        self._next_expiry = _earliest(changed_expiry, later)
        # 3. Accounts whose role-group membership changed: a group edit changes the group's USN only.
        pending = sorted(moved - seen)
        for start in range(0, len(pending), _GUID_BATCH):
            wanted = "".join(
                f"(objectGUID={guid_filter_value(g)})" for g in pending[start : start + _GUID_BATCH]
            )
            yield from accounts(f"(&{base_filter}(|{wanted}))")
        # 4. Accounts written since the watermark but now out of scope (moved out of the base DN, no
        #    longer matching the filter): gone from this site, like a deletion.
        for page in self._pages(
            conn, ["objectGUID"], base=dc.naming_context, search_filter=f"(&(objectCategory=person){window})"
        ):
            yield from self._gone(page, seen)
        # 5. Tombstones: accounts deleted since the watermark.
        for page in self._pages(
            conn,
            ["objectGUID"],
            base=dc.naming_context,
            search_filter=f"(&(isDeleted=TRUE)(objectClass=user)(!(objectClass=computer)){window})",
            request_controls=[(SHOW_DELETED_OID, True, None)],
        ):
            yield from self._gone(page, seen)

    def _expiry_after(self, conn: ldap3.Connection, now: datetime) -> datetime | None:
        """The earliest accountExpires after `now` among the accounts in scope (one scan of one attribute)."""
        soonest: datetime | None = None
        search_filter = (
            f"(&{self.connection.filter}(accountExpires>={datetime_to_filetime(now) + 1})"
            f"(!(accountExpires={max(NEVER_EXPIRES)})))"
        )
        for page in self._pages(conn, ["accountExpires"], search_filter=search_filter):
            for entry in page:
                if entry.get("type") == "searchResEntry":
                    soonest = _earliest(
                        soonest, filetime_to_datetime(_int(entry["attributes"].get("accountexpires")))
                    )
        return soonest

    def _gone(self, page: list[dict], seen: set[str]) -> Iterator[SourceRecord]:
        for entry in page:
            if entry.get("type") != "searchResEntry":
                continue
            guid = (entry["attributes"].get("objectguid") or [""])[0]
            if guid and guid not in seen:
                seen.add(guid)
                yield SourceRecord(site=self.site, anchor=guid, dn=entry["dn"], deleted=True)

    # -- roles ------------------------------------------------------------------------------------------

    def _role_groups(self, conn: ldap3.Connection, dc: DomainController) -> dict[str, str]:
        """The DN of each group the mapping's `roles.groups` names (by CN or DN)."""
        if self.roles is None:
            return {}
        found: dict[str, str] = {}
        for name in self.roles.groups:
            if group_is_dn(name):
                code = self._search_once(conn, name, "(objectClass=group)", ["1.1"], scope=ldap3.BASE)
            else:
                escaped = escape_filter_chars(name)
                code = self._search_once(
                    conn,
                    dc.naming_context,
                    f"(&(objectClass=group)(|(cn={escaped})(sAMAccountName={escaped})))",
                    ["1.1"],
                )
            dns = (
                [e["dn"] for e in conn.response or [] if e.get("type") == "searchResEntry"]
                if code == 0
                else []
            )
            if len(dns) != 1:
                problem = "is not a group in the directory" if not dns else f"matches {len(dns)} groups"
                raise SourceReadIncomplete(
                    self.site,
                    self.url,
                    f"role group {name!r} (roles.groups in the site's mapping) {problem}: "
                    "nobody's roles were changed",
                )
            found[name] = dns[0]
        return found

    def _role_members(self, conn: ldap3.Connection, groups: Mapping[str, str]) -> dict[str, set[str]]:
        """The objectGUIDs of the accounts in scope that are members of each role group."""
        nested = self.roles is not None and self.roles.nested
        rule = f"memberOf:{LDAP_MATCHING_RULE_IN_CHAIN}:" if nested else "memberOf"
        members: dict[str, set[str]] = {}
        for name, dn in groups.items():
            search_filter = f"(&{self.connection.filter}({rule}={escape_filter_chars(dn)}))"
            members[name] = {
                e["attributes"]["objectguid"][0]
                for page in self._pages(conn, ["objectGUID"], search_filter=search_filter)
                for e in page
                if e.get("type") == "searchResEntry" and e["attributes"].get("objectguid")
            }
        return members

    def _membership_changes(
        self,
        conn: ldap3.Connection,
        dc: DomainController,
        groups: Mapping[str, str],
        since: Watermark,
        window: str,
    ) -> tuple[dict[str, set[str]], set[str]]:
        """Role-group members now, and the accounts whose memberships changed since the watermark.

        Memberships are read again only when some group was written since the watermark (any group:
        nesting goes through groups that are not role groups themselves).
        """
        before = {name: set(guids) for name, guids in since.state.get("roles", {}).items()}
        if not groups:
            return {}, set()
        if set(before) == set(groups):
            code = self._search_once(
                conn, dc.naming_context, f"(&(objectClass=group){window})", ["1.1"], size_limit=1
            )
            changed = any(e.get("type") == "searchResEntry" for e in conn.response or []) or code not in (
                0,
                4,
            )
            if not changed:
                return before, set()
        now = self._role_members(conn, groups)
        moved: set[str] = set()
        for name in set(before) | set(now):
            moved |= before.get(name, set()) ^ now.get(name, set())
        return now, moved

    # -- records ----------------------------------------------------------------------------------------

    def _account(
        self, entry: dict, now: datetime, groups: Mapping[str, str], members: Mapping[str, set[str]]
    ) -> SourceRecord:
        record = self._record(entry)
        attributes = dict(record.attributes)
        uac = _int(attributes.get("useraccountcontrol"))
        computed = attributes.get("msds-user-account-control-computed")
        expires = filetime_to_datetime(_int(attributes.get("accountexpires")))
        disabled = bool(uac & UF_ACCOUNTDISABLE)
        expired = expires is not None and expires <= now
        if expires is not None and not expired:
            self._next_expiry = _earliest(self._next_expiry, expires)
        if computed:
            locked_out = bool(_int(computed) & UF_LOCKOUT)
        else:
            locked_out = _int(attributes.get("lockouttime")) > 0
        facts = {
            "disabled": _flag(disabled),
            "expired": _flag(expired),
            "expires": expires.isoformat() if expires else "never",
            "locked_out": _flag(locked_out),
            "password_never_expires": _flag(bool(uac & UF_DONT_EXPIRE_PASSWD)),
            "object_sid": (attributes.get("objectsid") or [""])[0],
            "upn": (attributes.get("userprincipalname") or [""])[0],  # a login people type at the gateway
            "immutable_id": immutable_id(record.anchor),
        }
        if self.roles is not None and self.roles.nested:
            attributes[TRANSITIVE_ATTRIBUTE] = sorted(
                groups[name] for name, guids in members.items() if record.anchor in guids
            )
        return SourceRecord(
            site=self.site,
            anchor=record.anchor,
            dn=record.dn,
            attributes=attributes,
            enabled=not (disabled or expired),
            facts=facts,
        )

    def _watermark(self, dc: DomainController, now: datetime, members: Mapping[str, set[str]]) -> Watermark:
        return Watermark(
            kind=WATERMARK_KIND,
            source=dc.identity,
            value=str(dc.usn),
            state={
                "dc": dc.host,
                "invocation_id": dc.invocation_id,
                "taken_at": now.isoformat(),
                "next_expiry": self._next_expiry.isoformat() if self._next_expiry else None,
                "roles": {name: sorted(guids) for name, guids in members.items()},
            },
        )


def _first_entry(conn: ldap3.Connection) -> dict[str, list[str]]:
    for entry in conn.response or []:
        if entry.get("type") == "searchResEntry":
            attributes: dict[str, list[str]] = entry["attributes"]
            return attributes
    return {}


def _earliest(*moments: datetime | None) -> datetime | None:
    return min((m for m in moments if m is not None), default=None)


def _int(values: list[str] | None) -> int:
    try:
        return int(values[0]) if values else 0
    except ValueError:
        return 0


def _flag(value: bool) -> str:
    return "true" if value else "false"
