"""The OIDC gateway: one sign-on for clinicians across the group's hospitals.

Not built yet (see the issue "The OIDC gateway"). It will read people from `directory_sync.store`;
`directory_sync` never imports it.
"""
