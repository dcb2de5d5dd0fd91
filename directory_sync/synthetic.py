"""A seeded synthetic GHT: hospitals, staff, their directory entries, and the truth about who is who.

Tests load small GHTs into real slapd servers; benchmarks load 100,000+ accounts over ten sites. Both need
data that looks like what hospitals really hand over, *and* the ground truth that no real export has: which
accounts belong to the same human. This module makes both, deterministically from a seed.

The model:

- A GHT of N sites (Provence / Occitanie hospitals), the first ones the largest.
- A population of people, each working at 1..k sites (`multi_site_share` of them at two or more), with one
  account per site. Names are French (accents, hyphens, apostrophes, particles), professions follow the
  national G15 codes in realistic proportions, plus non-health staff (administrative, technical, IT).
- Doctors, pharmacists, midwives and physiotherapists have an RPPS (11 digits, Luhn key).
- Each site stores things in its own "dialect", like real hospitals do:

  ====  =====================  ==========================  ====================  ==================
  name  login                  RPPS                        job                   department
  ====  =====================  ==========================  ====================  ==================
  a     ``mdupont``            ``businessCategory`` (11)   French text, `title`  label in ``ou``
  b     ``marie.dupont``       ``employeeType`` "8"+RPPS   short code, `title`   code in ``departmentNumber``
  c     ``DUPOMA1`` (7 chars)  not recorded                UPPER ASCII, `title`  UPPER ASCII in ``ou``
  ====  =====================  ==========================  ====================  ==================

  Dialect c also stores ``sn`` / ``givenName`` upper-case without accents (``MARIE HELENE``), while
  ``cn`` keeps the accents. Mailboxes are ``prenom.nom@<domain>`` at a and b, ``initiales.nom@`` at c.
  Collisions get a digit (``mdupont2``, ``DUPOMA2``). Matricules go in ``employeeNumber``; dialect a also
  has ``telephoneNumber``, dialect b ``displayName`` (``DUPONT Marie``). Every entry is a plain
  ``inetOrgPerson``: OpenLDAP's core, cosine and inetorgperson schemas are enough.

- Deliberate hard cases, listed in `SyntheticGHT.hard_cases` (kind -> person keys): homonyms at the same
  site and at different sites (different RPPS when doctors), a nurse at two sites of different dialects,
  an RPPS typo (checksum fails) at one site, odd white space, empty values; and, independently of
  `hard_cases`, a share of doctors whose RPPS a recording site forgot (``rpps_missing``). Ordinary
  homonyms also happen by chance in large populations, as in real life; only the deliberate ones are listed.

Everything is drawn from one `random.Random(seed)`, entryUUIDs are `uuid5` of the seed, site and login:
the same arguments give byte-identical LDIF. Accounts are kept as small slotted objects and rendered on
demand: 100,000 accounts over ten sites hold about 80 MB and are generated and written (41 MB of LDIF)
in about two seconds.

CLI: ``python -m directory_sync.synthetic --seed 1 --sites 10 --accounts 100000 --out DIR`` writes
``DIR/<code>.ldif`` and ``DIR/truth.json`` (and with ``--mappings``, ``DIR/mappings/<code>.yaml``).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
import unicodedata
import uuid
from bisect import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from random import Random
from typing import Any

import yaml

from .identifiers import luhn_key

__all__ = [
    "DEFAULT_HARD_CASES",
    "DIALECTS",
    "HARD_CASE_KINDS",
    "SiteSpec",
    "SyntheticAccount",
    "SyntheticGHT",
    "generate",
    "job_title_map",
    "ldif_line",
    "main",
]

DIALECTS = ("a", "b", "c")

#: Kinds of deliberate hard cases and how many of each `generate(hard_cases=True)` makes.
#: Homonym counts are pairs of people; the others are people.
DEFAULT_HARD_CASES: Mapping[str, int] = {
    "homonym_same_site": 2,
    "homonym_cross_site": 2,
    "nurse_two_sites": 3,
    "rpps_typo": 3,
    "odd_whitespace": 5,
    "empty_values": 3,
}
#: Every key of `SyntheticGHT.hard_cases` (``rpps_missing`` is driven by `missing_rpps_share`).
HARD_CASE_KINDS = (*DEFAULT_HARD_CASES, "rpps_missing")

_PEOPLE_OBJECT_CLASSES = ("top", "person", "organizationalPerson", "inetOrgPerson")


# --------------------------------------------------------------------------------------------------
# Sites
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteSpec:
    """One hospital of the GHT and the dialect its directory speaks."""

    code: str  # "ch-avignon"
    name: str  # "Centre hospitalier d'Avignon"
    finess: str  # 9 digits: department prefix (84, 13, 30, ...) + 6 digits + Luhn key
    suffix: str  # "dc=ch-avignon,dc=fr"
    domain: str  # "ch-avignon.fr"
    dialect: str  # "a" | "b" | "c"


# code, name, département, FINESS body digits (7th and 8th of the number, before the key)
_SITES: tuple[tuple[str, str, str, str], ...] = (
    ("ch-avignon", "Centre hospitalier d'Avignon", "84", "000008"),
    ("ch-cavaillon", "Centre hospitalier de Cavaillon-Lauris", "84", "000012"),
    ("ch-carpentras", "Centre hospitalier de Carpentras", "84", "000020"),
    ("ch-apt", "Centre hospitalier du Pays d'Apt", "84", "000046"),
    ("ch-orange", "Centre hospitalier d'Orange", "84", "000053"),
    ("ch-valreas", "Centre hospitalier de Valréas", "84", "000061"),
    ("ch-pertuis", "Centre hospitalier de Pertuis", "84", "000079"),
    ("ch-vaison", "Centre hospitalier de Vaison-la-Romaine", "84", "000087"),
    ("ch-isle-sur-la-sorgue", "Centre hospitalier de L'Isle-sur-la-Sorgue", "84", "000095"),
    ("ch-bollene", "Centre hospitalier de Bollène", "84", "000103"),
    ("ch-montfavet", "Centre hospitalier de Montfavet", "84", "000111"),
    ("ch-sault", "Hôpital local de Sault", "84", "000129"),
    ("ch-arles", "Centre hospitalier d'Arles", "13", "078036"),
    ("ch-tarascon", "Centre hospitalier de Tarascon", "13", "078044"),
    ("ch-bagnols-sur-ceze", "Centre hospitalier de Bagnols-sur-Cèze", "30", "078051"),
    ("ch-uzes", "Centre hospitalier d'Uzès", "30", "078069"),
    ("ch-pont-saint-esprit", "Centre hospitalier de Pont-Saint-Esprit", "30", "078077"),
    ("ch-manosque", "Centre hospitalier de Manosque", "04", "078085"),
    ("ch-salon", "Centre hospitalier de Salon-de-Provence", "13", "078093"),
    ("ch-chateaurenard", "Hôpital de Châteaurenard", "13", "078101"),
)


def _site_specs(count: int) -> list[SiteSpec]:
    """The first `count` sites; beyond the named ones, numbered sites in the Vaucluse."""
    specs = []
    for index in range(count):
        if index < len(_SITES):
            code, name, department, middle = _SITES[index]
        else:
            code = f"ch-site-{index + 1:02d}"
            name = f"Centre hospitalier n°{index + 1}"
            department, middle = "84", f"{900000 + index:06d}"
        body = department + middle
        specs.append(
            SiteSpec(
                code=code,
                name=name,
                finess=body + luhn_key(body),
                suffix=f"dc={code},dc=fr",
                domain=f"{code}.fr",
                dialect=DIALECTS[index % len(DIALECTS)],
            )
        )
    return specs


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

# fmt: off
_FEMALE = (
    "Marie", "Nathalie", "Isabelle", "Sylvie", "Catherine", "Françoise", "Valérie", "Christine", "Sandrine",
    "Céline", "Stéphanie", "Sophie", "Aurélie", "Julie", "Émilie", "Camille", "Laura", "Manon", "Léa",
    "Chloé", "Sarah", "Pauline", "Marine", "Mélanie", "Caroline", "Virginie", "Audrey", "Laetitia",
    "Lætitia", "Karine", "Patricia", "Véronique", "Nadia", "Hélène", "Anne", "Martine", "Brigitte",
    "Monique", "Chantal", "Sabine", "Corinne", "Florence", "Delphine", "Élodie", "Amandine", "Charlotte",
    "Lucie", "Clémence", "Océane", "Noémie", "Justine", "Margaux", "Anaïs", "Inès", "Yasmina", "Fatima",
    "Samira", "Leïla", "Aïcha", "Khadija", "Awa", "Fatou", "Aminata", "Mariama", "Nadège", "Gaëlle",
    "Maëlle", "Solène", "Bérénice", "Agnès", "Geneviève", "Josiane", "Ghislaine", "Éliane", "Mireille",
    "Odile", "Danièle", "Joëlle", "Michèle", "Régine", "Séverine", "Estelle", "Coralie", "Jessica",
    "Vanessa", "Émeline", "Ophélie", "Cécile", "Béatrice", "Claire", "Laurence", "Muriel", "Nicole",
    "Pascale", "Dominique", "Frédérique", "Annabelle", "Alexandra", "Zoé", "Jade", "Lina", "Elsa",
    "Romane", "Louise", "Alice", "Juliette", "Eva", "Maëva", "Nolwenn", "Rose", "Mathilde", "Héloïse",
    "Salomé", "Myriam", "Rachida", "Malika", "Magali", "Roseline", "Mireia", "Ludivine", "Gwladys",
)
_FEMALE_COMPOUND = (
    "Marie-Hélène", "Marie-Christine", "Anne-Sophie", "Marie-Claire", "Marie-Noëlle", "Anne-Laure",
    "Marie-France", "Marie-Pierre", "Marie-José", "Anne-Marie", "Marie-Thérèse", "Marie-Laure",
    "Anne-Cécile", "Marie-Ange", "Marie-Agnès",
)
_MALE = (
    "Jean", "Pierre", "Michel", "Philippe", "Alain", "Patrick", "Nicolas", "Christophe", "Stéphane",
    "Laurent", "Frédéric", "Éric", "Olivier", "Sébastien", "Julien", "David", "Thomas", "Guillaume",
    "Vincent", "Jérôme", "François", "Thierry", "Pascal", "Daniel", "Bernard", "Didier", "Franck", "Bruno",
    "Lionel", "Cédric", "Fabrice", "Ludovic", "Mickaël", "Yannick", "Arnaud", "Benoît", "Damien",
    "Grégory", "Jérémy", "Kévin", "Maxime", "Alexandre", "Antoine", "Hugo", "Lucas", "Louis", "Théo",
    "Mathieu", "Romain", "Florian", "Adrien", "Baptiste", "Clément", "Quentin", "Anthony", "Loïc", "Gaël",
    "Joël", "Noël", "Raphaël", "Mohamed", "Karim", "Mehdi", "Rachid", "Yacine", "Samir", "Nabil",
    "Sofiane", "Mamadou", "Moussa", "Ibrahima", "Ousmane", "Amadou", "Hervé", "René", "André", "Gérard",
    "Jacques", "Serge", "Régis", "Rémi", "Aurélien", "Cyril", "Emmanuel", "Fabien", "Gilles", "Hugues",
    "Xavier", "Yves", "Gaëtan", "Matthieu", "Tristan", "Valentin", "Victor", "Paul", "Léo", "Nathan",
    "Enzo", "Aymeric", "Jordan", "Dominique", "Camille", "Marius", "Frédéri", "Bastien", "Denis", "Marcel",
)
_MALE_COMPOUND = (
    "Jean-François", "Jean-Baptiste", "Jean-Pierre", "Jean-Luc", "Jean-Marc", "Jean-Michel", "Pierre-Yves",
    "Jean-Philippe", "Jean-Christophe", "Jean-Claude", "Paul-Henri", "Jean-Noël", "Jean-Sébastien",
    "François-Xavier", "Jean-Jérôme",
)
_FAMILY = (
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau",
    "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier",
    "Morel", "Girard", "André", "Lefèvre", "Mercier", "Dupont", "Lambert", "Bonnet", "François",
    "Martinez", "Legrand", "Garnier", "Faure", "Rousseau", "Blanc", "Guérin", "Muller", "Henry", "Roussel",
    "Nicolas", "Perrin", "Morin", "Mathieu", "Clément", "Gauthier", "Dumont", "Lopez", "Fontaine",
    "Chevalier", "Robin", "Masson", "Sanchez", "Gérard", "Nguyen", "Boyer", "Denis", "Lemaire", "Duval",
    "Joly", "Gautier", "Roger", "Roche", "Roy", "Noël", "Meyer", "Lucas", "Meunier", "Jean", "Perez",
    "Marchand", "Dufour", "Blanchard", "Marie", "Barbier", "Brun", "Dumas", "Brunet", "Schmitt", "Leroux",
    "Colin", "Fernandez", "Pierre", "Renard", "Arnaud", "Rolland", "Caron", "Aubert", "Giraud", "Leclerc",
    "Vidal", "Bourgeois", "Renaud", "Lemoine", "Picard", "Gaillard", "Philippe", "Leclercq", "Lacroix",
    "Fabre", "Dupuis", "Olivier", "Rodriguez", "Da Silva", "Hubert", "Louis", "Charles", "Guillot",
    "Rivière", "Le Gall", "Guillaume", "Adam", "Rey", "Moulin", "Gonzalez", "Berger", "Lecomte", "Ménard",
    "Fleury", "Deschamps", "Carpentier", "Julien", "Benoît", "Paris", "Maillard", "Marchal", "Aubry",
    "Vasseur", "Le Roux", "Renault", "Jacquet", "Collet", "Prévost", "Poirier", "Charpentier", "Royer",
    "Huet", "Baron", "Dupuy", "Pons", "Paul", "Laine", "Carré", "Breton", "Rémy", "Schneider", "Perrot",
    "Guyot", "Barre", "Marty", "Cousin", "Le Goff", "N'Diaye", "D'Angelo", "de La Fontaine", "Dos Santos",
    "de Sousa", "Ferreira", "Pereira", "Rodrigues", "Benali", "Bouzid", "Haddad", "Belkacem", "Mansouri",
    "Cherif", "Diallo", "Traoré", "Diop", "Camara", "Koné", "Sow", "Ba", "Tran", "Pham", "Lê", "Rossi",
    "Ricci", "Esposito", "Bianchi", "D'Amico", "Santoro", "Lombardi", "Giordano", "Reynaud", "Aubanel",
    "Mistral", "Pellegrin", "Chabaud", "Barthélemy", "Audibert", "Bonnefoy", "Maurel", "Reboul", "Imbert",
    "Arnoux", "Granier", "Chauvet", "Sabatier", "Bérenguier", "Gasquet", "Sicard", "Bérard", "Teissier",
    "Espitalier", "Jourdan", "Reynier", "Béranger", "Léger", "Hébert", "Thébault", "Bénard", "Le Bihan",
    "Le Guen", "L'Hôte", "Dell'Acqua", "D'Alessandro", "Saint-Martin", "de Villeneuve", "du Puy",
    "Castagnier", "Roumanille", "Fabregoul", "Barjavel", "Orsini", "Santini", "Peretti", "Alibert",
    "Blanchet", "Courtois", "Delmas", "Estève", "Fortuné", "Gaudin", "Icard", "Jaubert", "Lions",
    "Mouret", "Nègre", "Ollivier", "Pécout", "Quenin", "Raspail", "Soulier", "Tardieu", "Vial", "Zerbib",
)
# fmt: on
# Compound family names are built from these (no particle, no apostrophe): Martin-Dubois, Roux-Faure...
_FAMILY_SIMPLE = tuple(name for name in _FAMILY if name.isalpha())
_NURSE_GIVEN = ("Marie-Hélène", "Marie-Noëlle", "Anne-Françoise", "Marie-Thérèse", "Anne-Cécile")
_NURSE_FAMILY = ("Lefèvre", "Ménard", "de La Fontaine", "N'Diaye", "Martin-Dubois", "Béranger", "Le Goff")

_LIGATURES = str.maketrans({"œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE", "ß": "ss", "’": "'"})


@cache
def _ascii(text: str) -> str:
    """`text` without accents or ligatures (Hélène -> Helene, Lætitia -> Laetitia)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
    return decomposed.encode("ascii", "ignore").decode("ascii")


