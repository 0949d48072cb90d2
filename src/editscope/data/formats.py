"""One converter per published edit-data schema: raw record -> list of EditRequest.

Each converter names fields in the source schema's own terms, so an error points at the
field a user sees in the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from editscope.data.records import field, str_list, template_from_text
from editscope.errors import RequestError
from editscope.types import EditRequest, NeighborhoodPrompt

Converter = Callable[[Mapping[str, Any], int], list[EditRequest]]


def _rome_rewrite(rewrite: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The ``requested_rewrite`` object shared by CounterFact and MQuAKE; errors name ``prefix.field``."""
    try:
        prompt = field(rewrite, "prompt")
        if prompt.count("{}") != 1:
            raise RequestError("prompt", f"must contain exactly one '{{}}' subject slot: {prompt!r}")
        return {
            "prompt": prompt,
            "subject": field(rewrite, "subject"),
            "target_new": field(rewrite, "target_new.str"),
            "target_true": field(rewrite, "target_true.str"),
            "relation_id": field(rewrite, "relation_id", required=False),
        }
    except RequestError as error:
        raise RequestError(f"{prefix}.{error.field}", error.message) from None


def counterfact(record: Mapping[str, Any], index: int) -> list[EditRequest]:
    """CounterFact in the original ROME schema (``requested_rewrite`` + prompt lists)."""
    core = _rome_rewrite(field(record, "requested_rewrite", Mapping), "requested_rewrite")
    case_id = field(record, "case_id", int, required=False)
    neighborhood = tuple(NeighborhoodPrompt(p, core["target_true"]) for p in str_list(record, "neighborhood_prompts"))
    return [
        EditRequest(
            id=str(case_id if case_id is not None else index),
            paraphrase_prompts=str_list(record, "paraphrase_prompts"),
            neighborhood=neighborhood,
            generation_prompts=str_list(record, "generation_prompts"),
            meta={"attribute_prompts": list(str_list(record, "attribute_prompts"))},
            **core,
        )
    ]


def counterfact_easyedit(record: Mapping[str, Any], index: int) -> list[EditRequest]:
    """CounterFact in EasyEdit's flat schema (subject written into ``prompt``)."""
    subject = field(record, "subject")
    prompt = template_from_text(field(record, "prompt"), subject, "prompt")
    rephrase = field(record, "rephrase_prompt", required=False)
    locality = field(record, "locality_prompt", required=False)
    neighborhood: tuple[NeighborhoodPrompt, ...] = ()
    if locality is not None:
        neighborhood = (NeighborhoodPrompt(locality, field(record, "locality_ground_truth")),)
    case_id = field(record, "case_id", int, required=False)
    return [
        EditRequest(
            id=str(case_id if case_id is not None else index),
            prompt=prompt,
            subject=subject,
            target_new=field(record, "target_new"),
            target_true=field(record, "ground_truth"),
            paraphrase_prompts=(rephrase,) if rephrase else (),
            neighborhood=neighborhood,
        )
    ]


def zsre(record: Mapping[str, Any], index: int) -> list[EditRequest]:
    """zsRE question answering in the MEND schema (``src``, ``alt``, ``answers``, ``rephrase``, ``loc``).

    The question is the prompt and the target follows it, as in ROME/MEMIT's zsRE setup;
    ``loc`` (an NQ question) with ``loc_ans`` is the neighborhood prompt.
    """
    subject = field(record, "subject")
    prompt = template_from_text(field(record, "src"), subject, "src")
    answers = str_list(record, "answers", required=True)
    if not answers:
        raise RequestError("answers", "must hold at least one answer")
    loc = field(record, "loc", required=False)
    neighborhood = (NeighborhoodPrompt(loc, field(record, "loc_ans")),) if loc is not None else ()
    rephrase = field(record, "rephrase", required=False)
    return [
        EditRequest(
            id=str(index),
            prompt=prompt,
            subject=subject,
            target_new=field(record, "alt"),
            target_true=answers[0],
            paraphrase_prompts=(rephrase,) if rephrase else (),
            neighborhood=neighborhood,
            meta={"answers": list(answers), "qa": True},
        )
    ]


