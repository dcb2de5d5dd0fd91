"""Configuration: one `ght.toml` for the service, one `mappings/<site>.yaml` per hospital.

Settings come from one place (pydantic-settings): environment (`GHT_*`), then the config file, then
defaults. A site file is validated completely before anything runs; a mistake is reported with the file,
the line, the key and what was expected. Secrets are never in either file: a site names the environment
variable or the file that holds its bind password, and the secret is read only when a connection opens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError
from .identifiers import is_valid_finess

#: The territorial vocabulary: every attribute a mapping may produce.
TERRITORIAL_ATTRIBUTES: tuple[str, ...] = (
    "login",
    "family_name",
    "given_name",
    "birth_name",
    "birth_date",
    "email",
    "rpps",
    "adeli",
    "profession",
    "department",
    "title",
    "employee_id",
    "phone",
)
REQUIRED_ATTRIBUTES = ("login", "family_name")

#: Transforms a mapping may name, with the argument they take (None: no argument).
TRANSFORMS: dict[str, str | None] = {
    "trim": None,
    "upper": None,
    "lower": None,
    "name_case": None,
    "ascii": None,
    "digits": None,
    "map": "the name of a value map",
    "default": "the value to use when empty",
    "prefix_strip": "the prefix to remove",
}

CONFIG_ENV = "GHT_CONFIG"
DEFAULT_CONFIG_FILE = "ght.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Strict):
    """Where a secret lives: an environment variable or a file (systemd credential, Kubernetes Secret)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' (a variable name) or 'file' (a path)")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def read(self) -> str:
        """The secret's value. Raises ValueError naming the variable or file (never the value)."""
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read secret file {self.file}: {exc.strerror}") from None


class TlsOptions(_Strict):
    start_tls: bool = False
    ca_file: Path | None = None
    verify: bool = True


class LdapConnection(_Strict):
    """An OpenLDAP (or any LDAPv3) directory read with a paged subtree search."""

    kind: Literal["ldap"]
    url: str
    bind_dn: str | None = None
    bind_password: SecretRef | None = None
    base_dn: str
    filter: str = "(objectClass=inetOrgPerson)"
    page_size: int = Field(500, ge=1, le=100_000)
    timeout: float = Field(30, gt=0, le=3600)
    tls: TlsOptions = TlsOptions()
    anchor: str = "entryUUID"

    @field_validator("url")
    @classmethod
    def _ldap_urls(cls, value: str) -> str:
        urls = value.split()
        if not urls:
            raise ValueError("expected an ldap:// or ldaps:// URL")
        for url in urls:
            if not url.lower().startswith(("ldap://", "ldaps://")):
                raise ValueError(f"expected an ldap:// or ldaps:// URL, got {url!r}")
        return value

    @field_validator("bind_password", mode="before")
    @classmethod
    def _no_inline_secret(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                "a password must not be written in the mapping: use {env: VARIABLE} or {file: PATH}"
            )
        return value

    @field_validator("filter")
    @classmethod
    def _filter_parenthesised(cls, value: str) -> str:
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError("expected an LDAP filter in parentheses, such as (objectClass=inetOrgPerson)")
        return value

    @model_validator(mode="after")
    def _bind_pair(self) -> LdapConnection:
        if (self.bind_dn is None) != (self.bind_password is None):
            raise ValueError("bind_dn and bind_password go together (both, or neither for anonymous)")
        if self.tls.start_tls and any(u.lower().startswith("ldaps://") for u in self.url.split()):
            raise ValueError("start_tls is for ldap:// URLs; ldaps:// is already encrypted")
        return self

    @property
    def urls(self) -> list[str]:
        return self.url.split()


class LdifConnection(_Strict):
    """An LDIF export handed over by a hospital (RFC 2849 content records)."""

    kind: Literal["ldif"]
    path: Path
    anchor: str = "entryUUID"
    base_dn: str | None = None
    object_class: str = "inetOrgPerson"

    @property
    def url(self) -> str:
        return f"file://{self.path}"


#: Users only: `objectCategory=person` leaves out computers (also of class user), `objectClass=user` contacts.
AD_USERS_FILTER = "(&(objectCategory=person)(objectClass=user))"
#: Active Directory answers a paged search with at most MaxPageSize (1,000 by default) entries per page.
AD_MAX_PAGE_SIZE = 1000


