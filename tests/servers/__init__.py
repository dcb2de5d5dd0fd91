"""Real servers (OpenLDAP slapd, PostgreSQL) started privately by the test suite, no mocks."""

from .certs import PkiFiles, make_test_pki
from .postgres import PostgresError, PostgresServer, start_postgres
from .slapd import SlapdError, SlapdFactory, SlapdServer, Suffix, ldif_entry, start_slapd

__all__ = [
    "PkiFiles",
    "PostgresError",
    "PostgresServer",
    "SlapdError",
    "SlapdFactory",
    "SlapdServer",
    "Suffix",
    "ldif_entry",
    "make_test_pki",
    "start_postgres",
    "start_slapd",
]