@cache
def _slug(text: str, keep_hyphen: bool) -> str:
    """Lower-case ASCII letters of `text` for logins and mailboxes (N'Diaye -> ndiaye)."""
    allowed = "abcdefghijklmnopqrstuvwxyz-" if keep_hyphen else "abcdefghijklmnopqrstuvwxyz"
    return "".join(c for c in _ascii(text).lower() if c in allowed).strip("-")


@cache
def _upper_plain(text: str) -> str:
    """How old HR-fed directories (dialect c) write names and labels: MARIE HELENE, SAGE FEMME."""
    return " ".join(_ascii(text).upper().replace("-", " ").split())


# --------------------------------------------------------------------------------------------------
# Departments and professions
# --------------------------------------------------------------------------------------------------

# key -> (label, dialect-b code)
_DEPARTMENTS: Mapping[str, tuple[str, str]] = {
    "urg": ("Urgences", "URG"),
    "smur": ("SMUR", "SMUR"),
    "cardio": ("Cardiologie", "CARDIO"),
    "pedia": ("Pédiatrie", "PEDIA"),
    "neonat": ("Néonatologie", "NEONAT"),
    "bloc": ("Bloc opératoire", "BLOC"),
    "anesth": ("Anesthésie", "ANESTH"),
    "rea": ("Réanimation", "REA"),
    "geria": ("Gériatrie", "GERIA"),
    "medint": ("Médecine interne", "MEDINT"),
    "pneumo": ("Pneumologie", "PNEUMO"),
    "gastro": ("Hépato-gastro-entérologie", "HGE"),
    "neuro": ("Neurologie", "NEURO"),
    "onco": ("Oncologie", "ONCO"),
    "ortho": ("Chirurgie orthopédique", "CHIORTHO"),
    "visc": ("Chirurgie viscérale", "CHIVISC"),
    "psy": ("Psychiatrie", "PSYCHIA"),
    "palli": ("Soins palliatifs", "USP"),
    "mater": ("Maternité", "MATER"),
    "gyneco": ("Gynécologie-obstétrique", "GYNOBS"),
    "ehpad": ("EHPAD", "EHPAD"),
    "usld": ("Unité de soins de longue durée", "USLD"),
    "imagerie": ("Imagerie médicale", "IMAGERIE"),
    "labo": ("Laboratoire de biologie médicale", "LABO"),
    "pharma": ("Pharmacie", "PHARMA"),
    "mpr": ("Médecine physique et de réadaptation", "MPR"),
    "diet": ("Diététique", "DIET"),
    "dsoins": ("Direction des soins", "DSOINS"),
    "dg": ("Direction générale", "DG"),
    "drh": ("Direction des ressources humaines", "DRH"),
    "daf": ("Direction des affaires financières", "DAF"),
    "bde": ("Bureau des entrées", "BDE"),
    "st": ("Services techniques", "ST"),
    "restau": ("Restauration", "RESTAU"),
    "log": ("Logistique", "LOG"),
    "blanch": ("Blanchisserie", "BLANCH"),
    "dsi": ("DSI", "DSI"),
}

