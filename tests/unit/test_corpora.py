import pytest
from tests.conftest import shared_data

from editscope.data.corpora import load_corpus, parse_paragraphs, parse_wikiextractor
from editscope.errors import DataError
from editscope.models import tiny_model

WIKI = """<doc id="1" url="?curid=1" title="Alpha">
Alpha

Alpha is the first letter.
It has a history.
</doc>
<doc id="2" url="?curid=2" title="Empty">
Empty

</doc>
<doc id="3" url="?curid=3" title="Beta">
Beta

Beta is the second letter.
</doc>
"""


def test_parse_wikiextractor_drops_titles_and_empty_articles():
    assert parse_wikiextractor(WIKI) == ["Alpha is the first letter.\nIt has a history.", "Beta is the second letter."]


def test_parse_paragraphs_blank_lines_or_lines():
    assert parse_paragraphs("a b\nc\n\n\nd e\n") == ["a b\nc", "d e"]
    assert parse_paragraphs("one doc\nanother doc\n") == ["one doc", "another doc"]


def test_files_and_folders(tmp_path):
    (tmp_path / "wiki_00").write_text(WIKI)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("first paragraph here\n\nsecond paragraph here\n")
    corpus = load_corpus(str(tmp_path), min_chars=10)
    assert corpus.texts == ("first paragraph here", "second paragraph here", "Alpha is the first letter.\nIt has a history.", "Beta is the second letter.")
    assert corpus.metadata["kind"] == "files" and corpus.metadata["count"] == 4
    again = load_corpus(str(tmp_path), min_chars=10)
    assert again.fingerprint == corpus.fingerprint
    assert load_corpus(str(tmp_path), min_chars=10, max_texts=1).fingerprint != corpus.fingerprint


def test_real_wikiextractor_and_wikitext():
    wiki = load_corpus(str(shared_data("wikipedia_en_wikiextractor/AA/wiki_00")), max_texts=50)
    assert len(wiki.texts) == 50 and all(len(t) >= 200 and "<doc" not in t for t in wiki.texts)
    wikitext = load_corpus(str(shared_data("wikitext-2/valid.txt")), max_texts=20)
    assert len(wikitext.texts) == 20


def test_default_is_bundled_calibration_text():
    corpus = load_corpus(max_texts=10)
    assert corpus.metadata["resolved"] == "bundled:wiki"
    assert len(corpus.texts) == 10


def test_model_sampled_is_seeded_and_recorded():
    model, tok, _ = tiny_model("llama")
    a = load_corpus("model-sampled", model=model, tokenizer=tok, max_texts=2, sample_tokens=8, seed=3, min_chars=1)
    b = load_corpus("model-sampled", model=model, tokenizer=tok, max_texts=2, sample_tokens=8, seed=3, min_chars=1)
    c = load_corpus("model-sampled", model=model, tokenizer=tok, max_texts=2, sample_tokens=8, seed=4, min_chars=1)
    assert a.texts == b.texts and a.texts != c.texts
    assert a.metadata["kind"] == "model-sampled" and a.metadata["seed"] == 3


def test_bad_sources_are_clear(tmp_path):
    with pytest.raises(DataError, match="no such corpus"):
        load_corpus(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="available"):
        load_corpus("bundled:nonexistent")
    with pytest.raises(DataError, match="needs the model"):
        load_corpus("model-sampled")
    with pytest.raises(DataError, match="expected hf:"):
        load_corpus("hf:onlyname")


def test_default_without_the_calibration_package_is_an_error_not_sampled_text(monkeypatch):
    """Falling back to model-sampled text would change C0 and every locate-and-edit result with a log line only."""
    from editscope.data import corpora

    def missing(name):
        raise DataError(f"bundled:{name}", None, None, "package exllamav2 is not installed")

    monkeypatch.setattr(corpora, "calibration_file", missing)
    model, tok, _ = tiny_model("llama")
    with pytest.raises(DataError, match="model-sampled' text explicitly"):
        load_corpus("default", model=model, tokenizer=tok)
    sampled = load_corpus("model-sampled", model=model, tokenizer=tok, max_texts=2, sample_tokens=8, min_chars=1)
    assert sampled.metadata["kind"] == "model-sampled"
