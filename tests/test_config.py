"""A wrong configuration names the file, the line, the key and what is expected, and nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from directory_sync.config import load_settings, load_site_mapping
from directory_sync.errors import ConfigError
from directory_sync.sync import check_sites

GOOD = """\
site:
  name: Centre hospitalier de Test
  finess: "840000087"
connection:
  kind: ldap
  url: ldaps://ldap.ch-test.fr
  bind_dn: cn=sync,dc=ch-test,dc=fr
  bind_password: {env: GHT_TEST_SECRET}
  base_dn: ou=people,dc=ch-test,dc=fr
  tls: {ca_file: ca.pem}
attributes:
  login: uid
  family_name: {from: sn, transforms: [trim, upper]}
  profession: {from: title, transforms: [{map: jobs}]}
value_maps:
  jobs: {infirmier: "60"}
"""


def write(tmp_path: Path, text: str, name: str = "ch-test.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_site_mapping(write(tmp_path, text), known_professions={"60": "Infirmier"})
    return caught.value


def test_a_good_mapping_loads_with_defaults(tmp_path: Path) -> None:
    mapping = load_site_mapping(write(tmp_path, GOOD))
    assert mapping.code == "ch-test"  # from the file name
    assert mapping.connection.kind == "ldap"
    assert mapping.connection.page_size == 500
    assert mapping.connection.tls.ca_file == tmp_path / "ca.pem"  # relative to the mapping file
    assert mapping.source_attributes == ["entryUUID", "sn", "title", "uid"]


@pytest.mark.parametrize(
    ("change", "key", "line", "message"),
    [
        (('finess: "840000087"', 'finess: "8400"'), "site.finess", 3, "9-character FINESS"),
        (("kind: ldap", "kind: ad"), "connection.kind", 5, "kind 'ldap', 'active_directory' or 'ldif'"),
        (("url: ldaps://ldap.ch-test.fr", "url: http://ldap"), "connection.url", 6, "ldap:// or ldaps://"),
        (
            ("bind_password: {env: GHT_TEST_SECRET}", "bind_password: hunter2"),
            "connection.bind_password",
            8,
            "must not be written in the mapping",
        ),
        (("  base_dn: ou=people,dc=ch-test,dc=fr\n", ""), "connection.base_dn", 4, "required key is missing"),
        (
            ("[trim, upper]", "[trim, uppercase]"),
            "attributes.family_name.transforms",
            13,
            "unknown transform 'uppercase'",
        ),
        (
            ("{map: jobs}", "{map: metiers}"),
            "attributes.profession.transforms.0",
            14,
            "value map 'metiers' is not defined",
        ),
        (
            ('infirmier: "60"', 'infirmier: "99"'),
            "value_maps.jobs.infirmier",
            16,
            "'99' is not a G15 profession code",
        ),
        (("  login: uid\n", ""), "attributes", 11, "missing required attribute 'login'"),
        (
            ("  login: uid\n", "  login: uid\n  favourite_colour: description\n"),
            "attributes",
            11,
            "unknown territorial attribute 'favourite_colour'",
        ),
        (("page_size", "page_size"), None, None, None),
    ],
)
def test_each_mistake_is_reported_with_file_line_and_key(
    tmp_path: Path, change: tuple[str, str], key: str | None, line: int | None, message: str | None
) -> None:
    text = GOOD.replace(*change)
    if key is None:
        load_site_mapping(write(tmp_path, text))
        return
    error = error_for(tmp_path, text)
    assert error.file == str(tmp_path / "ch-test.yaml")
    assert (error.key, error.line) == (key, line)
    assert message in str(error)
    assert str(error).startswith(f"{tmp_path / 'ch-test.yaml'}:{line}: {key}: ")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace("  name: Centre", "  name: [Centre"))
    assert error.line is not None and "not valid YAML" in str(error)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace("  page", "  pagesize: 10\n  page") + "connexion: {}\n")
    assert (error.key, error.problem) == ("connexion", "unknown key")


def test_settings_come_from_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ght.toml"
    config.write_text('database_url = "sqlite:///from-file.db"\nsites = ["ch-test"]\nmappings_dir = "maps"\n')
    settings = load_settings(config)
    assert settings.database_url == "sqlite:///from-file.db"
    assert settings.mappings_dir == tmp_path / "maps"  # relative to the config file
    monkeypatch.setenv("GHT_DATABASE_URL", "postgresql://ght@db.example/ght")
    assert load_settings(config).database_url == "postgresql://ght@db.example/ght"


def test_a_misspelt_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "ght.toml"
    config.write_text('databse_url = "sqlite:///x.db"\n')
    with pytest.raises(ConfigError, match=r"ght.toml: databse_url: unknown key"):
        load_settings(config)


def test_secrets_are_checked_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mappings").mkdir()
    write(tmp_path / "mappings", GOOD)
    config = tmp_path / "ght.toml"
    config.write_text('sites = ["ch-test"]\n')
    monkeypatch.delenv("GHT_TEST_SECRET", raising=False)
    with pytest.raises(
        ConfigError, match=r"connection\.bind_password: environment variable GHT_TEST_SECRET is not set"
    ):
        check_sites(load_settings(config))
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    write(tmp_path / "mappings", GOOD.replace("{env: GHT_TEST_SECRET}", f"{{file: {secret_file}}}"))
    (site,) = check_sites(load_settings(config))
    assert site.connection.bind_password.read() == "s3cret"  # type: ignore[union-attr]


def test_an_unknown_site_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "ght.toml"
    config.write_text('sites = ["ch-test"]\n')
    with pytest.raises(ConfigError, match="site 'ch-nowhere' is not configured; configured: ch-test"):
        load_settings(config).load_sites(["ch-nowhere"])


def test_a_mapping_is_read_again_only_when_it_or_its_value_map_file_changed(tmp_path: Path) -> None:
    """A scheduler (`ght sync run --every`) reads the same mapping files at every run: they are parsed
    once per process, and again as soon as one of them, or a value-map file it names, changes, even
    within the file system's timestamp granularity and at the same size."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text('infirmier: "60"\n')
    path = write(tmp_path, GOOD.replace('jobs: {infirmier: "60"}', "jobs: {file: jobs.yaml}"))
    first = load_site_mapping(path)
    assert load_site_mapping(path) is first  # unchanged: not parsed again
    jobs.write_text('infirmier: "10"\n')  # same size, same second
    second = load_site_mapping(path)
    assert second is not first and second.value_maps["jobs"] == {"infirmier": "10"}
    path.write_text(path.read_text().replace("Centre hospitalier de Test", "Centre hospitalier de Tesu"))
    third = load_site_mapping(path)
    assert third.site.name == "Centre hospitalier de Tesu" and load_site_mapping(path) is third
    path.write_text(path.read_text().replace("kind: ldap", "kind: ldapx"))
    with pytest.raises(ConfigError):  # a broken edit is reported, not hidden by what was read before
        load_site_mapping(path)
