"""Typed errors of the Entra ID export, all `GhtError`s: the CLI prints each as one line.

Raised where the problem is known (the token endpoint's AADSTS code, Graph's error body), caught where
it can be handled (a rejected user is recorded and skipped; a refused token stops everything).
"""

from __future__ import annotations

from ..errors import ConfigError, GhtError


class AzureError(GhtError):
    """The export to Entra ID could not be done as asked."""


class AzureNotConfigured(ConfigError):
    """`ght azure ...` was run without an `[azure]` table in the configuration."""

    def __init__(self, where: str) -> None:
        super().__init__(
            where,
            "azure",
            "no [azure] table: set tenant_id, client_id, domain and client_secret or certificate",
        )


class AzureAuthError(AzureError):
    """The token endpoint refused the app: wrong tenant, unknown app, wrong secret or certificate."""

    def __init__(self, code: str | None, problem: str) -> None:
        self.code = code
        self.problem = problem
        super().__init__(f"Entra ID refused the token request{f' ({code})' if code else ''}: {problem}")


class GraphError(AzureError):
    """Graph answered a request with an error that stops the export (not one user's rejection)."""

    def __init__(self, status: int, code: str | None, message: str, what: str = "", hint: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        where = f" {what}" if what else ""
        status_code = f"{status} {code}" if code else str(status)
        super().__init__(f"Microsoft Graph refused{where} ({status_code}): {message}{hint}")


class GraphPermissionDenied(GraphError):
    """403 Authorization_RequestDenied: the app lacks an application permission."""

    def __init__(self, message: str, what: str, needed: str) -> None:
        hint = (
            f" The app registration needs the application permission {needed}, with admin consent "
            "(the export uses User.ReadWrite.All and Group.ReadWrite.All)."
        )
        super().__init__(403, "Authorization_RequestDenied", message, what, hint)
        self.needed = needed


class GraphUnavailable(AzureError):
    """Graph could not be reached, or kept failing after every retry: nothing more is attempted."""


class DeletionThresholdExceeded(AzureError):
    """The push would delete more users than allowed: it stops before changing anything."""

    def __init__(self, deletes: int, threshold: int) -> None:
        self.deletes = deletes
        self.threshold = threshold
        super().__init__(
            f"the push would delete {deletes} users, more than the deletion threshold ({threshold}): "
            f"nothing was changed. Review them with `ght azure plan`, then run "
            f"`ght azure push --allow-deletes {deletes}`"
        )
