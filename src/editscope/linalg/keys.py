"""Keys k*: the input of the edited MLP output projection at the subject's last token.

ROME (Meng et al. 2022, eq. 3) and MEMIT (Meng et al. 2023, eq. 19 / Alg. 1 line 9) average the
key over the prompt preceded by short random prefixes, so that it does not depend on one context.
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
from editscope.precision import seeded
from editscope.types import EditRequest

PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def context_templates(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n_prefixes: int, prefix_tokens: int, seed: int
) -> tuple[str, ...]:
    """``("{}", "<prefix>. {}", ...)``: the bare prompt plus ``n_prefixes`` sampled prefixes (MEMIT's context templates).

    Prefixes are sampled from the model itself (temperature 1, top-k 5) starting from a few
    common words, with a fixed seed and the caller's RNG state left alone.
    """
    templates = ["{}"]
    if n_prefixes <= 0:
        return tuple(templates)
    device = input_device(model)
    with seeded(device, seed):
        for i in range(n_prefixes):
            start = tokenizer(PREFIX_SEEDS[i % len(PREFIX_SEEDS)], return_tensors="pt", add_special_tokens=True)
            out = model.generate(
                input_ids=start["input_ids"].to(device),
                attention_mask=start["attention_mask"].to(device),
                do_sample=True,
                top_k=5,
                max_new_tokens=prefix_tokens,
                min_new_tokens=prefix_tokens,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
            text = tokenizer.decode(out[0], skip_special_tokens=True).replace("{", " ").replace("}", " ").strip()
            templates.append(text + ". {}")
    return tuple(templates)


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
    packed: bool = True,
) -> dict[int, Tensor]:
    """k* per layer: ``{layer: Float[Tensor, "d_mlp n_requests"]}``, averaged over ``templates``.

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
    keys = {}
    for layer, path in paths.items():
        rows_k = at_subject[path]  # [n * T, d_mlp]
        keys[layer] = rows_k.reshape(len(requests), len(templates), -1).mean(dim=1).T.contiguous()
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
