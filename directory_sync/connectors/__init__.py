"""Connectors read one site's source and yield `SourceRecord`s. They know LDAP, not people."""

from __future__ import annotations

from ..config import LdapConnection, LdifConnection, SiteMapping
from .base import Connector
from .ldap import LdapConnector
from .ldif import LdifConnector, parse_ldif

__all__ = ["Connector", "LdapConnector", "LdifConnector", "open_connector", "parse_ldif"]


def open_connector(site: SiteMapping) -> Connector:
    """The connector for a site's `connection.kind`."""
    connection = site.connection
    if isinstance(connection, LdapConnection):
        return LdapConnector(site.code, connection, site.source_attributes)
    if isinstance(connection, LdifConnection):
        return LdifConnector(site.code, connection)
    raise AssertionError(f"no connector for {connection!r}")
