from collections import Counter, defaultdict

from editscope.data import load_requests
from editscope.data.demo import load_facts, load_relations


def test_demo_size_and_relations():
    requests = load_requests("demo")
    assert len(requests) >= 300
    per_relation = Counter(r.relation_id for r in requests)
    assert len(per_relation) >= 10
    assert min(per_relation.values()) >= 20
    assert len({r.id for r in requests}) == len(requests)


def test_every_template_has_one_slot_and_facts_match_relations():
    relations = load_relations()
    for relation in relations.values():
        assert len(relation.templates) >= 3
        assert all(t.count("{}") == 1 for t in relation.templates + relation.generation_templates)
    facts = load_facts()
    assert {f.relation for f in facts} <= set(relations)
    assert len({(f.relation, f.subject) for f in facts}) == len(facts)


def test_counterfactual_is_another_object_of_the_same_relation():
    objects = defaultdict(set)
    for fact in load_facts():
        objects[fact.relation].add(fact.object)
    for request in load_requests("demo"):
        assert request.target_new != request.target_true
        assert request.target_new in objects[request.relation_id]


def test_paraphrases_and_neighbors():
    facts = load_facts()
    truth = {(f.relation, f.subject): f.object for f in facts}
    sharing = Counter((f.relation, f.object) for f in facts)
    for request in load_requests("demo"):
        assert request.subject in request.text
        assert len(request.paraphrase_prompts) >= 2
        assert all(request.subject in p for p in request.paraphrase_prompts)
        assert 1 <= len(request.neighborhood) <= 10
        assert all(request.subject not in n.prompt for n in request.neighborhood)
        # neighbors sharing the true object come first, as many as exist (up to 10)
        expected_sharing = min(sharing[(request.relation_id, request.target_true)] - 1, 10)
        assert sum(n.answer == request.target_true for n in request.neighborhood[:expected_sharing]) == expected_sharing
        assert len(request.generation_prompts) >= 1
    assert truth[("capital_of_country", "France")] == "Paris"


def test_demo_is_deterministic_and_annotated_for_bundled_model():
    first, second = load_requests("demo"), load_requests("demo")
    assert [r.target_new for r in first] == [r.target_new for r in second]
    annotated = [r for r in first if "known/smollm2-135m" in r.meta]
    assert len(annotated) == len(first)
    ranks = [r.meta["known/smollm2-135m"]["rank"] for r in annotated]
    assert all(isinstance(x, int) and x >= 1 for x in ranks)
    assert 0 < sum(x == 1 for x in ranks) < len(ranks)