# fmt: off
_CLINICAL = (
    ("urg", 10), ("smur", 2), ("cardio", 6), ("pedia", 5), ("neonat", 2), ("bloc", 8), ("rea", 6),
    ("geria", 9), ("medint", 6), ("pneumo", 4), ("gastro", 4), ("neuro", 4), ("onco", 4), ("ortho", 5),
    ("visc", 5), ("psy", 6), ("palli", 2), ("mater", 4), ("gyneco", 3), ("ehpad", 6), ("usld", 4),
)
# fmt: on


@dataclass(frozen=True)
class _Profession:
    """A profession: its G15 code ("" for non-health staff) and how each dialect writes its job titles.

    `titles_a` / `titles_b`: (title, weight); `titles_c`: (female title, male title, weight).
    """

    key: str
    g15: str
    weight: float
    female: float  # share of women
    rpps: bool
    titles_a: tuple[tuple[str, float], ...]
    titles_b: tuple[tuple[str, float], ...]
    titles_c: tuple[tuple[str, str, float], ...]
    departments: tuple[tuple[str, float], ...]


# fmt: off
_PROFESSIONS: tuple[_Profession, ...] = (
    _Profession(
        "nurse", "60", 30, 0.87, False,
        (("Infirmier(ère) diplômé(e) d'État", 75), ("Infirmier(ère) de bloc opératoire", 6),
         ("Infirmier(ère) anesthésiste", 5), ("Cadre de santé", 6), ("Infirmier(ère) puériculteur(trice)", 4),
         ("Infirmier(ère) en pratique avancée", 2)),
        (("IDE", 77), ("IBODE", 6), ("IADE", 5), ("CDS", 6), ("IPDE", 4), ("IPA", 2)),
        (("INFIRMIERE", "INFIRMIER", 80), ("INFIRMIERE BLOC", "INFIRMIER BLOC", 6),
         ("INFIRMIERE ANESTHESISTE", "INFIRMIER ANESTHESISTE", 5), ("CADRE DE SANTE", "CADRE DE SANTE", 5),
         ("PUERICULTRICE", "PUERICULTEUR", 4)),
        (*_CLINICAL, ("anesth", 2), ("imagerie", 1), ("dsoins", 1)),
    ),
    _Profession(
        "aide", "35", 22, 0.88, False,
        (("Aide-soignant(e)", 90), ("Aide-soignant(e) principal(e)", 10)),
        (("AS", 1),),
        (("AIDE SOIGNANTE", "AIDE SOIGNANT", 1),),
        (*_CLINICAL, ("ehpad", 8), ("usld", 5), ("geria", 5)),
    ),
    _Profession(
        "puericulture", "37", 1.5, 0.97, False,
        (("Auxiliaire de puériculture", 1),),
        (("AP", 1),),
        (("AUXILIAIRE PUERICULTURE", "AUXILIAIRE PUERICULTURE", 1),),
        (("pedia", 3), ("neonat", 3), ("mater", 3)),
    ),
    _Profession(
        "doctor", "10", 10, 0.55, True,
        (("Praticien hospitalier", 45), ("Praticien contractuel", 15), ("Assistant spécialiste", 8),
         ("Interne", 20), ("Docteur junior", 4), ("Praticien attaché", 3), ("Chef de service", 5)),
        (("PH", 50), ("PC", 15), ("ASSP", 8), ("INT", 20), ("DJ", 4), ("PA", 3)),
        (("MEDECIN", "MEDECIN", 70), ("INTERNE", "INTERNE", 25), ("MEDECIN ATTACHE", "MEDECIN ATTACHE", 5)),
        (("urg", 10), ("smur", 2), ("cardio", 6), ("pedia", 5), ("neonat", 1), ("anesth", 7), ("rea", 5),
         ("geria", 6), ("medint", 6), ("pneumo", 4), ("gastro", 4), ("neuro", 4), ("onco", 4), ("ortho", 5),
         ("visc", 5), ("psy", 6), ("palli", 2), ("gyneco", 4), ("imagerie", 5), ("labo", 3), ("mpr", 2)),
    ),
    _Profession(
        "pharmacist", "21", 0.6, 0.65, True,
        (("Pharmacien praticien hospitalier", 70), ("Pharmacien contractuel", 10),
         ("Interne en pharmacie", 20)),
        (("PHARM", 80), ("INTPH", 20)),
        (("PHARMACIENNE", "PHARMACIEN", 80), ("INTERNE PHARMACIE", "INTERNE PHARMACIE", 20)),
        (("pharma", 1),),
    ),
    _Profession(
        "midwife", "50", 1.5, 0.97, True,
        (("Sage-femme", 90), ("Sage-femme coordinatrice", 10)),
        (("SF", 90), ("SFC", 10)),
        (("SAGE FEMME", "SAGE FEMME", 90), ("SAGE FEMME COORDINATRICE", "SAGE FEMME COORDINATEUR", 10)),
        (("mater", 6), ("gyneco", 4)),
    ),
    _Profession(
        "physio", "70", 1.2, 0.6, True,
        (("Masseur-kinésithérapeute", 1),),
        (("MK", 1),),
        (("KINESITHERAPEUTE", "KINESITHERAPEUTE", 1),),
        (("mpr", 6), ("geria", 3), ("rea", 2), ("pneumo", 1)),
    ),
    _Profession(
        "preparateur", "38", 0.8, 0.8, False,
        (("Préparateur(trice) en pharmacie hospitalière", 1),),
        (("PPH", 1),),
        (("PREPARATRICE PHARMACIE", "PREPARATEUR PHARMACIE", 1),),
        (("pharma", 1),),
    ),
    _Profession(
        "manipulateur", "98", 1.5, 0.7, False,
        (("Manipulateur(trice) en électroradiologie médicale", 1),),
        (("MERM", 1),),
        (("MANIPULATRICE RADIO", "MANIPULATEUR RADIO", 1),),
        (("imagerie", 1),),
    ),
    _Profession(
        "laboratoire", "86", 1.0, 0.75, False,
        (("Technicien(ne) de laboratoire", 1),),
        (("TLM", 1),),
        (("TECHNICIENNE LABO", "TECHNICIEN LABO", 1),),
        (("labo", 1),),
    ),
    _Profession(
        "psychologue", "93", 0.6, 0.8, False,
        (("Psychologue", 1),),
        (("PSY", 1),),
        (("PSYCHOLOGUE", "PSYCHOLOGUE", 1),),
        (("psy", 5), ("pedia", 1), ("geria", 1), ("onco", 1), ("palli", 1)),
    ),
    _Profession(
        "dieteticien", "95", 0.3, 0.9, False,
        (("Diététicien(ne)", 1),),
        (("DIET", 1),),
        (("DIETETICIENNE", "DIETETICIEN", 1),),
        (("diet", 1),),
    ),
    _Profession(
        "ergotherapeute", "94", 0.3, 0.85, False,
        (("Ergothérapeute", 1),),
        (("ERGO", 1),),
        (("ERGOTHERAPEUTE", "ERGOTHERAPEUTE", 1),),
        (("mpr", 3), ("geria", 2)),
    ),
    _Profession(
        "ambulancier", "36", 0.5, 0.3, False,
        (("Ambulancier(ère)", 1),),
        (("AMB", 1),),
        (("AMBULANCIERE", "AMBULANCIER", 1),),
        (("smur", 3), ("urg", 1), ("log", 1)),
    ),
    _Profession(
        "admin", "", 13, 0.82, False,
        (("Adjoint(e) administratif(ve)", 45), ("Assistant(e) médico-administratif(ve)", 35),
         ("Adjoint(e) des cadres hospitaliers", 10), ("Attaché(e) d'administration hospitalière", 7),
         ("Directeur(trice) d'hôpital", 3)),
        (("ADM", 45), ("AMA", 35), ("ACH", 10), ("AAH", 7), ("DIR", 3)),
        (("ADJOINTE ADMINISTRATIVE", "ADJOINT ADMINISTRATIF", 45),
         ("SECRETAIRE MEDICALE", "SECRETAIRE MEDICAL", 35),
         ("ADJOINTE DES CADRES", "ADJOINT DES CADRES", 10),
         ("ATTACHEE ADMINISTRATION", "ATTACHE ADMINISTRATION", 7),
         ("DIRECTRICE", "DIRECTEUR", 3)),
        (("dg", 2), ("drh", 4), ("daf", 4), ("bde", 6), ("dsoins", 2), ("urg", 2), ("cardio", 1),
         ("pedia", 1), ("geria", 1), ("imagerie", 2), ("ortho", 1), ("gyneco", 1), ("onco", 1)),
    ),
    _Profession(
        "technique", "", 10, 0.45, False,
        (("Agent(e) des services hospitaliers", 40), ("Ouvrier(ère) principal(e)", 20),
         ("Agent(e) de maîtrise", 10), ("Technicien(ne) hospitalier(ère)", 15), ("Cuisinier(ère)", 8),
         ("Brancardier(ère)", 7)),
        (("ASH", 40), ("OP", 20), ("AM", 10), ("TECH", 15), ("CUIS", 8), ("BRANC", 7)),
        (("ASH", "ASH", 40), ("OUVRIERE", "OUVRIER", 20), ("AGENT DE MAITRISE", "AGENT DE MAITRISE", 10),
         ("TECHNICIENNE", "TECHNICIEN", 15), ("CUISINIERE", "CUISINIER", 8),
         ("BRANCARDIERE", "BRANCARDIER", 7)),
        (("st", 6), ("restau", 5), ("log", 5), ("blanch", 3), ("geria", 3), ("ehpad", 3), ("urg", 2),
         ("medint", 2)),
    ),
    _Profession(
        "informatique", "", 1.5, 0.3, False,
        (("Technicien(ne) informatique", 60), ("Ingénieur(e) hospitalier(ère)", 30),
         ("Responsable de la sécurité des SI", 10)),
        (("INFO", 60), ("ING", 30), ("RSSI", 10)),
        (("TECHNICIENNE INFORMATIQUE", "TECHNICIEN INFORMATIQUE", 60), ("INGENIEURE", "INGENIEUR", 30),
         ("RSSI", "RSSI", 10)),
        (("dsi", 1),),
    ),
)
# fmt: on
_PROFESSION_INDEX = {profession.key: index for index, profession in enumerate(_PROFESSIONS)}
_DOCTOR = _PROFESSION_INDEX["doctor"]
_NURSE = _PROFESSION_INDEX["nurse"]

