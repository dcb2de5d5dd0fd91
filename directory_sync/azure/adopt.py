"""Adoption: link cloud users that already exist in the tenant to people of the directory.

A tenant rarely starts empty: staff already have accounts made by hand or by an earlier tool. Adoption
reads every user of the tenant (paged, `$select`ed) and matches them to people on one key:

- `employeeId`: the tenant's employeeId equals the person's (the first 16 digits of the territorial id);
- `upn`: the tenant's userPrincipalName equals the one the export would give the person;
- `mail`: the tenant's mail equals the person's email.

A match must be one-to-one: a cloud user matching several people, or a person matching several cloud
users, is listed and left alone. A linked user keeps its userPrincipalName and mailNickname (renaming
someone's sign-in name is not adoption's business); the next plan shows what else would change.
Cloud users that match nobody are listed and never touched.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from ..config import Settings
from ..store import Store, utcnow
from ..store.models import ExportState, ExportStatus
from .graph import MAX_PAGE, GraphClient
from .mapping import UserMapper, employee_id_of, fields_hash, flatten_user, load_people
from .plan import desired_users, require_azure
from .push import finish_run, open_client, start_run, user_select

#: What adoption can match on: the tenant's employeeId, userPrincipalName or mail.
MATCHES: tuple[str, ...] = ("employeeId", "upn", "mail")


@dataclass
class AdoptResult:
    match: str
    dry_run: bool
    tenant_users: int = 0
    adopted: list[dict[str, str]] = field(default_factory=list)
    already_linked: int = 0
    ambiguous: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[dict[str, str]] = field(default_factory=list)  # cloud users matching nobody
    run_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "dry_run": self.dry_run,
            "tenant_users": self.tenant_users,
            "already_linked": self.already_linked,
            "adopted": self.adopted,
            "ambiguous": self.ambiguous,
            "unmatched": self.unmatched,
            "run_id": self.run_id,
        }


def adopt(
    settings: Settings,
    store: Store,
    *,
    match: str,
    client: GraphClient | None = None,
    dry_run: bool = False,
) -> AdoptResult:
    """Link the tenant's existing users to the people they belong to, matched on `match`."""
    if match not in MATCHES:
        raise ValueError(f"match must be one of {', '.join(MATCHES)}")
    azure = require_azure(settings)
    mapper = UserMapper(azure, settings.professions)
    own_client = client is None
    graph = client or open_client(settings)
    result = AdoptResult(match=match, dry_run=dry_run)
    try:
        url = f"/users?$select={user_select(mapper)}&$top={MAX_PAGE}"
        tenant = list(graph.pages(url, what="reading the tenant's users"))
    finally:
        if own_client:
            graph.close()
    result.tenant_users = len(tenant)
    run_id = None if dry_run else start_run(store, "adopt")
    result.run_id = run_id
    now = utcnow()
    with store.session() as session:
        people = {p.id: p for p in load_people(session)}
        states = {s.person_id: s for s in session.execute(select(ExportState)).scalars()}
        desired, _ = desired_users(people.values(), states, mapper)
        linked = {s.object_id for s in states.values() if s.object_id and s.status != ExportStatus.DELETED}

        def person_key(person_id: str) -> str | None:
            if match == "employeeId":
                return employee_id_of(person_id)
            if match == "upn":
                return desired[person_id].upn.lower() if person_id in desired else None
            email = people[person_id].email
            return email.lower() if email else None

        def user_key(user: dict[str, Any]) -> str | None:
            value = user.get(
                "employeeId" if match == "employeeId" else "userPrincipalName" if match == "upn" else "mail"
            )
            if not value:
                return None
            return str(value) if match == "employeeId" else str(value).lower()

        candidates: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for user in tenant:
            if user["id"] in linked:
                result.already_linked += 1
                continue
            key = user_key(user)
            if key:
                candidates[key].append(user)
        claimants: dict[str, list[str]] = defaultdict(list)
        for person_id in people:
            state = states.get(person_id)
            if state is not None and state.object_id and state.status != ExportStatus.DELETED:
                continue
            key = person_key(person_id)
            if key and key in candidates:
                claimants[key].append(person_id)
        matched_users: set[str] = set()
        for key, person_ids in sorted(claimants.items()):
            users = candidates[key]
            if len(users) != 1 or len(person_ids) != 1:
                result.ambiguous.append(
                    {
                        "key": key,
                        "people": sorted(person_ids),
                        "cloud_users": sorted(str(u["userPrincipalName"]) for u in users),
                    }
                )
                matched_users.update(str(u["id"]) for u in users)
                continue
            (user,), (person_id,) = users, person_ids
            matched_users.add(str(user["id"]))
            result.adopted.append(
                {"person": person_id, "upn": str(user["userPrincipalName"]), "object_id": str(user["id"])}
            )
            if dry_run:
                continue
            state = states.get(person_id)
            if state is None:
                state = ExportState(person_id=person_id, employee_id=employee_id_of(person_id))
                session.add(state)
            sent = flatten_user(user, mapper.managed_fields)
            state.object_id = str(user["id"])
            state.upn = str(user["userPrincipalName"])
            state.status = ExportStatus.EXPORTED
            state.origin = "adopted"
            state.sent = sent
            state.sent_hash = fields_hash(sent)
            state.enabled = bool(user.get("accountEnabled"))
            state.error = None
            state.exported_at = now
            state.disabled_at = None if state.enabled else now
        result.unmatched = [
            {
                "upn": str(u["userPrincipalName"]),
                "object_id": str(u["id"]),
                "display_name": str(u.get("displayName")),
            }
            for u in tenant
            if u["id"] not in linked and str(u["id"]) not in matched_users
        ]
        session.commit()
    if run_id is not None:
        finish_run(store, run_id, "succeeded", {"adopted": len(result.adopted)}, None)
    return result
