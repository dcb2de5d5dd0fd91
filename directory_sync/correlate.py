"""Correlation: which territorial person does a new source account belong to?

Rules are tried against every plausible candidate person, each rule with a confidence (configured in
`mappings/correlation.yaml`, see `CorrelationConfig`):

- national_id: the same RPPS, or ADELI (checksum-validated upstream; idNat_PS forms are normalised);
- email: the same professional email;
- name_and_birth_date: the same normalised family name (usage or birth name), given name and birth date;
- fuzzy_name: Jaro-Winkler similarity of the family names and of the given names (each compared on
  its own: comparing "given family" as one string lets a shared first name hide a different family)
  within the same profession.

A candidate's score is the best confidence among the rules it satisfies (fuzzy scaled by similarity).
Vetoes, whatever else matches: a conflicting national id or birth date (a different human), and, short
of a national id match, a candidate who already holds an account at the account's own site (hospital
directories hold one account per person: two at one site with one name are homonyms). Two different
names claiming one national id is a data error: a review, never an automatic link. Above the
auto-link threshold the account is linked; between the thresholds a review case is opened with the
candidates, their scores and the evidence; below, a new person is created.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rapidfuzz.distance import JaroWinkler

from .config import CorrelationConfig
from .mapping import to_ascii

#: A review case lists at most this many candidates (common names at the same profession are many).
_MAX_CANDIDATES = 20

# Particles and articles dropped from family names before comparing ("de La Tour" ~ "DELATOUR").
_PARTICLES = {
    "de",
    "du",
    "des",
    "d",
    "le",
    "la",
    "les",
    "l",
    "van",
    "von",
    "der",
    "den",
    "del",
    "della",
    "di",
}


@functools.lru_cache(maxsize=1 << 16)
def fold(text: str) -> str:
    """Lower case, ASCII (accents stripped, ligatures spelt out: Lætitia -> laetitia), letters and
    digits only, words separated by one space. Names repeat a lot: each is folded once."""
    chars = [c if c.isalnum() else " " for c in to_ascii(text).lower()]
    return " ".join("".join(chars).split())


def normalise_family(text: str | None) -> str:
    """`de La Tour` -> `tour`; `MARTIN-ROUX` -> `martinroux`; `N'Diaye` -> `ndiaye`."""
    if not text:
        return ""
    words = fold(text).split()
    kept = [w for w in words if w not in _PARTICLES] or words
    return "".join(kept)


def normalise_given(text: str | None) -> str:
    """`Marie-Hélène` -> `mariehelene`; `MARIE HELENE` -> `mariehelene`."""
    return "".join(fold(text).split()) if text else ""


class Verdict(enum.StrEnum):
    LINK = "link"
    REVIEW = "review"
    NEW = "new"


@dataclass(slots=True)
class Candidate:
    person_id: str
    score: float
    rule: str
    evidence: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "person": self.person_id,
            "score": round(self.score, 3),
            "rule": self.rule,
            "evidence": self.evidence,
        }


@dataclass(slots=True)
class Decision:
    verdict: Verdict
    reason: str
    person_id: str | None = None
    rule: str | None = None
    score: float = 0.0
    candidates: list[Candidate] = field(default_factory=list)


@dataclass(slots=True)
class _Profile:
    """What correlation knows of one person: gathered from all their accounts."""

    rpps: set[str] = field(default_factory=set)
    adeli: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    families: set[str] = field(default_factory=set)
    givens: set[str] = field(default_factory=set)
    birth_dates: set[str] = field(default_factory=set)
    professions: set[str] = field(default_factory=set)
    sites: set[str] = field(default_factory=set)


#: A probe's values without its site (`Probe.as_row`): rpps, adeli, email, given, families, birth date,
#: profession.
ProbeRow = tuple[str | None, str | None, str, str, tuple[str, ...], str | None, str | None]


@dataclass(slots=True)
class Probe:
    """An account's identifying values, normalised once before it meets the candidates."""

    site: str
    rpps: str | None
    adeli: str | None
    email: str
    given: str
    families: set[str]
    birth_date: str | None
    profession: str | None
    _keys: set[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, values: Mapping[str, str], site: str) -> Probe:
        families = {normalise_family(values.get("family_name")), normalise_family(values.get("birth_name"))}
        return cls(
            site=site,
            rpps=values.get("rpps") or None,
            adeli=values.get("adeli") or None,
            email=(values.get("email") or "").lower(),
            given=normalise_given(values.get("given_name")),
            families=families - {""},
            birth_date=values.get("birth_date") or None,
            profession=values.get("profession") or None,
        )

    def name_keys(self) -> Iterator[str]:
        """Blocking keys: the family name with the given name's first two letters, and the given name
        with the family name's first three (so that a typo late in either name still meets)."""
        for family in self.families:
            yield f"f:{family}|{self.given[:2]}"
            if self.given:
                yield f"g:{self.given}|{family[:3]}"

    def family_keys(self) -> Iterator[str]:
        """The family name alone: indexed always, looked up only for an account with no given name."""
        for family in self.families:
            yield f"f:{family}"

    def _id_keys(self) -> Iterator[str]:
        if self.rpps:
            yield f"r:{self.rpps}"
        if self.adeli:
            yield f"a:{self.adeli}"
        if self.email:
            yield f"e:{self.email}"

    def as_row(self) -> ProbeRow:
        """Its values as plain tuples (cheap to send to another process), without the site."""
        return (
            self.rpps,
            self.adeli,
            self.email,
            self.given,
            tuple(self.families),
            self.birth_date,
            self.profession,
        )

    @classmethod
    def from_row(cls, site: str, row: ProbeRow) -> Probe:
        """The probe of `as_row()`, at `site`."""
        return cls(site, row[0], row[1], row[2], row[3], set(row[4]), row[5], row[6])

    def index_keys(self) -> set[str]:
        """Every key the account is filed under (worked out once: indexed, then stored)."""
        if self._keys is None:
            self._keys = {*self._id_keys(), *self.name_keys(), *self.family_keys()}
        return self._keys

    def lookup_keys(self) -> set[str]:
        """The keys that find the account's candidates: its ids, and its names (the family name alone
        only when the account has no given name: a shared family name is not a lead)."""
        return {*self._id_keys(), *(self.family_keys() if not self.given else self.name_keys())}