# Which dialects record the RPPS at all (dialect c: the site does not).
_RECORDS_RPPS = {"a": True, "b": True, "c": False}


def _local_titles(profession: _Profession, dialect: str) -> list[str]:
    """The local job titles of `profession` in `dialect`, as the site mapping looks them up.

    Dialect a titles are looked up lower-cased, b and c titles upper-cased (see `mapping_yaml`).
    """
    if dialect == "a":
        return [title.lower() for title, _ in profession.titles_a]
    if dialect == "b":
        return [title for title, _ in profession.titles_b]
    return list(dict.fromkeys(t for female, male, _ in profession.titles_c for t in (female, male)))


def job_title_map(dialect: str) -> dict[str, str]:
    """Every local job title / code of `dialect` (as looked up) -> its G15 code ("" for non-health staff)."""
    table: dict[str, str] = {}
    for profession in _PROFESSIONS:
        for title in _local_titles(profession, dialect):
            previous = table.setdefault(title, profession.g15)
            if previous != profession.g15:  # a table error, caught by the tests
                raise AssertionError(f"dialect {dialect}: {title!r} is both {previous} and {profession.g15}")
    return table


def _department_map(dialect: str) -> dict[str, str]:
    """Dialect b department codes, and dialect c upper-case labels, to the proper labels."""
    if dialect == "b":
        return {code: label for label, code in _DEPARTMENTS.values()}
    return {_upper_plain(label): label for label, _ in _DEPARTMENTS.values()}


