"""Context templates as the reference ``get_context_templates`` / ``generate_fast`` make them."""

from __future__ import annotations

import torch

from editscope.editors.locate import LocateConfig
from editscope.editors.rome import RomeConfig
from editscope.linalg.templates import MEMIT_SEEDS, context_templates, template_text
from editscope.linalg.updates import null_space_projector
from editscope.models import tiny_model


def test_rome_has_21_templates_and_memit_6():
    model, tok, _ = tiny_model("llama")
    rome, memit = RomeConfig(), LocateConfig()
    assert len(context_templates(model, tok, rome.context_lengths, rome.context_seeds, 0)) == 21  # old: MEMIT's 6
    assert len(context_templates(model, tok, memit.context_lengths, memit.context_seeds, 0)) == 6
    assert memit.context_seeds == MEMIT_SEEDS and rome.context_seeds == () and rome.key_average == "uniform"


def test_the_length_counts_the_seed_and_the_generation_config_is_not_used():
    """generate_fast samples until the row, seed included, is ``length`` tokens long; the old code added
    ``length`` new tokens with the model's own generation settings."""
    model, tok, _ = tiny_model("gpt2")
    seed_ids = tok("The", add_special_tokens=True)["input_ids"]
    texts = context_templates(model, tok, [(10, 5)], MEMIT_SEEDS, 0)
    first = texts[1][: -len(". {}")]
    assert first.startswith("The") and len(tok(first, add_special_tokens=True)["input_ids"]) <= 10 < 10 + len(seed_ids)
    model.generation_config.temperature = 0.01
    model.generation_config.top_k = 1
    assert context_templates(model, tok, [(10, 5)], MEMIT_SEEDS, 0) == texts
    assert context_templates(model, tok, [(10, 5)], MEMIT_SEEDS, 1) != texts


def test_template_text_replaces_blank_lines_and_braces():
    _, tok, _ = tiny_model("llama")
    ids = tok("a\n\nb {x}", add_special_tokens=False)["input_ids"]
    assert template_text(tok, ids) == "a b  x . {}"


def test_alphaedit_threshold_is_the_reference_2e_2():
    """Eigenvalues 0.005, 0.015, 0.03: AlphaEdit's 2e-2 keeps two directions in the null space, the old 1e-2 one."""
    from editscope.editors.alphaedit import AlphaEditConfig

    c0 = torch.diag(torch.tensor([0.005, 0.015, 0.03], dtype=torch.float64))
    assert AlphaEditConfig().nullspace_threshold == 0.02
    assert int(torch.linalg.matrix_rank(null_space_projector(c0, AlphaEditConfig().nullspace_threshold))) == 2
    assert int(torch.linalg.matrix_rank(null_space_projector(c0, 1e-2))) == 1
