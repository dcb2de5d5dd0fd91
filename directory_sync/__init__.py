"""Directory sync: from each hospital's directory to one territorial directory.

connectors (read a source; `pipeline` runs them in a worker process) -> mapping (territorial
vocabulary) -> correlate (which person is this?) -> reconcile (plan, then apply) -> store (the
territorial directory). `sync.run_sync` runs the whole path for the configured sites; `review` and
`audit` are the humans' side of it; `azure` exports the directory to Entra ID.
"""

from .config import Settings, SiteMapping, load_settings, load_site_mapping
from .errors import (
    ConfigError,
    GhtError,
    NotFound,
    SourceReadIncomplete,
    SourceUnavailable,
    StoreError,
    SyncError,
)
from .records import SourceRecord
from .sync import SiteResult, run_sync

__all__ = [
    "ConfigError",
    "GhtError",
    "NotFound",
    "Settings",
    "SiteMapping",
    "SiteResult",
    "SourceReadIncomplete",
    "SourceRecord",
    "SourceUnavailable",
    "StoreError",
    "SyncError",
    "load_settings",
    "load_site_mapping",
    "run_sync",
]
