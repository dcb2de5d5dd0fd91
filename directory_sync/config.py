"""Configuration: one `ght.toml` for the service, one `mappings/<site>.yaml` per hospital.

Settings come from one place (pydantic-settings): environment (`GHT_*`), then the config file, then
defaults. A site file is validated completely before anything runs; a mistake is reported with the file,
the line, the key and what was expected. Secrets are never in either file: a site names the environment
variable or the file that holds its bind password, and the secret is read only when a connection opens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
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


Connection = Annotated[LdapConnection | LdifConnection, Field(discriminator="kind")]


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


class SiteMapping(_Strict):
    """One hospital: which establishment, where its directory is, how its attributes map."""

    site: SiteInfo
    connection: Connection
    attributes: dict[str, AttributeRule]
    value_maps: dict[str, dict[str, str]] = {}
    file: Path

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


def _load_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    try:
        return yaml.safe_load(text), _line_index(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            path, None, f"not valid YAML: {problem}", line=mark.line + 1 if mark else None
        ) from None


def _validation_error(path: Path, exc: ValidationError, lines: Mapping[tuple[Any, ...], int]) -> ConfigError:
    """The first problem of a pydantic error, as a ConfigError pointing at the line of the key."""
    error = exc.errors()[0]
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("ldap", "ldif")))
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
        message = "expected kind 'ldap' or 'ldif'"
    return ConfigError(path, key, message, line=line)


def load_site_mapping(path: Path, *, known_professions: Mapping[str, str] | None = None) -> SiteMapping:
    """Read and validate `mappings/<site>.yaml`. Raises ConfigError naming file, line and key."""
    data, lines = _load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(path, None, "expected a mapping with keys site, connection, attributes")
    site = data.get("site")
    if isinstance(site, dict) and "code" not in site:
        site = {**site, "code": path.stem}
        data = {**data, "site": site}
    value_maps = data.get("value_maps")
    if isinstance(value_maps, dict):
        data = {**data, "value_maps": _resolve_value_maps(path, value_maps, lines)}
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
    path: Path, value_maps: dict[str, Any], lines: Mapping[tuple[Any, ...], int]
) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    for name, table in value_maps.items():
        if isinstance(table, dict) and set(table) == {"file"}:
            table_path = path.parent / str(table["file"])
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
# The service's settings.


class Settings(BaseSettings):
    """`ght.toml`, overridden by `GHT_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="GHT_", extra="forbid")

    database_url: str = "sqlite:///ght.db"
    mappings_dir: Path = Path("mappings")
    sites: list[str] = []
    config_file: Path | None = None

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
