"""Export of the territorial directory to the group's Entra ID tenant through Microsoft Graph.

directory + export state -> `plan` (what would change, offline) -> `push` (Graph `$batch`, resumable,
idempotent) -> Entra ID. `adopt` links cloud users that exist already; `export_status` reports.

Modules: `auth` (MSAL tokens), `graph` (the HTTP client: paging, batching, throttling), `mapping`
(people -> Graph users and groups), `plan`, `push`, `adopt`, `status`, `errors`.
"""

from .adopt import MATCHES, AdoptResult, adopt
from .errors import (
    AzureAuthError,
    AzureError,
    AzureNotConfigured,
    DeletionThresholdExceeded,
    GraphError,
    GraphPermissionDenied,
    GraphUnavailable,
)
from .plan import ExportPlan, UserActionKind, build_plan, plan_export, require_azure
from .push import PushResult, open_client, push
from .status import export_status

__all__ = [
    "MATCHES",
    "AdoptResult",
    "AzureAuthError",
    "AzureError",
    "AzureNotConfigured",
    "DeletionThresholdExceeded",
    "ExportPlan",
    "GraphError",
    "GraphPermissionDenied",
    "GraphUnavailable",
    "PushResult",
    "UserActionKind",
    "adopt",
    "build_plan",
    "export_status",
    "open_client",
    "plan_export",
    "push",
    "require_azure",
]