def key_hash(key: str) -> int:
    """A correlation key as a signed 64-bit integer, as the directory stores it (`correlation_key`).
    A collision only adds a candidate, which the rules then score on its real values."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


class StoredPeople(Protocol):
    """Where a `PersonIndex` finds the people it has not met yet (the directory, see `reconcile`)."""

    def size(self) -> int:
        """How many accounts there are in all (to choose between looking up and reading everything)."""
        ...

    def people_with(self, keys: Collection[str]) -> Iterable[tuple[str, str]]:
        """(key, person id) for every account filed under one of `keys` (a superset is fine)."""
        ...

    def accounts_of(self, person_ids: Collection[str] | None) -> Iterable[tuple[str, str, Mapping[str, str]]]:
        """(person id, site, values) of every account of these people (None: of everyone)."""
        ...


@dataclass(slots=True)
class Found:
    """What the directory said to a batch of accounts' lookups, read ahead by another process (see
    `reconcile.read_lookups`): the keys looked up, the people filed under them, and the values of
    those people's accounts, (person id, site, `Probe.as_row()`)."""

    keys: set[str]
    filed: list[tuple[str, str]]
    accounts: list[tuple[str, str, ProbeRow]]


class PersonIndex:
    """Every person's identifying values, indexed for the correlation rules, and kept up to date as
    accounts are linked, so that later sites see the people earlier sites created.

    With `stored`, people are read from the directory as they are needed: the people filed under an
    account's lookup keys, and all of a person's accounts before that person is scored (a profile is
    never partial). A run that correlates many accounts (a first run, a large arrival) reads everyone at
    once instead, when that is cheaper than looking them up one by one.
    """

    #: Reading everyone costs about as much as looking up this fraction of the directory's accounts.
    BULK_FRACTION = 0.05

    def __init__(self, stored: StoredPeople | None = None) -> None:
        self.profiles: dict[str, _Profile] = defaultdict(_Profile)
        self._by_key: dict[str, set[str]] = defaultdict(set)
        self._stored = stored
        self._complete = stored is None  # every stored person is in the index
        self._loaded: set[str] = set()  # people whose stored accounts are all in the index
        self._fetched: set[str] = set()  # keys already looked up in the directory
        self._lookups = 0
        self._bulk_after: int | None = None
        self.people_read = 0  # for the run's report: how many people were read from the directory
        #: People this run has given values to (accounts planned: updated, linked, created): what the
        #: directory said of them before may be out of date (see `absorb`).
        self.changed: set[str] = set()

    def add(
        self,
        person_id: str,
        values: Mapping[str, str],
        site: str,
        probe: Probe | None = None,
        *,
        new: bool = False,
    ) -> None:
        """Index one account's values under its person, as the run plans it (`probe`: the same values,
        already normalised; `new`: a person created in this run, of whom the directory knows nothing
        yet)."""
        self.changed.add(person_id)
        self._add(person_id, probe or Probe.of(values, site), new=new)

    def _add(self, person_id: str, probe: Probe, *, new: bool = False) -> None:
        """Index the values and file the keys of one account of `person_id`."""
        self._add_values(person_id, probe)
        for key in probe.index_keys():
            self._by_key[key].add(person_id)
        if new:
            self._loaded.add(person_id)

    def _add_values(self, person_id: str, probe: Probe) -> None:
        profile = self.profiles[person_id]
        profile.sites.add(probe.site)
        if probe.rpps:
            profile.rpps.add(probe.rpps)
        if probe.adeli:
            profile.adeli.add(probe.adeli)
        if probe.email:
            profile.emails.add(probe.email)
        profile.families |= probe.families
        if probe.given:
            profile.givens.add(probe.given)
        if probe.birth_date:
            profile.birth_dates.add(probe.birth_date)
        if probe.profession:
            profile.professions.add(probe.profession)

    def candidates(self, probe: Probe) -> set[str]:
        """People who could be this account's person: sharing an id, an email, or a name key."""
        keys = probe.lookup_keys()
        if not self._complete:
            self._fetch(keys)
        found: set[str] = set()
        for key in keys:
            found |= self._by_key.get(key, set())
        if not self._complete:
            self._read(found - self._loaded)
        return found

    def prepare(self, probes: Collection[Probe]) -> None:
        """Read at once the candidates of several accounts about to be correlated (a batch of a
        delta's new accounts): two queries for the batch instead of two per account."""
        if self._complete or not probes:
            return
        keys: set[str] = set()
        for probe in probes:
            keys |= probe.lookup_keys()
        self._fetch(keys, accounts=len(probes))

    def absorb(self, found: Found) -> None:
        """Take what the directory said to lookups read ahead (another process read them while this
        one applied the sites before, see `reconcile.read_lookups`), as if this index had looked them
        up itself. That read may predate the changes this run made: people this run changed keep
        their own values (their accounts are read here, if they turn out to be candidates), as do
        people whose accounts were read here already."""
        if self._complete:
            return
        for key, person_id in found.filed:
            self._by_key[key].add(person_id)
        taken: set[str] = set()
        for person_id, site, row in found.accounts:
            if person_id not in taken and (person_id in self._loaded or person_id in self.changed):
                continue
            taken.add(person_id)
            self._add_values(person_id, Probe.from_row(site, row))
        self._loaded |= taken
        self._fetched |= found.keys
        self.people_read += len(taken)

    def load_everything(self) -> None:
        """Read every stored person (values already indexed stay: the index holds sets)."""
        if self._complete or self._stored is None:
            return
        for person_id, site, values in self._stored.accounts_of(None):
            self._add(person_id, Probe.of(values, site))
        self._complete = True

    def _fetch(self, keys: set[str], accounts: int = 1) -> None:
        assert self._stored is not None
        wanted = keys - self._fetched
        if not wanted:
            return
        if self._bulk_after is None:
            self._bulk_after = int(self._stored.size() * self.BULK_FRACTION)
        self._lookups += accounts
        if self._lookups > self._bulk_after:
            self.load_everything()
            return
        found: set[str] = set()
        for key, person_id in self._stored.people_with(wanted):
            self._by_key[key].add(person_id)
            found.add(person_id)
        self._read(found - self._loaded)
        self._fetched |= wanted

    def _read(self, person_ids: set[str]) -> None:
        if not person_ids:
            return
        assert self._stored is not None
        for person_id, site, values in self._stored.accounts_of(person_ids):
            self._add_values(person_id, Probe.of(values, site))
        self._loaded |= person_ids
        self.people_read += len(person_ids)