class _Chooser:
    """Weighted choice by bisection over cumulative weights: one `random()` per draw."""

    __slots__ = ("_cumulative", "_items", "_total")

    def __init__(self, items: Sequence[Any], weights: Sequence[float]) -> None:
        self._items = tuple(items)
        total = 0.0
        cumulative = []
        for weight in weights:
            total += weight
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total

    def __call__(self, rng: Random) -> Any:
        return self._items[bisect(self._cumulative, rng.random() * self._total)]


_CHOOSE_PROFESSION = _Chooser(range(len(_PROFESSIONS)), [p.weight for p in _PROFESSIONS])
_CHOOSE_TITLE_A = [_Chooser([t for t, _ in p.titles_a], [w for _, w in p.titles_a]) for p in _PROFESSIONS]
_CHOOSE_TITLE_B = [_Chooser([t for t, _ in p.titles_b], [w for _, w in p.titles_b]) for p in _PROFESSIONS]
_CHOOSE_TITLE_C = [
    _Chooser([(f, m) for f, m, _ in p.titles_c], [w for *_, w in p.titles_c]) for p in _PROFESSIONS
]
_CHOOSE_DEPARTMENT = [
    _Chooser([_DEPARTMENTS[key] for key, _ in p.departments], [w for _, w in p.departments])
    for p in _PROFESSIONS
]


# --------------------------------------------------------------------------------------------------
# People and accounts
# --------------------------------------------------------------------------------------------------


class _Person:
    """A human of the GHT. Mutable only while hard cases are being made."""

    __slots__ = ("family", "female", "given", "key", "profession", "rpps", "sites")

    def __init__(
        self,
        key: str,
        female: bool,
        given: str,
        family: str,
        profession: int,
        rpps: str,
        sites: tuple[int, ...],
    ) -> None:
        self.key = key
        self.female = female
        self.given = given
        self.family = family
        self.profession = profession
        self.rpps = rpps
        self.sites = sites


# Quirks of one account (bit flags), applied when it is rendered.
_ODD_WHITESPACE = 1
_EMPTY_VALUES = 2


class _Account:
    """One account entry of one site, kept small: attributes are rendered on demand."""

    __slots__ = (
        "department",
        "employee",
        "login",
        "mail",
        "person",
        "phone",
        "quirks",
        "rpps",
        "title",
        "uuid",
    )

    def __init__(self, person: _Person, login: str, uuid_: str) -> None:
        self.person = person
        self.login = login
        self.uuid = uuid_
        self.mail = ""
        self.title = ""
        self.department: tuple[str, str] = ("", "")
        self.employee = ""
        self.phone = ""
        self.rpps = ""
        self.quirks = 0


@dataclass(frozen=True, slots=True)
class SyntheticAccount:
    """A generated account entry, as a test would read it back from the directory."""

    site: str
    dn: str
    entry_uuid: str
    person: str  # key of the person in `SyntheticGHT.truth`
    attributes: dict[str, list[str]]


# --------------------------------------------------------------------------------------------------
# LDIF
# --------------------------------------------------------------------------------------------------

# RFC 2849 SAFE-STRING: SAFE-INIT-CHAR (no NUL, LF, CR, space, colon, "<") then SAFE-CHARs (ASCII but NUL,
# LF, CR). A value ending with a space is base64 too, as the RFC recommends.
_SAFE_STRING = re.compile(
    r"[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f]"  # SAFE-INIT-CHAR
    r"(?:[\x01-\x09\x0b\x0c\x0e-\x7f]*[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x7f])?"  # SAFE-CHARs, no final space
)


def ldif_line(attribute: str, value: str) -> str:
    """One ``attr: value`` line, base64 (``attr:: ...``) when `value` is not an RFC 2849 safe string."""
    if _SAFE_STRING.fullmatch(value):
        return f"{attribute}: {value}\n"
    return f"{attribute}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}\n"


def _ldif_entry(dn: str, attributes: Iterable[tuple[str, str]]) -> str:
    return ldif_line("dn", dn) + "".join([ldif_line(name, value) for name, value in attributes]) + "\n"