class ActiveDirectoryConnection(LdapConnection):
    """An Active Directory domain (Windows or Samba DCs): LDAP, with AD's own anchor, state and deltas.

    The anchor is always objectGUID. `url` may list several DCs for failover; a delta only continues on
    the DC that gave its watermark (USNs are per DC), any other DC means a full read.
    """

    kind: Literal["active_directory"]  # type: ignore[assignment]  # pydantic discriminates on this tag
    filter: str = AD_USERS_FILTER
    anchor: str = "objectGUID"

    @field_validator("page_size")
    @classmethod
    def _ad_page_limit(cls, value: int) -> int:
        if value > AD_MAX_PAGE_SIZE:
            raise ValueError(
                f"Active Directory returns at most {AD_MAX_PAGE_SIZE} entries per page (MaxPageSize): "
                f"use {AD_MAX_PAGE_SIZE} or less"
            )
        return value

    @field_validator("anchor")
    @classmethod
    def _guid_anchor(cls, value: str) -> str:
        if value.lower() != "objectguid":
            raise ValueError(
                "the anchor of an Active Directory account is objectGUID (the DN and sAMAccountName change)"
            )
        return "objectGUID"


Connection = Annotated[
    ActiveDirectoryConnection | LdapConnection | LdifConnection, Field(discriminator="kind")
]


class SiteInfo(_Strict):
    code: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str = Field(min_length=1)
    finess: str

    @field_validator("finess")
    @classmethod
    def _finess(cls, value: str) -> str:
        if not is_valid_finess(value):
            raise ValueError("expected a 9-character FINESS number (digits, or 2A/2B then 7 digits)")
        return value


class Transform(_Strict):
    name: str
    argument: str | None = None


