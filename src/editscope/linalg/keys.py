"""Keys k*: the input of the edited MLP output projection at the subject's last token.

ROME (Meng et al. 2022, eq. 3) and MEMIT (Meng et al. 2023, eq. 19 / Alg. 1 line 9) average the
key over the prompt preceded by short texts sampled from the model (:mod:`editscope.linalg.templates`),
so that it does not depend on one context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editscope.linalg.positions import positioned_batch, positioned_rows
from editscope.linalg.zpass import fits_packed, trie_inputs
from editscope.models.hooks import capture_inputs, capture_outputs, gather_rows, output_hidden
from editscope.models.placement import input_device
from editscope.models.spec import ModelSpec
from editscope.types import EditRequest

KEY_AVERAGES = ("groups", "uniform")
"""How keys are averaged over the templates (the bare one first): ``groups`` -- the bare template's key
and the mean of the prefixed ones, half each (kmeng01/memit ``compute_ks``: a mean within each
template group, then across groups); ``uniform`` -- one mean over all (kmeng01/rome ``compute_u``)."""


def template_weights(n_templates: int, average: str) -> Tensor:
    """Each template's weight in a key (:data:`KEY_AVERAGES`), ``Float[Tensor, "templates"]``, summing to 1."""
    if average not in KEY_AVERAGES:
        raise ValueError(f"key average: unknown {average!r}; expected one of {', '.join(KEY_AVERAGES)}")
    if average == "uniform" or n_templates == 1:
        return torch.full((n_templates,), 1.0 / n_templates)
    return torch.cat([torch.tensor([0.5]), torch.full((n_templates - 1,), 0.5 / (n_templates - 1))])


def contextual_prompts(requests: Sequence[EditRequest], templates: Sequence[str]) -> tuple[list[str], list[int]]:
    """Every request's prompt in every template (request-major) and the character end of its subject."""
    prompts, ends = [], []
    for request in requests:
        for template in templates:
            head = template.split("{}", 1)[0]
            prompts.append(template.replace("{}", request.text, 1))
            ends.append(len(head) + request.subject_char_span[1])
    return prompts, ends


@torch.no_grad()
def compute_keys(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    layers: Sequence[int],
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    *,
    average: str = "groups",
    packed: bool = True,
) -> dict[int, Tensor]:
    """k* per layer: ``{layer: Float[Tensor, "d_mlp n_requests"]}``, averaged over ``templates`` (the
    bare one first) as ``average`` says (:data:`KEY_AVERAGES`).

    One forward pass for all layers, stopped after the deepest one. A key depends only on the
    tokens up to the subject's last one, so with ``packed`` (where exact, see
    :func:`~editscope.linalg.zpass.fits_packed`) only those run, each token they share once
    (:func:`~editscope.linalg.zpass.trie_inputs`); otherwise whole left-padded prompts.
    """
    prompts, ends = contextual_prompts(requests, templates)
    paths = {layer: spec.module_path(layer, "mlp_out") for layer in layers}
    rows = positioned_rows(tokenizer, prompts, ends, [None] * len(prompts))
    heads = [tokens[: where + 1] for tokens, where in zip(rows.tokens, rows.where)]
    if packed and fits_packed(model, max(len(h) for h in heads)):
        at_subject = trie_inputs(model, heads, list(paths.values()), paths[max(layers)])
    else:
        device = input_device(model)
        batch = positioned_batch(tokenizer, prompts, ends, [None] * len(prompts), device)
        captured = capture_inputs(model, list(paths.values()), paths[max(layers)], input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
        at_subject = {path: gather_rows(captured[path], batch.position) for path in paths.values()}
    weights = template_weights(len(templates), average)
    keys = {}
    for layer, path in paths.items():
        rows_k = at_subject[path].reshape(len(requests), len(templates), -1)  # [n, T, d_mlp]
        keys[layer] = torch.einsum("ntd,t->dn", rows_k, weights.to(device=rows_k.device, dtype=rows_k.dtype)).contiguous()
    return keys


@torch.no_grad()
def bare_prompt_outputs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], paths: Sequence[str]
) -> dict[str, Tensor]:
    """Each module's output at each bare prompt's subject token, ``{path: [d, n]}`` (float32)."""
    device = input_device(model)
    prompts, ends = contextual_prompts(requests, ("{}",))
    batch = positioned_batch(tokenizer, prompts, ends, [None] * len(prompts), device)
    outputs = capture_outputs(
        model, list(paths), paths[-1],
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False,
    )
    return {path: gather_rows(output_hidden(outputs[path]), batch.position).float().T.contiguous() for path in paths}


def compute_site_values(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    layer: int,
    requests: Sequence[EditRequest],
) -> Tensor:
    """The residual stream after block ``layer`` at each bare prompt's subject token, ``[d_model, n]``."""
    path = spec.layer_path(layer)
    return bare_prompt_outputs(model, tokenizer, requests, [path])[path]