# --------------------------------------------------------------------------------------------------
# The GHT
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticGHT:
    """A generated GHT: its sites, their accounts, and the truth about who is who.

    `truth` maps a person key to every (site code, entryUUID) of that person's accounts: each account
    appears exactly once. `hard_cases` maps each kind of deliberate trap to the person keys involved.
    """

    sites: list[SiteSpec]
    seed: int
    truth: dict[str, list[tuple[str, str]]] = field(default_factory=dict, repr=False)
    hard_cases: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _accounts: dict[str, list[_Account]] = field(default_factory=dict, repr=False, compare=False)
    _uuid_namespace: uuid.UUID = field(default=uuid.NAMESPACE_URL, repr=False, compare=False)

    # ---- reading ------------------------------------------------------------------------------

    def site(self, code: str) -> SiteSpec:
        """The site called `code` (KeyError if there is none)."""
        for spec in self.sites:
            if spec.code == code:
                return spec
        raise KeyError(code)

    @property
    def account_count(self) -> int:
        """Accounts over all sites."""
        return sum(len(accounts) for accounts in self._accounts.values())

    def accounts(self, code: str) -> list[SyntheticAccount]:
        """The account entries of site `code`, attributes as LDAP names -> list of values."""
        spec = self.site(code)
        base = f"ou=people,{spec.suffix}"
        result = []
        for account in self._accounts[code]:
            attributes: dict[str, list[str]] = {}
            for name, value in self._render(spec, account):
                attributes.setdefault(name, []).append(value)
            dn = f"uid={account.login},{base}"
            result.append(SyntheticAccount(code, dn, account.uuid, account.person.key, attributes))
        return result

    def site_ldif(self, code: str) -> Iterator[str]:
        """LDIF for ``slapadd -q``: the suffix entry, ou=people, then every account with its entryUUID.

        Written like slapcat does: no ``version:`` line (slapadd refuses one), no line folding.

        Chunks are yielded one entry at a time so that large sites never sit in memory as one string.
        """
        spec = self.site(code)
        # No "version: 1" line: slapadd (OpenLDAP 2.5) rejects it, and slapcat never writes one.
        yield (
            f"# Synthetic GHT directory: {_ascii(spec.name)} ({spec.code}), dialect {spec.dialect}, "
            f"seed {self.seed}.\n"
            "# Fictional people generated by directory_sync.synthetic; any resemblance is coincidental.\n\n"
        )
        yield _ldif_entry(
            spec.suffix,
            (
                ("objectClass", "top"),
                ("objectClass", "dcObject"),
                ("objectClass", "organization"),
                ("dc", spec.code),
                ("o", spec.name),
                ("description", f"FINESS {spec.finess}"),
                ("entryUUID", self._uuid(f"{code}/suffix")),
            ),
        )
        yield _ldif_entry(
            f"ou=people,{spec.suffix}",
            (
                ("objectClass", "top"),
                ("objectClass", "organizationalUnit"),
                ("ou", "people"),
                ("entryUUID", self._uuid(f"{code}/people")),
            ),
        )
        base = f",ou=people,{spec.suffix}\n"
        for account in self._accounts[code]:
            # The DN is plain ASCII by construction (logins are [a-zA-Z0-9.-]).
            yield (
                f"dn: uid={account.login}{base}"
                + "".join([ldif_line(name, value) for name, value in self._render(spec, account)])
                + "\n"
            )

    def write_ldif(self, code: str, path: Path) -> int:
        """Write `site_ldif(code)` to `path`; return the number of account entries written."""
        with Path(path).open("w", encoding="utf-8", newline="\n") as out:
            out.writelines(self.site_ldif(code))
        return len(self._accounts[code])

    # ---- mappings -----------------------------------------------------------------------------

    def mapping_yaml(self, code: str, connection: Mapping[str, Any]) -> str:
        """The ``mappings/<site>.yaml`` text for site `code` (format: mappings/README.md).

        `connection` is the ``connection:`` block as a mapping, written as given. The value maps cover every
        local job title or code of the site's dialect (and, for dialects b and c, every department).
        """
        spec = self.site(code)
        out = [
            f"# Site mapping for {spec.name} ({spec.code}): dialect {spec.dialect!r} of",
            f"# directory_sync.synthetic, seed {self.seed}. Fictional data; format: mappings/README.md.",
            "site:",
            f"  code: {spec.code}",
            f"  name: {_quote(spec.name)}",
            f"  finess: {_quote(spec.finess)}",
            "",
            "connection:",
        ]
        dumped = yaml.safe_dump(
            dict(connection), sort_keys=False, allow_unicode=True, default_flow_style=False
        )
        out.extend("  " + line for line in dumped.splitlines())
        out.append("")
        out.extend(_MAPPING_ATTRIBUTES[spec.dialect])
        out.append("")
        out.append("value_maps:")
        out.append(f"  job_titles:                      # {_TITLE_NOTE[spec.dialect]}")
        job_title_map(spec.dialect)  # checks that no title means two professions
        for profession in _PROFESSIONS:
            label = f"{profession.g15} {_G15_LABELS[profession.g15]}" if profession.g15 else "no G15 code"
            out.append(f"    # {profession.key}: {label}")
            out.extend(
                f"    {_quote(title)}: {_quote(profession.g15)}"
                for title in _local_titles(profession, spec.dialect)
            )
        if spec.dialect in ("b", "c"):
            out.append("  departments:")
            out.extend(f"    {_quote(k)}: {_quote(v)}" for k, v in _department_map(spec.dialect).items())
        return "\n".join(out) + "\n"

    def write_mappings(
        self, directory: Path, connection_for: Callable[[SiteSpec], dict[str, Any]]
    ) -> list[Path]:
        """Write ``<directory>/<code>.yaml`` for every site; `connection_for` gives each site's connection."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for spec in self.sites:
            path = directory / f"{spec.code}.yaml"
            path.write_text(self.mapping_yaml(spec.code, connection_for(spec)), encoding="utf-8")
            paths.append(path)
        return paths

    # ---- internals ----------------------------------------------------------------------------

    def _uuid(self, name: str) -> str:
        return str(uuid.uuid5(self._uuid_namespace, name))

    @staticmethod
    def _render(spec: SiteSpec, account: _Account) -> list[tuple[str, str]]:
        """The attributes of `account` in the site's dialect, in LDIF order."""
        person = account.person
        dialect = spec.dialect
        given, family = person.given, person.family
        if dialect == "c":
            sn, given_name = _upper_plain(family), _upper_plain(given)
        else:
            sn, given_name = family, given
        cn = f"{given} {family}"
        title = account.title
        department = account.department[1] if dialect == "b" else account.department[0]
        if dialect == "c":
            department = _upper_plain(department)
        mail: str | None = account.mail
        given_value: str | None = given_name
        if account.quirks & _ODD_WHITESPACE:
            sn = f" {sn}  "
            given_value = f"{given_name} "
            cn = f"{given}  {family}"
            title = title.replace(" ", "  ") + "\u00a0"
        if account.quirks & _EMPTY_VALUES:
            title = " "
            department = " "
            given_value = None
            mail = None
            cn = family
        pairs = [("objectClass", oc) for oc in _PEOPLE_OBJECT_CLASSES]
        pairs.append(("uid", account.login))
        pairs.append(("cn", cn))
        pairs.append(("sn", sn))
        if given_value is not None:
            pairs.append(("givenName", given_value))
        if dialect == "b":
            pairs.append(("displayName", f"{_upper_plain(family)} {given}"))
        if mail:
            pairs.append(("mail", mail))
        pairs.append(("title", title))
        pairs.append(("departmentNumber" if dialect == "b" else "ou", department))
        pairs.append(("employeeNumber", account.employee))
        if account.rpps:
            pairs.append(("businessCategory" if dialect == "a" else "employeeType", account.rpps))
        if account.phone:
            pairs.append(("telephoneNumber", account.phone))
        pairs.append(("entryUUID", account.uuid))
        return pairs


