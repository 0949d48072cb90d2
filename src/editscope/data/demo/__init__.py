"""The bundled demo edit set: real facts over many relations, as CounterFact-style requests.

``relations.yaml`` holds each relation's templates (the first is the edit prompt, the others
paraphrases) and open generation prompts; ``facts.tsv`` holds true (relation, subject, object)
facts. A request's counterfactual target is another object of the same relation, chosen with
a fixed per-fact seed; its neighborhood prompts are other subjects with the same true object
(then other subjects of the relation) that must keep their answers. ``known/<model>.json``
records, for a bundled model, the rank of the true object's first token (1 = the model's top
prediction) and the true object's log-probability; it is regenerated with
``editscope data rank demo --model <name> --write-known``.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from editscope.types import EditRequest, NeighborhoodPrompt

MAX_NEIGHBORS = 10
DEMO_NAME = "demo"


@dataclass(frozen=True)
class Relation:
    """A relation of the demo set: its id, readable name and prompt templates."""

    id: str
    name: str
    templates: tuple[str, ...]
    generation_templates: tuple[str, ...]


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    object: str


def _read_text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_relations() -> dict[str, Relation]:
    raw = yaml.safe_load(_read_text("relations.yaml"))["relations"]
    return {
        rid: Relation(rid, spec["name"], tuple(spec["templates"]), tuple(spec.get("generation_templates", ())))
        for rid, spec in raw.items()
    }


def load_facts() -> list[Fact]:
    reader = csv.DictReader(io.StringIO(_read_text("facts.tsv")), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [Fact(row["relation"], row["subject"], row["object"]) for row in reader]


def known_annotations() -> dict[str, dict[str, Any]]:
    """``{model name: {request id: {"rank": int, "logprob": float}}}`` for the shipped annotations."""
    folder = resources.files(__name__).joinpath("known")
    out: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            payload = json.loads(entry.read_text(encoding="utf-8"))
            out[payload["model"]] = payload["facts"]
    return out


def _request_id(fact: Fact) -> str:
    return f"{fact.relation}/{fact.subject}"


def _counterfactual(fact: Fact, objects: list[str]) -> str:
    """Another object of the same relation, fixed per fact (string seeds hash with SHA-512)."""
    others = [o for o in objects if o != fact.object]
    return random.Random(f"editscope-demo:{fact.relation}:{fact.subject}").choice(others)


def _neighbors(fact: Fact, same_relation: list[Fact], template: str) -> tuple[NeighborhoodPrompt, ...]:
    """Other subjects sharing the true object first, then other subjects of the relation."""
    sharing = [f for f in same_relation if f.object == fact.object and f.subject != fact.subject]
    rest = [f for f in same_relation if f.object != fact.object]
    rotation = same_relation.index(fact)
    rest = rest[rotation % len(rest) :] + rest[: rotation % len(rest)] if rest else []
    chosen = (sharing + rest)[:MAX_NEIGHBORS]
    return tuple(NeighborhoodPrompt(template.replace("{}", f.subject, 1), f.object) for f in chosen)


def load_demo() -> list[EditRequest]:
    """All demo requests, in the fact table's order (runs shuffle with their own seed)."""
    relations = load_relations()
    facts = load_facts()
    known = known_annotations()
    by_relation: dict[str, list[Fact]] = {}
    for fact in facts:
        if fact.relation not in relations:
            raise ValueError(f"facts.tsv: unknown relation {fact.relation!r}")
        by_relation.setdefault(fact.relation, []).append(fact)
    requests = []
    for fact in facts:
        relation = relations[fact.relation]
        group = by_relation[fact.relation]
        objects = sorted({f.object for f in group})
        rid = _request_id(fact)
        meta: dict[str, Any] = {"relation_name": relation.name}
        for model, table in known.items():
            if rid in table:
                meta[f"known/{model}"] = table[rid]
        requests.append(
            EditRequest(
                id=rid,
                prompt=relation.templates[0],
                subject=fact.subject,
                target_new=_counterfactual(fact, objects),
                target_true=fact.object,
                paraphrase_prompts=tuple(t.replace("{}", fact.subject, 1) for t in relation.templates[1:]),
                neighborhood=_neighbors(fact, group, relation.templates[0]),
                generation_prompts=tuple(t.replace("{}", fact.subject, 1) for t in relation.generation_templates),
                relation_id=fact.relation,
                meta=meta,
            )
        )
    return requests