def mquake(record: Mapping[str, Any], index: int) -> list[EditRequest]:
    """MQuAKE: one request per item of ``requested_rewrite``; the multi-hop questions go to ``meta``."""
    rewrites = field(record, "requested_rewrite", list)
    case_id = field(record, "case_id", int, required=False)
    case = str(case_id if case_id is not None else index)
    questions = list(str_list(record, "questions"))
    requests = []
    for i, rewrite in enumerate(rewrites):
        prefix = f"requested_rewrite[{i}]"
        if not isinstance(rewrite, Mapping):
            raise RequestError(prefix, f"expected an object, got {type(rewrite).__name__}")
        core = _rome_rewrite(rewrite, prefix)
        question = rewrite.get("question") if isinstance(rewrite.get("question"), str) else None
        requests.append(
            EditRequest(
                id=f"{case}/{i}",
                paraphrase_prompts=(question,) if question else (),
                meta={
                    "case_id": case,
                    "multi_hop_questions": questions,
                    "answer": record.get("answer"),
                    "new_answer": record.get("new_answer"),
                },
                **core,
            )
        )
    return requests


JSONL_KEYS = ("id", "prompt", "subject", "target_new", "target_true", "paraphrase_prompts", "neighborhood",
              "generation_prompts", "relation_id", "meta")
"""Every key of the project's own schema; the first five after ``id`` are required but ``id``."""


def own_jsonl(record: Mapping[str, Any], index: int) -> list[EditRequest]:
    """The project's own schema (:meth:`EditRequest.to_dict`); a key it does not know is refused (a misspelt
    optional key would otherwise be dropped without a word)."""
    from editscope.registry import did_you_mean

    stray = sorted(set(record) - set(JSONL_KEYS))
    if stray:
        raise RequestError(stray[0], f"unknown key{did_you_mean(stray[0], list(JSONL_KEYS))}; the jsonl format's keys: "
                                     f"{', '.join(JSONL_KEYS)} (prompt, subject, target_new and target_true required)")  # fmt: skip
    raw_neighborhood = field(record, "neighborhood", list, required=False) or []
    neighborhood = []
    for i, item in enumerate(raw_neighborhood):
        if not isinstance(item, Mapping):
            raise RequestError(f"neighborhood[{i}]", f"expected an object with prompt and answer, got {type(item).__name__}")
        try:
            neighborhood.append(NeighborhoodPrompt(field(item, "prompt"), field(item, "answer")))
        except RequestError as error:
            raise RequestError(f"neighborhood[{i}].{error.field}", error.message) from None
    meta = field(record, "meta", Mapping, required=False) or {}
    subject = field(record, "subject")
    record_id = field(record, "id", (str, int), required=False)
    return [
        EditRequest(
            id=str(record_id if record_id is not None else index),
            prompt=template_from_text(field(record, "prompt"), subject, "prompt"),
            subject=subject,
            target_new=field(record, "target_new"),
            target_true=field(record, "target_true"),
            paraphrase_prompts=str_list(record, "paraphrase_prompts"),
            neighborhood=tuple(neighborhood),
            generation_prompts=str_list(record, "generation_prompts"),
            relation_id=field(record, "relation_id", required=False),
            meta=dict(meta),
        )
    ]


# name -> (converter, keys whose presence in the first record identifies the schema)
SCHEMAS: dict[str, tuple[Converter, frozenset[str]]] = {
    "counterfact": (counterfact, frozenset({"requested_rewrite", "neighborhood_prompts"})),
    "mquake": (mquake, frozenset({"requested_rewrite", "questions", "new_answer"})),
    "zsre": (zsre, frozenset({"src", "alt", "answers"})),
    "counterfact-easyedit": (counterfact_easyedit, frozenset({"prompt", "target_new", "ground_truth", "subject"})),
    "jsonl": (own_jsonl, frozenset({"prompt", "subject", "target_new", "target_true"})),
}