class Correlator:
    """Applies the configured rules to an account against the people of a `PersonIndex`."""

    def __init__(self, config: CorrelationConfig, index: PersonIndex) -> None:
        self.config = config
        self.index = index
        self._rules = {rule.match: rule for rule in config.rules}

    def decide(self, probe: Probe, *, excluded: Iterable[str] = ()) -> Decision:
        """Link, review or new, for an account (normalised as `probe`). `excluded` people were ruled
        out by a human (a split): they are never candidates again for this account."""
        ruled_out = set(excluded)
        scored = [
            c
            for c in (self._score(pid, probe) for pid in self.index.candidates(probe) if pid not in ruled_out)
            if c is not None and c.score > 0
        ]
        scored.sort(key=lambda c: (-c.score, c.person_id))
        thresholds = self.config.thresholds
        if not scored or scored[0].score < thresholds.review:
            reason = "no candidate" if not scored else f"best candidate scored {scored[0].score:.2f}"
            return Decision(Verdict.NEW, reason, candidates=scored)
        best = scored[0]
        runner_up = scored[1].score if len(scored) > 1 else 0.0
        if best.score >= thresholds.auto_link and runner_up < thresholds.auto_link:
            return Decision(
                Verdict.LINK,
                f"{best.rule} ({', '.join(best.evidence)})",
                best.person_id,
                best.rule,
                best.score,
                scored,
            )
        if best.score >= thresholds.auto_link:
            reason = f"{sum(1 for c in scored if c.score >= thresholds.auto_link)} people match as well"
        else:
            reason = f"best candidate scored {best.score:.2f}, below auto-link {thresholds.auto_link:.2f}"
        return Decision(Verdict.REVIEW, reason, candidates=scored[:_MAX_CANDIDATES])

    def _score(self, person_id: str, probe: Probe) -> Candidate | None:
        profile = self.index.profiles.get(person_id)
        if profile is None:
            return None
        # Vetoes: a different national id, or a different birth date, is a different human.
        if probe.rpps and profile.rpps and probe.rpps not in profile.rpps:
            return None
        if probe.adeli and profile.adeli and probe.adeli not in profile.adeli:
            return None
        if probe.birth_date and profile.birth_dates and probe.birth_date not in profile.birth_dates:
            return None
        same_id = bool(
            (probe.rpps and probe.rpps in profile.rpps) or (probe.adeli and probe.adeli in profile.adeli)
        )
        if probe.site in profile.sites and not same_id:
            return None  # one account per person per site: a second one with this name is a homonym
        best: Candidate | None = None

        def consider(rule: str, score: float, evidence: list[str]) -> None:
            nonlocal best
            if best is None or score > best.score:
                best = Candidate(person_id, score, rule, evidence)

        rules = self._rules
        fuzzy = rules.get("fuzzy_name")
        # Within the same profession; people with none (administrative staff) compare among themselves.
        # An account with no given name (an incomplete entry) has too little to go on: any profession,
        # and a lower score, so that it can only ever reach review.
        profession = probe.profession
        same_profession = profession in profile.professions if profession else not profile.professions
        fuzzy_applies = (
            fuzzy is not None
            and bool(probe.families)
            and not (fuzzy.same_profession and not same_profession and probe.given)
        )
        same_birth_date = bool(probe.birth_date and probe.birth_date in profile.birth_dates)
        family_similarity = given_similarity = 0.0
        if same_id or same_birth_date or fuzzy_applies:  # the names count: compare them (Jaro-Winkler)
            family_similarity = _best(probe.families, profile.families)
            given_similarity = _best({probe.given} - {""}, profile.givens)
        same_name = family_similarity == 1.0 and given_similarity == 1.0
        if "national_id" in rules and same_id:
            evidence = [f"RPPS {probe.rpps}" if probe.rpps in profile.rpps else f"ADELI {probe.adeli}"]
            confidence = rules["national_id"].confidence
            names_known = probe.families and profile.families
            if names_known and family_similarity < 0.85 and not same_name:
                # Two different names claiming one national id: a data error somewhere, not a match.
                evidence.append("but the names differ")
                thresholds = self.config.thresholds
                confidence = min(confidence, (thresholds.auto_link + thresholds.review) / 2)
            consider("national_id", confidence, evidence)
        if "email" in rules and probe.email and probe.email in profile.emails:
            consider("email", rules["email"].confidence, [f"email {probe.email}"])
        if "name_and_birth_date" in rules and same_name and same_birth_date:
            consider(
                "name_and_birth_date",
                rules["name_and_birth_date"].confidence,
                ["same names", f"born {probe.birth_date}"],
            )
        if fuzzy is not None and fuzzy_applies:
            similarity = min(family_similarity, given_similarity) if probe.given else family_similarity
            if similarity >= fuzzy.min_similarity:
                evidence = ["same names" if same_name else f"names {similarity:.0%} alike"]
                if not probe.given:
                    evidence = ["same family name, no given name on the account"]
                if profession:
                    evidence.append(f"same profession {profession}")
                consider(
                    "fuzzy_name", fuzzy.confidence * similarity * (1.0 if probe.given else 0.9), evidence
                )
        return best


def _best(names: set[str], known: set[str]) -> float:
    """The best Jaro-Winkler similarity between any of `names` and any of `known` (1.0 if equal)."""
    if names & known:
        return 1.0
    return max((JaroWinkler.similarity(a, b) for a in names for b in known), default=0.0)
