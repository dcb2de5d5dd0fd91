"""Connectors read one site's source and yield `SourceRecord`s. They know LDAP, not people."""

from __future__ import annotations

from ..config import ActiveDirectoryConnection, LdapConnection, LdifConnection, SiteMapping
from .active_directory import ActiveDirectoryConnector
from .base import Connector, DeltaConnector
from .ldap import LdapConnector
from .ldif import LdifConnector, parse_ldif

__all__ = [
    "ActiveDirectoryConnector",
    "Connector",
    "DeltaConnector",
    "LdapConnector",
    "LdifConnector",
    "open_connector",
    "parse_ldif",
]


def open_connector(site: SiteMapping) -> Connector:
    """The connector for a site's `connection.kind`."""
    connection = site.connection
    if isinstance(connection, ActiveDirectoryConnection):  # before LdapConnection: it is one
        return ActiveDirectoryConnector(site.code, connection, site.source_attributes, site.roles)
    if isinstance(connection, LdapConnection):
        return LdapConnector(site.code, connection, site.source_attributes)
    if isinstance(connection, LdifConnection):
        return LdifConnector(site.code, connection)
    raise AssertionError(f"no connector for {connection!r}")