def _quote(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


_G15_LABELS = {
    "10": "Médecin",
    "21": "Pharmacien",
    "35": "Aide-soignant",
    "36": "Ambulancier",
    "37": "Auxiliaire de puériculture",
    "38": "Préparateur en pharmacie hospitalière",
    "50": "Sage-Femme",
    "60": "Infirmier",
    "70": "Masseur-Kinésithérapeute",
    "86": "Technicien de laboratoire médical",
    "93": "Psychologue",
    "94": "Ergothérapeute",
    "95": "Diététicien",
    "98": "Manipulateur ERM",
}

_TITLE_NOTE = {
    "a": "free French text in `title`, looked up lower-cased",
    "b": "short codes in `title`, looked up upper-cased",
    "c": "UPPER-CASE text without accents, gendered",
}

_COMMON_NAMES = [
    "attributes:",
    "  login: uid",
    "  family_name: {from: sn, transforms: [trim, name_case]}",
    "  given_name: {from: givenName, transforms: [trim, name_case]}",
    "  email: {from: mail, transforms: [trim, lower]}",
]
_MAPPING_ATTRIBUTES: Mapping[str, list[str]] = {
    "a": [
        *_COMMON_NAMES,
        "  rpps: {from: businessCategory, transforms: [digits]}       # the bare 11-digit RPPS",
        "  profession: {from: title, transforms: [trim, lower, {map: job_titles}]}",
        "  department: {from: ou, transforms: [trim]}",
        "  title: {from: title, transforms: [trim]}",
        "  employee_id: employeeNumber",
        "  phone: telephoneNumber",
    ],
    "b": [
        *_COMMON_NAMES,
        '  rpps: {from: employeeType, transforms: [digits, {prefix_strip: "8"}]}   # idNat_PS: "8" + RPPS',
        "  profession: {from: title, transforms: [trim, upper, {map: job_titles}]}",
        "  department: {from: departmentNumber, transforms: [trim, upper, {map: departments}]}",
        "  title: {from: title, transforms: [trim, upper]}",
        "  employee_id: employeeNumber",
    ],
    "c": [
        *_COMMON_NAMES[:2],
        "  family_name: {from: sn, transforms: [trim, name_case]}   # stored upper-case without accents",
        "  given_name: {from: givenName, transforms: [trim, name_case]}   # MARIE HELENE -> Marie Helene",
        _COMMON_NAMES[4],
        "  # no rpps: this site does not record it",
        "  profession: {from: title, transforms: [trim, upper, {map: job_titles}]}",
        "  department: {from: ou, transforms: [trim, upper, {map: departments}]}",
        "  title: {from: title, transforms: [trim]}",
        "  employee_id: employeeNumber",
    ],
}


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def generate(
    *,
    seed: int = 1,
    sites: int = 3,
    accounts: int = 300,
    multi_site_share: float = 0.2,
    hard_cases: bool | Mapping[str, int] = True,
    missing_rpps_share: float = 0.03,
) -> SyntheticGHT:
    """Generate a GHT of `sites` hospitals with exactly `accounts` accounts over all of them.

    `multi_site_share` is the share of *people* working at two or more sites (of them, 85% at two, 12% at
    three, 3% at four). `hard_cases`: True for `DEFAULT_HARD_CASES`, False for none, or a mapping kind ->
    count. `missing_rpps_share` is the share of doctors' accounts at RPPS-recording sites without one.
    Deterministic: the same arguments always give the same GHT, byte for byte.
    """
    if sites < 1:
        raise ValueError("a GHT has at least one site")
    if accounts < 0:
        raise ValueError("accounts must be >= 0")
    if not 0.0 <= multi_site_share <= 1.0:
        raise ValueError("multi_site_share must be between 0 and 1")
    counts = _hard_case_counts(hard_cases)
    rng = Random(seed)
    specs = _site_specs(sites)
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"urn:ght-federation:synthetic:{seed}")
    ght = SyntheticGHT(sites=specs, seed=seed, _uuid_namespace=namespace)

    people = _make_people(rng, sites, accounts, multi_site_share)
    kinds: dict[str, list[str]] = {kind: [] for kind in HARD_CASE_KINDS}
    typo_at: dict[int, int] = {}
    quirks: dict[tuple[int, int], int] = {}
    _make_hard_cases(rng, specs, people, counts, kinds, typo_at, quirks)
    _make_accounts(rng, ght, people, missing_rpps_share, kinds, typo_at, quirks)
    ght.hard_cases = kinds
    return ght


def _hard_case_counts(hard_cases: bool | Mapping[str, int]) -> dict[str, int]:
    if hard_cases is True:
        return dict(DEFAULT_HARD_CASES)
    if hard_cases is False:
        return dict.fromkeys(DEFAULT_HARD_CASES, 0)
    unknown = set(hard_cases) - set(DEFAULT_HARD_CASES)
    if unknown:
        raise ValueError(f"unknown hard case kinds: {sorted(unknown)}")
    return {kind: int(hard_cases.get(kind, 0)) for kind in DEFAULT_HARD_CASES}


def _make_people(rng: Random, site_count: int, accounts: int, multi_share: float) -> list[_Person]:
    """People until exactly `accounts` accounts: the first sites weigh most (Avignon is the big one)."""
    site_weights = [1.0 / (index + 1) ** 0.9 for index in range(site_count)]
    choose_site = _Chooser(range(site_count), site_weights)
    rpps_offset = rng.randrange(10**8)
    people: list[_Person] = []
    remaining = accounts
    random = rng.random
    while remaining > 0:
        k = 1
        if site_count > 1 and random() < multi_share:
            draw = random()
            k = 2 if draw < 0.85 else 3 if draw < 0.97 else 4
            k = min(k, site_count, remaining)
        chosen: set[int] = set()
        while len(chosen) < k:
            chosen.add(choose_site(rng))
        remaining -= k
        index = len(people)
        profession = _CHOOSE_PROFESSION(rng)
        spec = _PROFESSIONS[profession]
        female = random() < spec.female
        if female:
            given = rng.choice(_FEMALE_COMPOUND) if random() < 0.08 else rng.choice(_FEMALE)
        else:
            given = rng.choice(_MALE_COMPOUND) if random() < 0.08 else rng.choice(_MALE)
        if random() < 0.04:
            first, second = rng.sample(_FAMILY_SIMPLE, 2)
            family = f"{first}-{second}"
        else:
            family = rng.choice(_FAMILY)
        rpps = ""
        if spec.rpps:
            # Unique by construction: 61803399 is prime to 10**8, so index -> body is a bijection.
            body = f"10{(index * 61803399 + rpps_offset) % 10**8:08d}"
            rpps = body + luhn_key(body)
        sites = tuple(sorted(chosen))
        people.append(_Person(f"p{index:06d}", female, given, family, profession, rpps, sites))
    return people


def _make_hard_cases(
    rng: Random,
    specs: list[SiteSpec],
    people: list[_Person],
    counts: Mapping[str, int],
    kinds: dict[str, list[str]],
    typo_at: dict[int, int],
    quirks: dict[tuple[int, int], int],
) -> None:
    """Turn a few ordinary people into deliberate traps, without changing the number of accounts.

    Each person is in at most one hard case, so that every trap can be studied alone.
    """
    used: set[int] = set()
    singles_by_profession: dict[int, list[int]] = {}
    doubles: list[int] = []
    rpps_holders: list[int] = []
    for index, person in enumerate(people):
        if len(person.sites) == 1:
            singles_by_profession.setdefault(person.profession, []).append(index)
        elif len(person.sites) == 2:
            doubles.append(index)
        if person.rpps:
            rpps_holders.append(index)
    all_singles = [i for pool in singles_by_profession.values() for i in pool]

    def draw(pool: Sequence[int], accept: Callable[[_Person], bool] = lambda p: True) -> int | None:
        for _ in range(64):
            if not pool:
                return None
            index = rng.choice(pool)
            if index not in used and accept(people[index]):
                used.add(index)
                return index
        for index in pool:  # small or exhausted pools: scan
            if index not in used and accept(people[index]):
                used.add(index)
                return index
        return None

    # Homonyms: B takes A's names (and for the same site, A's site). Doctors first, then nurses.
    for kind in ("homonym_same_site", "homonym_cross_site"):
        for pair in range(counts[kind]):
            if kind == "homonym_cross_site" and len(specs) < 2:
                break
            preferred = _DOCTOR if pair % 2 == 0 else _NURSE
            pool = singles_by_profession.get(preferred, []) or all_singles
            a = draw(pool)
            if a is None:
                break
            b = draw(singles_by_profession.get(people[a].profession, []))
            if b is None:
                used.discard(a)
                break
            first, second = people[a], people[b]
            second.given, second.family, second.female = first.given, first.family, first.female
            if kind == "homonym_same_site":
                second.sites = first.sites
            elif second.sites == first.sites:
                second.sites = (rng.choice([s for s in range(len(specs)) if s != first.sites[0]]),)
            kinds[kind] += [first.key, second.key]

    # The same nurse at two sites that write names differently (dialect c against a or b).
    c_sites = [i for i, spec in enumerate(specs) if spec.dialect == "c"]
    other_sites = [i for i, spec in enumerate(specs) if spec.dialect != "c"]
    for _ in range(counts["nurse_two_sites"]):
        picked = draw(doubles)
        if picked is None:
            break
        nurse = people[picked]
        nurse.profession, nurse.rpps, nurse.female = _NURSE, "", True
        nurse.given = rng.choice(_NURSE_GIVEN)
        nurse.family = rng.choice(_NURSE_FAMILY)
        if c_sites and other_sites:
            nurse.sites = tuple(sorted((rng.choice(other_sites), rng.choice(c_sites))))
        kinds["nurse_two_sites"].append(nurse.key)

    # An RPPS typo at one site that records it; best on someone also known elsewhere with the right one.
    recording = {i for i, spec in enumerate(specs) if _RECORDS_RPPS[spec.dialect]}
    if recording:
        multi = [i for i in rpps_holders if len(people[i].sites) > 1]
        for _ in range(counts["rpps_typo"]):
            picked = draw(multi, lambda p: bool(recording & set(p.sites)))
            if picked is None:
                picked = draw(rpps_holders, lambda p: bool(recording & set(p.sites)))
            if picked is None:
                break
            typo_at[picked] = rng.choice(sorted(recording & set(people[picked].sites)))
            kinds["rpps_typo"].append(people[picked].key)

    everyone = range(len(people))
    for kind, flag in (("odd_whitespace", _ODD_WHITESPACE), ("empty_values", _EMPTY_VALUES)):
        for _ in range(counts[kind]):
            picked = draw(everyone)
            if picked is None:
                break
            quirks[(picked, rng.choice(people[picked].sites))] = flag
            kinds[kind].append(people[picked].key)


