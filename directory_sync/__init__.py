"""Directory sync: from each hospital's directory to one territorial directory.

connectors (read a source) -> mapping (territorial vocabulary) -> reconcile (plan, then apply)
-> store (the territorial directory). `sync.run_sync` runs the whole path for the configured sites.
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