class AttributeRule(_Strict):
    source: str = Field(alias="from", min_length=1)
    transforms: tuple[Transform, ...] = ()

    @field_validator("transforms", mode="before")
    @classmethod
    def _parse_transforms(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("expected a list of transforms, such as [trim, upper]")
        parsed = []
        for item in value:
            if isinstance(item, str):
                name, argument = item, None
            elif isinstance(item, dict) and len(item) == 1:
                ((name, argument),) = item.items()
                argument = "" if argument is None else str(argument)
            else:
                raise ValueError(f"expected a transform name or {{name: argument}}, got {item!r}")
            if name not in TRANSFORMS:
                raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")
            if (TRANSFORMS[name] is None) != (argument is None):
                need = TRANSFORMS[name]
                raise ValueError(
                    f"transform {name!r} takes {need}: write {{{name}: ...}}"
                    if need
                    else f"transform {name!r} takes no argument"
                )
            parsed.append(Transform(name=name, argument=argument))
        return tuple(parsed)


#: A territorial role code; a person's roles at a site are stored sorted, joined by commas.
ROLE_CODE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class RoleMapping(_Strict):
    """Territorial roles from group membership: `groups` maps a directory group (its CN, or its whole DN)
    to a territorial role. With `nested`, a member of a member group counts too (Active Directory's
    LDAP_MATCHING_RULE_IN_CHAIN); otherwise only the direct memberships listed in `from` do."""

    source: str = Field("memberOf", alias="from", min_length=1)
    nested: bool = False
    groups: dict[str, str] = Field(min_length=1)

    @field_validator("groups")
    @classmethod
    def _role_codes(cls, value: dict[str, str]) -> dict[str, str]:
        for group, role in value.items():
            if not ROLE_CODE.fullmatch(str(role)):
                raise ValueError(
                    f"role {role!r} of group {group!r}: expected a code of lower-case letters, digits, "
                    "'.', '_' or '-' (such as medecin or cadre-de-sante)"
                )
        return value


class SiteMapping(_Strict):
    """One hospital: which establishment, where its directory is, how its attributes map."""

    site: SiteInfo
    connection: Connection
    attributes: dict[str, AttributeRule]
    value_maps: dict[str, dict[str, str]] = {}
    roles: RoleMapping | None = None
    file: Path

    @field_validator("roles")
    @classmethod
    def _nested_needs_ad(cls, value: RoleMapping | None, info: ValidationInfo) -> RoleMapping | None:
        connection = info.data.get("connection")
        if value is not None and value.nested and not isinstance(connection, ActiveDirectoryConnection):
            raise ValueError(
                "nested: true needs kind active_directory (LDAP_MATCHING_RULE_IN_CHAIN is an AD feature)"
            )
        return value

    @field_validator("attributes", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"from": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("attributes")
    @classmethod
    def _known_attributes(cls, value: dict[str, AttributeRule]) -> dict[str, AttributeRule]:
        unknown = [k for k in value if k not in TERRITORIAL_ATTRIBUTES]
        if unknown:
            raise ValueError(
                f"unknown territorial attribute {unknown[0]!r}; known: {', '.join(TERRITORIAL_ATTRIBUTES)}"
            )
        missing = [k for k in REQUIRED_ATTRIBUTES if k not in value]
        if missing:
            raise ValueError(f"missing required attribute {missing[0]!r}")
        return value

    @property
    def code(self) -> str:
        return self.site.code

    @property
    def source_attributes(self) -> list[str]:
        """The source attributes to request: every mapped one, and the anchor."""
        names = {rule.source for rule in self.attributes.values()}
        if self.connection.anchor.lower() != "dn":
            names.add(self.connection.anchor)
        if self.roles is not None and not self.roles.nested:
            names.add(self.roles.source)  # nested memberships are computed by the connector
        return sorted(names, key=str.lower)


# --------------------------------------------------------------------------------------------------
# Loading YAML with line numbers, so that errors can point at the line.


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path of a YAML document to its 1-based line."""
    index: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        index.setdefault(path, node.start_mark.line + 1)  # a key's own line wins over its value's
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                index[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return index


#: libyaml's parser when PyYAML was built with it (several times faster), else the pure-Python one.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Lines(Mapping[tuple[Any, ...], int]):
    """The line index of a document, worked out only if an error needs it (a second parse)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._index: dict[tuple[Any, ...], int] | None = None

    def _lines(self) -> dict[tuple[Any, ...], int]:
        if self._index is None:
            self._index = _line_index(self._text)
        return self._index

    def __getitem__(self, key: tuple[Any, ...]) -> int:
        return self._lines()[key]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._lines())

    def __len__(self) -> int:
        return len(self._lines())


def _load_yaml(path: Path) -> tuple[Any, Mapping[tuple[Any, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_SafeLoader), _Lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            path, None, f"not valid YAML: {problem}", line=mark.line + 1 if mark else None
        ) from None


def _validation_error(path: Path, exc: ValidationError, lines: Mapping[tuple[Any, ...], int]) -> ConfigError:
    """The first problem of a pydantic error, as a ConfigError pointing at the line of the key."""
    error = exc.errors()[0]
    loc = tuple(
        p for p in error["loc"] if not (isinstance(p, str) and p in ("ldap", "active_directory", "ldif"))
    )
    if error["type"] == "union_tag_invalid":
        loc = (*loc, "kind")
    key = ".".join(str(p) for p in loc) or None
    line = None
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            line = lines[loc[:n]]
            break
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "union_tag_invalid":
        message = "expected kind 'ldap', 'active_directory' or 'ldif'"
    return ConfigError(path, key, message, line=line)


#: Mappings already read in this process, with the files they came from as they were then (a
#: scheduler's runs, `ght sync run --every`, parse and validate each file once, not once per run).
_MAPPINGS_READ: dict[tuple[str, Any], tuple[tuple[tuple[Path, Any], ...], SiteMapping]] = {}


def _file_state(path: Path) -> bytes | None:
    """What the file holds (reading a small file is cheap; parsing and validating it is not), so that
    an edit is seen even within the file system's timestamp granularity."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def load_site_mapping(path: Path, *, known_professions: Mapping[str, str] | None = None) -> SiteMapping:
    """Read and validate `mappings/<site>.yaml`. Raises ConfigError naming file, line and key.

    Read again only when it, or a value-map file it names, changed since this process last read it."""
    key = (str(path), tuple(sorted(known_professions.items())) if known_professions is not None else None)
    known = _MAPPINGS_READ.get(key)
    if known is not None and all(_file_state(file) == state for file, state in known[0]):
        return known[1]
    files = [(path, _file_state(path))]  # each file as it was before it was read: a change then shows
    mapping = _read_site_mapping(path, known_professions, files)
    _MAPPINGS_READ[key] = (tuple(files), mapping)
    return mapping


def _read_site_mapping(
    path: Path, known_professions: Mapping[str, str] | None, files: list[tuple[Path, Any]]
) -> SiteMapping:
    data, lines = _load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(path, None, "expected a mapping with keys site, connection, attributes")
    site = data.get("site")
    if isinstance(site, dict) and "code" not in site:
        site = {**site, "code": path.stem}
        data = {**data, "site": site}
    value_maps = data.get("value_maps")
    if isinstance(value_maps, dict):
        data = {**data, "value_maps": _resolve_value_maps(path, value_maps, lines, files)}
    connection = data.get("connection")
    if isinstance(connection, dict) and connection.get("kind") == "ldif" and "path" in connection:
        data = {
            **data,
            "connection": {**connection, "path": (path.parent / str(connection["path"])).resolve()},
        }
    if isinstance(connection, dict) and isinstance(connection.get("tls"), dict):
        tls = connection["tls"]
        if tls.get("ca_file"):
            tls = {**tls, "ca_file": (path.parent / str(tls["ca_file"])).resolve()}
            data["connection"] = {**data["connection"], "tls": tls}
    try:
        mapping = SiteMapping.model_validate({**data, "file": path})
    except ValidationError as exc:
        raise _validation_error(path, exc, lines) from None
    _check_map_references(mapping, lines, known_professions)
    return mapping


def _resolve_value_maps(
    path: Path,
    value_maps: dict[str, Any],
    lines: Mapping[tuple[Any, ...], int],
    files: list[tuple[Path, Any]],
) -> dict[str, Any]:
    """The value maps, those kept in files of their own read (and added to `files`)."""
    resolved: dict[str, Any] = {}
    for name, table in value_maps.items():
        if isinstance(table, dict) and set(table) == {"file"}:
            table_path = path.parent / str(table["file"])
            files.append((table_path, _file_state(table_path)))
            table, _ = _load_yaml(table_path)
            if not isinstance(table, dict):
                raise ConfigError(table_path, None, "expected a mapping of local value -> territorial value")
        if not isinstance(table, dict):
            raise ConfigError(
                path,
                f"value_maps.{name}",
                "expected a mapping of local value -> territorial value",
                line=lines.get(("value_maps", name)),
            )
        resolved[name] = {str(k): "" if v is None else str(v) for k, v in table.items()}
    return resolved


def _check_map_references(
    mapping: SiteMapping, lines: Mapping[tuple[Any, ...], int], known_professions: Mapping[str, str] | None
) -> None:
    for attribute, rule in mapping.attributes.items():
        for i, transform in enumerate(rule.transforms):
            if transform.name == "map" and transform.argument not in mapping.value_maps:
                raise ConfigError(
                    mapping.file,
                    f"attributes.{attribute}.transforms.{i}",
                    f"value map {transform.argument!r} is not defined under value_maps",
                    line=lines.get(("attributes", attribute, "transforms", i)),
                )
            if transform.name == "map" and attribute == "profession" and known_professions:
                table = mapping.value_maps[transform.argument or ""]
                for local, code in table.items():
                    if code and code not in known_professions:
                        raise ConfigError(
                            mapping.file,
                            f"value_maps.{transform.argument}.{local}",
                            f"{code!r} is not a G15 profession code (see codes/g15.yaml)",
                            line=lines.get(("value_maps", transform.argument, local)),
                        )


# --------------------------------------------------------------------------------------------------
# The OIDC gateway's settings (`[gateway]` in ght.toml), read by `sso_gateway` (never imported here).


def _loopback_or_https(value: str, what: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{what} must be an https:// URL (http:// only on the loopback address)")
    return value


class UpstreamProviderSettings(_Strict):
    """An upstream OpenID provider people may sign in with (`[gateway.upstream.<name>]`).

    `kind` says how its identities are linked to territorial people: `entra_id` (the group's tenant)
    by the object id the Entra export stored (`oid`), else the `employeeId` it wrote; `pro_sante_connect`
    by the RPPS of `SubjectNameID` (idNat_PS). Endpoints come from the issuer's discovery document.
    With `admit_external` (Pro Sante Connect only), a professional the directory does not know is
    admitted as an external professional with `external_role`, to `external_clients` only
    (sso_gateway/upstream.py).
    """

    kind: Literal["pro_sante_connect", "entra_id"]
    issuer: str
    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    #: Defaults by kind: Pro Sante Connect "openid scope_all", Entra ID "openid profile email".
    scope: str | None = None
    #: Defaults by kind: Pro Sante Connect "eidas1"; Entra ID none.
    acr_values: str | None = None
    #: The button's label (otherwise "Pro Santé Connect" or "Entra ID"), in every language.
    label: str | None = Field(default=None, max_length=64)
    ca_file: Path | None = None
    timeout: float = Field(10, gt=0, le=120)
    #: Entra ID: the group's tenant; an ID token with another `tid` is refused.
    tenant_id: str | None = None
    admit_external: bool = False
    external_role: str = Field("professionnel-externe", pattern=f"^{ROLE_CODE.pattern}$")
    external_clients: list[str] = []
    #: The client ids whose sign-in page offers this provider (empty: every client's).
    clients: list[str] = []

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _loopback_or_https(value.rstrip("/"), "the upstream issuer")

    @field_validator("client_secret", mode="before")
    @classmethod
    def _no_inline_secret(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("a secret must not be written in the file: use {env: VARIABLE} or {file: PATH}")
        return value

    @model_validator(mode="after")
    def _external(self) -> UpstreamProviderSettings:
        if self.admit_external and self.kind != "pro_sante_connect":
            raise ValueError("admit_external is for Pro Sante Connect only")
        if self.admit_external and not self.external_clients:
            raise ValueError(
                "admit_external needs external_clients: the client ids an external professional may use"
            )
        return self

    @property
    def effective_scope(self) -> str:
        if self.scope:
            return self.scope
        return "openid scope_all" if self.kind == "pro_sante_connect" else "openid profile email"

    @property
    def effective_acr_values(self) -> str | None:
        if self.acr_values is not None:
            return self.acr_values or None
        return "eidas1" if self.kind == "pro_sante_connect" else None


#: The gateway's levels of assurance (`acr` values, documented in sso_gateway/CLAIMS.md).
ACR_LOW = "urn:ght:acr:low"
ACR_SUBSTANTIAL = "urn:ght:acr:substantial"


class AssuranceLevel(_Strict):
    """A level of assurance a sign-in reaches (`acr`), from the methods it used (`amr`, RFC 8176).

    A sign-in reaches the level when its `amr` holds every value of one of the `amr` sets, or when an
    upstream provider reported one of `upstream_acr`. Levels are listed lowest first; the first one is
    the floor every sign-in reaches.
    """

    acr: str = Field(min_length=1, max_length=128)
    description: str = ""
    amr: list[list[str]] = []
    upstream_acr: list[str] = []


DEFAULT_ASSURANCE_LEVELS = (
    AssuranceLevel(
        acr=ACR_LOW,
        description="one factor (a password): eIDAS low; under the PGSSI-S identification rules (RIE), "
        "accepted only from inside the establishment",
        amr=[["pwd"]],
    ),
    AssuranceLevel(
        acr=ACR_SUBSTANTIAL,
        description="two factors (password and TOTP or security key), CPS / e-CPS through Pro Sante "
        "Connect: eIDAS substantial, accepted by the RIE for access from anywhere",
        amr=[["mfa"], ["pwd", "otp"], ["pwd", "hwk"], ["pwd", "swk"]],
        upstream_acr=["eidas1", "eidas2", "eidas3"],
    ),
)


class GatewaySettings(_Strict):
    """The OpenID Connect gateway: who it is, where its key-encryption key lives, how long things last.

    Lifetimes are in seconds. Access and ID tokens are short-lived (RFC 9700); a refresh token lasts a
    working shift; a new signing key is published `key_publish_delay` seconds before it signs, so that
    relying parties that cache the JWKS already know it.
    """

    issuer: str
    key_encryption_key: SecretRef
    signing_alg: Literal["RS256", "PS256", "ES256"] = "RS256"
    authorization_code_lifetime: int = Field(60, ge=10, le=600)
    access_token_lifetime: int = Field(300, ge=30, le=3600)
    id_token_lifetime: int = Field(300, ge=30, le=3600)
    refresh_token_lifetime: int = Field(12 * 3600, ge=60, le=30 * 24 * 3600)
    session_lifetime: int = Field(12 * 3600, ge=60, le=7 * 24 * 3600)
    key_publish_delay: int = Field(3600, ge=0, le=7 * 24 * 3600)
    login_free_attempts: int = Field(3, ge=1, le=100)
    login_lockout_after: int = Field(10, ge=2, le=1000)
    login_ip_lockout_after: int = Field(50, ge=2, le=100_000)
    login_lockout_seconds: int = Field(900, ge=1, le=24 * 3600)
    ldap_timeout: float = Field(5, gt=0, le=60)
    backchannel_logout_attempts: int = Field(6, ge=1, le=50)
    #: Who may read /metrics (sso_gateway/metrics.py): clients from these networks (the loopback by
    #: default), or any client presenting `metrics_token` as `Authorization: Bearer <token>`.
    metrics_networks: list[IPvAnyNetwork] = [IPv4Network("127.0.0.0/8"), IPv6Network("::1/128")]
    metrics_token: SecretRef | None = None
    default_locale: Literal["fr", "en"] = "fr"
    #: Levels of assurance, lowest first (sso_gateway/assurance.py; CLAIMS.md lists the defaults).
    assurance_levels: list[AssuranceLevel] = list(DEFAULT_ASSURANCE_LEVELS)
    #: The hospitals' internal networks: from them a password alone may do, where the client allows it.
    #: The loopback by default only: declare the establishments' networks (e.g. "10.0.0.0/8").
    internal_networks: list[IPvAnyNetwork] = [IPv4Network("127.0.0.0/8"), IPv6Network("::1/128")]
    #: The level every sign-in from outside the internal networks must reach (RIE: two factors).
    external_acr: str = ACR_SUBSTANTIAL
    totp_issuer: str = Field("GHT", min_length=1, max_length=64)
    #: WebAuthn relying party id (a registrable domain of the issuer); by default the issuer's host.
    webauthn_rp_id: str | None = None
    #: Upstream OpenID providers (`[gateway.upstream.<name>]`), by name (it appears in their URLs).
    upstream: dict[
        Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")], UpstreamProviderSettings
    ] = {}

    @model_validator(mode="after")
    def _known_acr(self) -> GatewaySettings:
        known = [level.acr for level in self.assurance_levels]
        if not known:
            raise ValueError("assurance_levels must list at least one level")
        if len(set(known)) != len(known):
            raise ValueError("assurance_levels lists an acr twice")
        if self.external_acr not in known:
            raise ValueError(f"external_acr {self.external_acr!r} is not one of the assurance_levels")
        return self

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError("the issuer must be an https:// URL (http:// only on the loopback address)")
        if parts.query or parts.fragment or value.endswith("/"):
            raise ValueError("the issuer must have no query, no fragment and no trailing slash")
        return value


# --------------------------------------------------------------------------------------------------
# The Entra ID export's settings (`[azure]` in ght.toml; read by `directory_sync.azure`).

#: What an `onPremisesExtensionAttributes` slot may carry (see `directory_sync.azure.mapping`).
AZURE_EXTENSION_SOURCES = ("rpps", "profession", "territorial_id", "sites", "email", "department", "title")


class AzureSettings(_Strict):
    """The group's Entra ID tenant: the app registration that writes to it, and how people appear there.

    The app authenticates with a client secret or a certificate (PEM holding the private key and the
    certificate), both named as {env: ...} or {file: ...}, never written here. `authority`, `graph_url`
    and `ca_file` are overridable for a private cloud or the tests' fake of Graph.
    """

    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretRef | None = None
    certificate: SecretRef | None = None
    domain: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z]{2,}$")
    federated: bool = False
    usage_location: str = Field("FR", pattern=r"^[A-Z]{2}$")
    group_prefix: str = Field("GHT", min_length=1, max_length=20, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _-]*$")
    profession_groups: bool = True
    role_groups: list[str] = []  # territorial roles that get a security group; ["*"] for every role
    extension_attributes: dict[str, str] = {
        "extensionAttribute1": "rpps",
        "extensionAttribute2": "profession",
        "extensionAttribute3": "territorial_id",
    }
    deletion_threshold: int = Field(500, ge=0)
    deletion_grace_days: float = Field(30, ge=0)
    authority: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com"
    ca_file: Path | None = None
    timeout: float = Field(60, gt=0, le=600)
    concurrency: int = Field(4, ge=1, le=16)
    write_rate: float = Field(20, gt=0, le=10_000)
    max_retries: int = Field(8, ge=0, le=50)
    retry_base: float = Field(1.0, gt=0, le=60)

    @field_validator("client_secret", "certificate", mode="before")
    @classmethod
    def _no_inline_secret(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("a secret must not be written in the file: use {env: VARIABLE} or {file: PATH}")
        return value

    @field_validator("extension_attributes")
    @classmethod
    def _extension_slots(cls, value: dict[str, str]) -> dict[str, str]:
        for slot, source in value.items():
            if slot not in {f"extensionAttribute{n}" for n in range(1, 16)}:
                raise ValueError(f"{slot!r} is not one of extensionAttribute1 .. extensionAttribute15")
            if source not in AZURE_EXTENSION_SOURCES:
                raise ValueError(f"unknown source {source!r}; known: {', '.join(AZURE_EXTENSION_SOURCES)}")
        return value

    @field_validator("authority", "graph_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("expected an https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_credential(self) -> AzureSettings:
        if (self.client_secret is None) == (self.certificate is None):
            raise ValueError("give exactly one of client_secret or certificate ({env: ...} or {file: ...})")
        return self


# --------------------------------------------------------------------------------------------------
# The service's settings.


class Settings(BaseSettings):
    """`ght.toml`, overridden by `GHT_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="GHT_", extra="forbid")

    database_url: str = "sqlite:///ght.db"
    mappings_dir: Path = Path("mappings")
    sites: list[str] = []
    config_file: Path | None = None
    gateway: GatewaySettings | None = None
    azure: AzureSettings | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @cached_property
    def professions(self) -> dict[str, str]:
        """The G15 profession codes (code -> label) from `<mappings_dir>/codes/g15.yaml`."""
        path = self.mappings_dir / "codes" / "g15.yaml"
        if not path.exists():
            return {}
        data, _ = _load_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(path, None, "expected a mapping of G15 code -> label")
        return {str(k): str(v) for k, v in data.items()}

    @cached_property
    def correlation(self) -> CorrelationConfig:
        """Correlation rules, survivorship and safety from `<mappings_dir>/correlation.yaml`."""
        return load_correlation(self.mappings_dir / "correlation.yaml")

    def site_file(self, code: str) -> Path:
        return self.mappings_dir / f"{code}.yaml"

    def load_sites(self, only: list[str] | None = None) -> list[SiteMapping]:
        """Every configured site's mapping, validated. Raises ConfigError at the first problem."""
        where = str(self.config_file or f"{DEFAULT_CONFIG_FILE} (absent)")
        if not self.sites:
            raise ConfigError(
                where, "sites", 'no site is configured: list the site codes, e.g. sites = ["ch-avignon"]'
            )
        if only:
            unknown = [s for s in only if s not in self.sites]
            if unknown:
                raise ConfigError(
                    where,
                    "sites",
                    f"site {unknown[0]!r} is not configured; configured: {', '.join(self.sites)}",
                )
        mappings = []
        for code in self.sites:
            if only and code not in only:
                continue
            mapping = load_site_mapping(self.site_file(code), known_professions=self.professions)
            if mapping.code != code:
                raise ConfigError(
                    mapping.file,
                    "site.code",
                    f"the file is listed as site {code!r} but says {mapping.code!r}",
                )
            mappings.append(mapping)
        return mappings


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config_file` (or $GHT_CONFIG, or ./ght.toml if present), environment, defaults.

    Relative paths in the file (mappings_dir) are relative to the file's folder.
    """
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    if config_file is None and Path(DEFAULT_CONFIG_FILE).exists():
        config_file = Path(DEFAULT_CONFIG_FILE)
    if config_file is not None and not config_file.exists():
        raise ConfigError(config_file, None, "configuration file not found")
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        config = SettingsConfigDict(**Settings.model_config)
        config["toml_file"] = config_file
        settings_cls = type("Settings", (Settings,), {"model_config": config})
    try:
        settings = settings_cls(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        raise ConfigError(config_file or "environment", key, message) from None
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(config_file, None, f"not valid TOML: {exc}") from None
    if config_file is not None:
        base = config_file.parent
        settings.config_file = config_file
        if not settings.mappings_dir.is_absolute() and "GHT_MAPPINGS_DIR" not in os.environ:
            settings.mappings_dir = (base / settings.mappings_dir).resolve()
    return settings


# --------------------------------------------------------------------------------------------------
# Correlation, survivorship and safety: `mappings/correlation.yaml`, one file for the whole territory.


class CorrelationRule(_Strict):
    """One way of recognising the same human: `match` names the rule, `confidence` its weight."""

    match: Literal["national_id", "email", "name_and_birth_date", "fuzzy_name"]
    confidence: float = Field(gt=0, le=1)
    min_similarity: float = Field(default=0.92, gt=0, le=1)  # fuzzy_name only
    same_profession: bool = True  # fuzzy_name only


class Thresholds(_Strict):
    auto_link: float = Field(default=0.95, gt=0, le=1)
    review: float = Field(default=0.75, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.review > self.auto_link:
            raise ValueError("review must not be above auto_link")
        return self


SURVIVORSHIP_RULES = ("primary", "oldest", "newest", "site_order")


class Survivorship(_Strict):
    """Which account wins for each person attribute: an ordered list of tie-breaking rules.

    primary: the account at the person's primary affiliation; oldest / newest: by first seen;
    site_order: the order of `site_order` (then the rest). Empty values never win.
    """

    default: list[Literal["primary", "oldest", "newest", "site_order"]] = ["primary", "oldest"]
    attributes: dict[str, list[Literal["primary", "oldest", "newest", "site_order"]]] = {}
    site_order: list[str] = []

    @field_validator("attributes")
    @classmethod
    def _person_attributes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in value:
            if name not in TERRITORIAL_ATTRIBUTES:
                raise ValueError(f"unknown territorial attribute {name!r}")
        return value


class PrimaryAffiliation(_Strict):
    """How the primary affiliation (the person's home site) is chosen among the active ones."""

    rule: Literal["oldest", "site_order", "most_recent"] = "oldest"
    site_order: list[str] = []


class TerritorialLogin(_Strict):
    """The territorial login: `prenom.nom` in ASCII, never reused; the UPN adds the group's domain."""

    domain: str = Field(default="ght.local", pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    max_length: int = Field(default=64, ge=8, le=64)


class Safety(_Strict):
    """Stops a run that would close too many accounts (Entra Connect's deletion threshold), and the
    grace period before a person with no active affiliation is deprovisioned."""

    max_closures: int = Field(default=500, ge=0)
    max_closure_percent: float = Field(default=10.0, ge=0, le=100)
    min_accounts_for_percent: int = Field(default=20, ge=0)
    grace_days: int = Field(default=30, ge=0, le=3650)


class CorrelationConfig(_Strict):
    rules: list[CorrelationRule] = [
        CorrelationRule(match="national_id", confidence=1.0),
        CorrelationRule(match="name_and_birth_date", confidence=0.97),
        CorrelationRule(match="email", confidence=0.9),
        CorrelationRule(match="fuzzy_name", confidence=0.85),
    ]
    thresholds: Thresholds = Thresholds()
    survivorship: Survivorship = Survivorship()
    primary_affiliation: PrimaryAffiliation = PrimaryAffiliation()
    territorial_login: TerritorialLogin = TerritorialLogin()
    safety: Safety = Safety()
    file: Path | None = None


def load_correlation(path: Path) -> CorrelationConfig:
    """`mappings/correlation.yaml`, or the defaults when there is none."""
    if not path.exists():
        return CorrelationConfig()
    data, lines = _load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, None, "expected a mapping with keys rules, thresholds, survivorship, safety")
    try:
        return CorrelationConfig.model_validate({**data, "file": path})
    except ValidationError as exc:
        raise _validation_error(path, exc, lines) from None