def _make_accounts(
    rng: Random,
    ght: SyntheticGHT,
    people: list[_Person],
    missing_rpps_share: float,
    kinds: dict[str, list[str]],
    typo_at: dict[int, int],
    quirks: dict[tuple[int, int], int],
) -> None:
    """One account per (person, site): logins unique per site, matricules, titles, entryUUIDs, truth."""
    specs = ght.sites
    members: list[list[int]] = [[] for _ in specs]
    for index, person in enumerate(people):
        for site in person.sites:
            members[site].append(index)
    truth: dict[str, list[tuple[str, str]]] = {person.key: [] for person in people}
    missing: set[str] = set()
    random = rng.random
    namespace = ght._uuid_namespace
    for site, spec in enumerate(specs):
        dialect = spec.dialect
        logins: set[str] = set()
        mailboxes: set[str] = set()
        matricule = rng.randrange(1000, 60000)
        accounts: list[_Account] = []
        records_rpps = _RECORDS_RPPS[dialect]
        for index in members[site]:
            person = people[index]
            given, family = person.given, person.family
            if dialect == "a":
                login = _unique(_slug(given, False)[:1] + _slug(family, False), logins)
                mail = _unique(f"{_slug(given, True)}.{_slug(family, True)}", mailboxes) + "@" + spec.domain
            elif dialect == "b":
                login = _unique(f"{_slug(given, True)}.{_slug(family, True)}", logins)
                mail = f"{login}@{spec.domain}"
            else:
                login = _code7(_slug(family, False).upper(), _slug(given, False).upper(), logins)
                initials = "".join(part[:1] for part in _slug(given, True).split("-"))
                mail = _unique(f"{initials}.{_slug(family, True)}", mailboxes) + "@" + spec.domain
            entry_uuid = str(uuid.uuid5(namespace, f"{spec.code}/{login}"))
            account = _Account(person, login, entry_uuid)
            account.mail = mail
            profession = person.profession
            if dialect == "a":
                account.title = _CHOOSE_TITLE_A[profession](rng)
                line = f"{rng.randrange(10**6):06d}"
                account.phone = f"+33 4 90 {line[:2]} {line[2:4]} {line[4:]}"
            elif dialect == "b":
                account.title = _CHOOSE_TITLE_B[profession](rng)
            else:
                female_title, male_title = _CHOOSE_TITLE_C[profession](rng)
                account.title = female_title if person.female else male_title
            account.department = _CHOOSE_DEPARTMENT[profession](rng)
            matricule += 1 + int(random() * 7)
            if dialect == "a":
                account.employee = f"{matricule:06d}"
            elif dialect == "b":
                account.employee = f"M{matricule:07d}"
            else:
                account.employee = f"{matricule:08d}"
            if person.rpps and records_rpps:
                rpps = person.rpps
                if typo_at.get(index) == site:
                    rpps = _typo(rng, rpps)
                elif profession == _DOCTOR and random() < missing_rpps_share:
                    rpps = ""
                    missing.add(person.key)
                if rpps:
                    account.rpps = "8" + rpps if dialect == "b" else rpps
            account.quirks = quirks.get((index, site), 0)
            accounts.append(account)
            truth[person.key].append((spec.code, entry_uuid))
        ght._accounts[spec.code] = accounts
    ght.truth = truth
    kinds["rpps_missing"] = sorted(missing)


def _unique(base: str, used: set[str]) -> str:
    """`base`, or `base` + 2, 3, ... if taken; remembered in `used`."""
    candidate = base
    number = 2
    while candidate in used:
        candidate = f"{base}{number}"
        number += 1
    used.add(candidate)
    return candidate


def _code7(family: str, given: str, used: set[str]) -> str:
    """A 7-character login: 4 letters of the family name, 2 of the given name, digits (DUPOMA1)."""
    stem = (family[:4].ljust(4, "X") + given[:2].ljust(2, "X"))[:6]
    number = 1
    while True:
        digits = str(number)
        candidate = stem[: 7 - len(digits)] + digits
        if candidate not in used:
            used.add(candidate)
            return candidate
        number += 1


def _typo(rng: Random, rpps: str) -> str:
    """`rpps` with one digit (after the "10" prefix) mistyped: any single change breaks the Luhn key."""
    position = rng.randrange(2, len(rpps))
    wrong = str((int(rpps[position]) + rng.randrange(1, 10)) % 10)
    return rpps[:position] + wrong + rpps[position + 1 :]


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Write a synthetic GHT as LDIF files plus truth.json, and print a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m directory_sync.synthetic", description="Generate a synthetic GHT (fictional people)."
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=300, help="total accounts over all sites (exact)")
    parser.add_argument("--multi-site-share", type=float, default=0.2, help="share of people at 2+ sites")
    parser.add_argument("--no-hard-cases", action="store_true", help="no deliberate traps")
    parser.add_argument(
        "--mappings", action="store_true", help="also write OUT/mappings/<site>.yaml (kind: ldif)"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    ght = generate(
        seed=args.seed,
        sites=args.sites,
        accounts=args.accounts,
        multi_site_share=args.multi_site_share,
        hard_cases=not args.no_hard_cases,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    size = 0
    per_site = {}
    for spec in ght.sites:
        path = out / f"{spec.code}.ldif"
        per_site[spec.code] = ght.write_ldif(spec.code, path)
        written += per_site[spec.code]
        size += path.stat().st_size
    document = {
        "seed": ght.seed,
        "accounts": written,
        "people": len(ght.truth),
        "sites": [{**asdict(spec), "accounts": per_site[spec.code]} for spec in ght.sites],
        "truth": ght.truth,
        "hard_cases": ght.hard_cases,
    }
    (out / "truth.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    if args.mappings:
        ght.write_mappings(
            out / "mappings",
            lambda spec: {"kind": "ldif", "path": f"../{spec.code}.ldif", "anchor": "entryUUID"},
        )
    elapsed = time.perf_counter() - started
    multi = sum(1 for links in ght.truth.values() if len(links) > 1)
    people = len(ght.truth)
    print(
        f"{len(ght.sites)} sites, {written} accounts, {people} people "
        f"({100 * multi / max(people, 1):.1f}% at 2+ sites), {size / 1e6:.1f} MB LDIF "
        f"in {out} ({elapsed:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
