"""The forward passes that z* (``linalg.values``) is optimized through.

z* adds a vector delta at one site (a block's output, or its MLP's) at one position of each row:
the subject's last token. Nothing the model computes at earlier positions depends on delta, and
nothing below the site at any position does. Two passes use that, and give the same logits to
rounding:

* :class:`FullRows`: every row whole (left-padded), the blocks below the site replayed from one
  cached pass.
* :class:`CachedPrefix` (the default): each row is split at the subject's last token into a
  prefix (the context template and the subject's other tokens) and a suffix (the subject's last
  token, the rest of the prompt and the target). One pass over the prefixes caches every layer's
  attention keys and values there; every optimization step then runs only the suffixes on top of
  that cache, with the blocks below the site replayed for the suffix positions, and unembeds only
  the positions that predict a target token (and the KL rows' last one). On the bundled demo facts
  a suffix is a fifth of a row's tokens.

Rows are ``n * t`` rewriting rows (request-major) then ``n`` KL rows, as ``compute_z`` lays them out.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from editscope.linalg.positions import PositionedBatch, PositionedRows, positioned_batch, positioned_rows
from editscope.models.hooks import StopForward, capture_inputs, capture_outputs, gather_rows, hooks, output_hidden, replace_hidden
from editscope.models.placement import input_device
from editscope.models.spec import ModelSpec
from editscope.tokens import head_logits


@dataclass(frozen=True)
class StepLogits:
    """One step's logits (float32): ``target`` ``[target tokens, vocab]``, the logits that predict each
    target token ``target_ids`` of rewriting row ``target_row`` (its rank among the step's rows), and
    ``kl`` ``[KL rows, vocab]`` at each KL row's last token."""

    target: Tensor
    target_ids: Tensor
    target_row: Tensor
    kl: Tensor


class _StandIn(nn.Module):
    """Stands in for a lower block: block 0 returns the cached output, the others pass it on.

    Attributes the model's layer loop reads from a block (e.g. Gemma's ``attention_type``) are
    looked up on the original block.
    """

    def __init__(self, original: nn.Module, output: Any, replay: bool) -> None:
        super().__init__()
        self.__dict__["_original"] = original
        self.__dict__["_output"] = output
        self.replay = replay

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"], name)

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        output = self.__dict__["_output"]
        return output if self.replay else replace_hidden(output, hidden_states)


@contextlib.contextmanager
def replay_lower_blocks(model: PreTrainedModel, spec: ModelSpec, last_skipped: int, output: Any):
    """Replace blocks ``0..last_skipped`` with a replay of block ``last_skipped``'s cached ``output``."""
    blocks = model.get_submodule(spec.layers)
    saved = [blocks[i] for i in range(last_skipped + 1)]
    try:
        for i in range(last_skipped + 1):
            blocks[i] = _StandIn(saved[i], output, replay=i == 0)
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


def adder(delta: Tensor, owner: Tensor, position: Tensor, batch_rows: Tensor | None = None) -> Callable[..., Any]:
    """Forward hook adding ``delta[owner[r]]`` to the site's output at ``(batch_rows[r], position[r])``
    (``batch_rows`` defaults to ``r``: one row each)."""

    def add(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        # The site may sit on another device than the inputs (a device map): move to it.
        hidden = output_hidden(output)
        batch = torch.arange(hidden.shape[0], device=hidden.device) if batch_rows is None else batch_rows.to(hidden.device)
        rows = (batch, position.to(hidden.device))
        added = torch.zeros_like(hidden).index_put(rows, delta[owner].to(device=hidden.device, dtype=hidden.dtype))
        return replace_hidden(output, hidden + added)

    return add


def _select_rows(batch: PositionedBatch, rows: Tensor) -> PositionedBatch:
    return PositionedBatch(
        batch.input_ids[rows], batch.attention_mask[rows], batch.position_ids[rows], batch.position[rows],
        batch.target_ids[rows], batch.target_mask[rows], batch.keep,
    )


class FullRows:
    """Whole left-padded rows each step; blocks ``0..last_skipped`` replayed from one cached pass."""

    def __init__(self, model: PreTrainedModel, spec: ModelSpec, site_path: str, last_skipped: int, tokenizer: Any,
                 prompts: Sequence[str], ends: Sequence[int], targets: Sequence[str | None]) -> None:
        self.model, self.spec, self.site_path, self.last_skipped = model, spec, site_path, last_skipped
        device = input_device(model)
        self.batch = positioned_batch(tokenizer, prompts, ends, targets, device)
        self.lower = None
        if last_skipped >= 0:
            path = spec.layer_path(last_skipped)
            self.lower = capture_outputs(model, [path], path, **self.batch.forward_kwargs())[path]
        with contextlib.ExitStack() as stack:
            if self.lower is not None:
                stack.enter_context(replay_lower_blocks(model, spec, last_skipped, self.lower))
            hidden = capture_outputs(model, [site_path], site_path, **self.batch.forward_kwargs())[site_path]
        self.site_values = gather_rows(output_hidden(hidden), self.batch.position).float().to(device)
        self._active: PositionedBatch | None = None

    def activate(self, stack: contextlib.ExitStack, rows: Tensor, delta: Tensor, owner: Tensor) -> None:
        """Run the next steps on ``rows`` only, adding ``delta[owner]`` at the site (contexts entered on ``stack``)."""
        self._active = _select_rows(self.batch, rows)
        if self.lower is not None:
            stack.enter_context(replay_lower_blocks(self.model, self.spec, self.last_skipped,
                                                    replace_hidden(self.lower, output_hidden(self.lower)[rows])))
        stack.enter_context(hooks(self.model, post={self.site_path: adder(delta, owner, self._active.position)}))

    def logits(self, n_rewrite: int) -> StepLogits:
        batch = self._active
        assert batch is not None
        logits = self.model(**batch.forward_kwargs()).logits.float()  # [rows, keep, vocab]
        rows, columns = batch.target_mask[:n_rewrite].nonzero(as_tuple=True)
        return StepLogits(logits[rows, columns], batch.target_ids[rows, columns], rows, logits[n_rewrite:, -1])


@dataclass(frozen=True)
class PrefixTrie:
    """The distinct prefixes of a batch's rows as a token trie, packed in one sequence.

    Rows that begin with the same tokens (the rows of one context template; one request's rows
    up to its subject) share those tokens' nodes, so each distinct prefix token is computed once.
    ``tokens``/``depth`` ``[N]`` are each node's token and position id (its index in every row
    through it); nodes come after their parents. ``sees[i, j]``: node ``j`` is node ``i`` or one of
    its ancestors. ``last[r]`` is row ``r``'s last prefix node (-1 for an empty prefix).
    """

    tokens: Tensor
    depth: Tensor
    sees: Tensor
    last: tuple[int, ...]


def prefix_trie(prefixes: Sequence[Sequence[int]]) -> PrefixTrie:
    """:class:`PrefixTrie` of ``prefixes`` (token id lists)."""
    index: dict[tuple[int, int], int] = {}
    tokens, depth, parent, last = [], [], [], []
    for prefix in prefixes:
        node = -1
        for d, token in enumerate(prefix):
            key = (node, int(token))
            if key not in index:
                index[key] = len(tokens)
                tokens.append(int(token))
                depth.append(d)
                parent.append(node)
            node = index[key]
        last.append(node)
    sees = torch.zeros((len(tokens), len(tokens)), dtype=torch.bool)
    for i, p in enumerate(parent):
        if p >= 0:
            sees[i] = sees[p]
        sees[i, i] = True
    return PrefixTrie(torch.tensor(tokens, dtype=torch.long), torch.tensor(depth, dtype=torch.long), sees, tuple(last))


@dataclass(frozen=True)
class PackedSuffixes:
    """Some rows' suffixes packed one after another into one sequence of ``T`` tokens after the trie's ``N``.

    ``ids``/``positions`` ``[1, T]``; ``sees[q, k]`` (``[T, N + T]``): suffix token ``q`` attends to
    key ``k`` (its row's prefix nodes and its row's earlier suffix tokens); ``starts[r]`` is the index
    of the r-th row's first suffix token (the site's position); ``target_index``/``target_ids``/
    ``target_row`` ``[N_t]`` list every target token: the suffix index whose logits predict it, its
    id, and the rank of its row among the packed rows; ``last_index[r]`` is each row's last token.
    """

    ids: Tensor
    positions: Tensor
    sees: Tensor
    starts: Tensor
    target_index: Tensor
    target_ids: Tensor
    target_row: Tensor
    last_index: Tensor


def pack_suffixes(rows: PositionedRows, trie: PrefixTrie, chosen: Sequence[int], device: torch.device) -> PackedSuffixes:
    """:class:`PackedSuffixes` of rows ``chosen`` (in that order), each split at its ``where``."""
    n_nodes = len(trie.tokens)
    ids, positions, starts, owner = [], [], [], []
    target_index, target_ids, target_row, last_index = [], [], [], []
    for rank, r in enumerate(chosen):
        w, tokens = rows.where[r], rows.tokens[r]
        start = len(ids)
        starts.append(start)
        ids.extend(tokens[w:])
        positions.extend(range(w, len(tokens)))
        owner.extend([rank] * (len(tokens) - w))
        last_index.append(len(ids) - 1)
        for j, token in enumerate(rows.targets[r]):  # target token j follows prompt position prompt_length - 1 + j
            target_index.append(start + rows.prompt_lengths[r] - 1 + j - w)
            target_ids.append(token)
            target_row.append(rank)
    width = len(ids)
    own = torch.tensor(owner)
    sees = torch.zeros((width, n_nodes + width), dtype=torch.bool)
    sees[:, n_nodes:] = (own[:, None] == own[None, :]) & torch.ones(width, width, dtype=torch.bool).tril()
    for rank, r in enumerate(chosen):
        if trie.last[r] >= 0:
            sees[own == rank, :n_nodes] = trie.sees[trie.last[r]]
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return PackedSuffixes(as_tensor(ids)[None], as_tensor(positions)[None], sees.to(device), as_tensor(starts),
                          as_tensor(target_index), as_tensor(target_ids), as_tensor(target_row), as_tensor(last_index))


def _mask(model: PreTrainedModel, sees: Tensor, cache: Any) -> Any:
    """One 4D attention mask (causal AND ``sees``) in the form the model's attention implementation takes."""
    from transformers.masking_utils import create_causal_mask

    queries, offset = sees.shape[0], sees.shape[1] - sees.shape[0]
    embeds = torch.empty((1, queries, 1), dtype=model.dtype, device=sees.device)

    def allowed(batch_idx: Tensor, head_idx: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return sees[q_idx - offset, kv_idx]

    return create_causal_mask(model.base_model.config, embeds, None, cache, and_mask_function=allowed, allow_is_causal_skip=False)


def _layer_types(model: PreTrainedModel) -> set[str]:
    return set(getattr(model.base_model.config, "layer_types", None) or ())


def packed_mask(model: PreTrainedModel, sees: Tensor, query_positions: Tensor, key_positions: Tensor, cache: Any) -> Any:
    """The attention mask of a packed pass, built by transformers' own mask factory.

    ``sees[q, k]`` (``[queries, keys]``) says which keys each query attends to; the keys are the
    ``cache``'s tokens then the queries themselves, at position ids ``key_positions``. A model with
    sliding-window layers (``config.layer_types``) gets one mask per layer type, the sliding one
    also limited to keys less than ``sliding_window`` positions back, as in the model's own masks.
    """
    full = _mask(model, sees, cache)
    window = getattr(model.base_model.config, "sliding_window", None)
    if "sliding_attention" not in _layer_types(model) or not window:
        return full
    near = (query_positions[:, None] - key_positions[None, :]) < window
    return {"full_attention": full, "sliding_attention": _mask(model, sees & near, cache)}


def fits_prefix_cache(model: PreTrainedModel, rows: PositionedRows) -> bool:
    """Whether :class:`CachedPrefix` computes exactly what :class:`FullRows` does for ``rows``."""
    return fits_packed(model, max(len(t) for t in rows.tokens))


def fits_packed(model: PreTrainedModel, longest: int) -> bool:
    """Whether a packed pass (prefix trie, packed suffixes) is exact for rows of up to ``longest`` tokens.

    A packed pass sets every query's keys by its own masks: exact for full attention, and for
    sliding windows in models whose ``config.layer_types`` name them (each type gets its mask).
    Another model with a sliding window is exact only while every row fits in the window.
    """
    window = getattr(model.base_model.config, "sliding_window", None)
    if not window or _layer_types(model) <= {"full_attention", "sliding_attention"} and _layer_types(model):
        return True
    return longest < window


@torch.no_grad()
def trie_inputs(model: PreTrainedModel, sequences: Sequence[Sequence[int]], paths: Sequence[str], stop_after: str) -> dict[str, Tensor]:
    """The first input of each module in ``paths`` at the last token of every sequence: ``{path: [sequences, d]}``.

    The sequences run as one packed pass over their :class:`PrefixTrie`, so tokens they share (a
    context template, a subject's leading tokens) are computed once; equal to running each sequence
    whole, to float rounding. Callers check :func:`fits_packed` first.
    """
    trie = prefix_trie(sequences)
    device = input_device(model)
    depth = trie.depth.to(device)
    mask = packed_mask(model, trie.sees.to(device), depth, depth, None)
    captured = capture_inputs(model, list(paths), stop_after, input_ids=trie.tokens[None].to(device),
                              position_ids=depth[None], attention_mask=mask, use_cache=False)
    last = torch.tensor(trie.last, dtype=torch.long)
    return {path: captured[path][0, last.to(captured[path].device)] for path in paths}


class CachedPrefix:
    """Packed suffixes on a cached prefix trie (module docstring); the same interface as :class:`FullRows`."""

    def __init__(self, model: PreTrainedModel, spec: ModelSpec, site_path: str, last_skipped: int, tokenizer: Any,
                 prompts: Sequence[str], ends: Sequence[int], targets: Sequence[str | None], positioned: PositionedRows | None = None) -> None:
        from transformers import DynamicCache

        self.model, self.spec, self.site_path, self.last_skipped = model, spec, site_path, last_skipped
        self.device = device = input_device(model)
        self.rows = rows = positioned_rows(tokenizer, prompts, ends, targets) if positioned is None else positioned
        self.trie = trie = prefix_trie([t[:w] for t, w in zip(rows.tokens, rows.where)])
        self.cache = None
        if len(trie.tokens):
            self.cache = DynamicCache()  # one plain layer per block: no sliding-window truncation of the packed keys
            depth = trie.depth.to(device)
            mask = packed_mask(model, trie.sees.to(device), depth, depth, None)
            self.model.base_model(input_ids=trie.tokens[None].to(device), position_ids=depth[None], attention_mask=mask, cache=self.cache,
                                  use_cache=True)
        everything = pack_suffixes(rows, trie, range(len(rows.tokens)), device)
        lower_path = spec.layer_path(last_skipped) if last_skipped >= 0 else None
        captured = self._capture([p for p in (lower_path, site_path) if p is not None], everything)
        self._lower = captured[lower_path] if lower_path else None  # [1, T, d]: every row's suffix tokens
        self._token_rows = [range(s, s + len(t) - w) for s, t, w in zip(everything.starts.tolist(), rows.tokens, rows.where)]
        self.site_values = output_hidden(captured[site_path])[0, everything.starts].float().to(device)
        self._packed: PackedSuffixes | None = None
        self._mask: Any = None

    def _inputs(self, packed: PackedSuffixes, cache: Any, mask: Any) -> dict[str, Any]:
        return {"input_ids": packed.ids, "position_ids": packed.positions, "attention_mask": mask, "cache": cache, "use_cache": cache is not None}

    def _packed_mask(self, packed: PackedSuffixes, cache: Any) -> Any:
        keys = torch.cat([self.trie.depth.to(self.device), packed.positions[0]])
        return packed_mask(self.model, packed.sees, packed.positions[0], keys, cache)

    def _fresh_cache(self) -> Any:
        return copy.deepcopy(self.cache) if self.cache is not None else None  # a pass appends its suffix to the cache

    @torch.no_grad()
    def _capture(self, paths: list[str], packed: PackedSuffixes) -> dict[str, Any]:
        captured: dict[str, Any] = {}

        def grab(path: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
                captured[path] = output
                if path == self.site_path:
                    raise StopForward

            return hook

        cache = self._fresh_cache()
        with hooks(self.model, post={p: grab(p) for p in paths}), contextlib.suppress(StopForward):
            self.model.base_model(**self._inputs(packed, cache, self._packed_mask(packed, cache)))
        return captured

    def activate(self, stack: contextlib.ExitStack, rows: Tensor, delta: Tensor, owner: Tensor) -> None:
        """Run the next steps on ``rows`` only, adding ``delta[owner]`` at the site (contexts entered on ``stack``)."""
        chosen = rows.tolist()
        self._packed = packed = pack_suffixes(self.rows, self.trie, chosen, self.device)
        self._mask = self._packed_mask(packed, self.cache)
        if self._lower is not None:
            hidden = output_hidden(self._lower)
            tokens = torch.tensor([i for r in chosen for i in self._token_rows[r]], device=hidden.device)
            stack.enter_context(replay_lower_blocks(self.model, self.spec, self.last_skipped, replace_hidden(self._lower, hidden[:, tokens])))
        at_site = (torch.zeros_like(packed.starts), packed.starts)
        stack.enter_context(hooks(self.model, post={self.site_path: adder(delta, owner, at_site[1], batch_rows=at_site[0])}))

    def logits(self, n_rewrite: int) -> StepLogits:
        packed = self._packed
        assert packed is not None
        hidden = self.model.base_model(**self._inputs(packed, self._fresh_cache(), self._mask)).last_hidden_state[0]  # [T, d]
        target = head_logits(self.model, hidden[packed.target_index.to(hidden.device)]).float()
        kl = head_logits(self.model, hidden[packed.last_index[n_rewrite:].to(hidden.device)]).float()
        return StepLogits(target, packed.target_ids, packed.target_row, kl)


def z_pass(model: PreTrainedModel, spec: ModelSpec, site_path: str, last_skipped: int, tokenizer: Any, prompts: Sequence[str],
           ends: Sequence[int], targets: Sequence[str | None], *, prefix_cache: bool) -> FullRows | CachedPrefix:
    """The pass z* runs through: :class:`CachedPrefix` where asked for and exact (:func:`fits_prefix_cache`), else :class:`FullRows`."""
    if prefix_cache:
        rows = positioned_rows(tokenizer, prompts, ends, targets)
        if fits_prefix_cache(model, rows):
            return CachedPrefix(model, spec, site_path, last_skipped, tokenizer, prompts, ends, targets, positioned=rows)
    return FullRows(model, spec, site_path, last_skipped, tokenizer, prompts, ends, targets)
