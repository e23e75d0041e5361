"""The Gram engine: parameter-level aggregation without the K x P Jacobian.

``engine = GramEngine(*shared_modules)`` hooks the shared modules once. Each step, ``engine.backward(losses,
aggregator=...)`` has the contract of :func:`mtl_fast.backward` but never forms the Jacobian:

1. the forward hooks record, for every call of a module that owns parameters, what its parameters' gradients
   need: the input (Linear, Conv2d, Embedding) and the gradient edge of the output (taken before any in-place
   op can rewrite it), plus the autograd nodes the call created, which tell which parameters it used;
2. one backward batched over the K cotangents (``is_grads_batched``) gives every recorded output its K task
   gradients Delta_k, and every task-specific parameter its K gradients, summed at once; the shared weights'
   gradients are not computed in it at all;
3. each shared parameter adds its share to G, the cheaper way for its shapes (FLOP counts): the ghost product
   <Delta_i, (A A^T) Delta_j> (Linear, Conv2d through the unfolded input), its K gradients formed from (A, Delta)
   and dropped again, or, for any other module (norm layers, attention, custom ones), the K gradients of one
   module call by a vector-Jacobian product cut at the call's inputs;
4. w = aggregator.weights(G), then ONE backward of sum_k w_k L_k restricted to the shared parameters writes their
   ``.grad``; the task-specific parameters get the task sum of step 2 (weight 1, as ``mf.backward`` gives them).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import _ops
from ._engine_dist import Ranks
from ._grad import accumulate_grads
from .aggregation import Aggregator, GramAggregator
from .distributed import GlobalGram, agreed_weights
from .jacobian import check_losses

__all__ = ["GramEngine"]


class _Cut:
    """Whether the boundaries in front of generic module calls block the gradient (step 3) or pass it."""

    active = False


class _Boundary(torch.autograd.Function):
    """Identity in front of a generic module's inputs. While :class:`_Cut` is active it blocks the gradient, so
    that a vector-Jacobian product from a call's outputs reaches the parameters through that call only, not again
    through earlier calls of the same module (whose share is counted with their own outputs' gradients)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Optional[Tensor]:
        return None if _Cut.active else grad


def _kind(module: nn.Module) -> str:
    """Which formula serves the module's parameters: 'linear', 'conv2d', 'embedding', or 'generic' (a
    vector-Jacobian product) for everything else, including subclasses that override forward."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return "linear"
    if (isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)):
        return "conv2d"
    if (isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward
            and module.max_norm is None and not module.scale_grad_by_freq and not module.sparse):
        return "embedding"
    return "generic"


class _Call:
    """One forward call of a hooked module within the current step."""

    def __init__(self, module: nn.Module, kind: str, seq: int, stops: Set) -> None:
        self.module = module
        self.kind = kind
        self.seq = seq
        self.stops = stops  # the grad_fns of the inputs: where this call's part of the graph ends
        self.input: Optional[Tensor] = None
        self.input_version = 0
        self.edges: List[GradientEdge] = []
        self.params: List[Tensor] = []
        self.deltas: List[Optional[Tensor]] = []


def _tensors(tree) -> List[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


class GramEngine:
    """Parameter-level multi-task backward through the K x K Gram matrix, without the Jacobian.

    Create it once over the shared modules (it registers forward hooks on every submodule that owns parameters);
    then, each step, run the forward and call :meth:`backward`. Every parameter of the modules that requires grad
    is shared; every other parameter the losses reach is task-specific.

    Extra memory over a plain step: K x the output gradients of all hooked calls (held from the batched backward
    until G is complete), plus the largest of K x one layer's parameters (a formed layer) and R^2 + 2 K R m
    float64 numbers (a ghost layer with R input rows and m outputs), plus K x the task-specific parameters. See
    docs/engine.md.

    Args:
        shared_modules: the modules whose parameters the tasks share (e.g. ``model.trunk``).
    Raises:
        TypeError / ValueError when no module is given, or something that is not an ``nn.Module``.
    """

    def __init__(self, *shared_modules: nn.Module) -> None:
        if not shared_modules:
            raise ValueError("shared_modules: expected at least one nn.Module, got none")
        for i, m in enumerate(shared_modules):
            if not isinstance(m, nn.Module):
                raise TypeError(f"shared_modules[{i}]: expected an nn.Module, got {type(m).__name__}")
        self._names: Dict[int, str] = {}
        hooked: Dict[int, nn.Module] = {}
        for i, top in enumerate(shared_modules):
            for prefix, m in top.named_modules(prefix=f"shared_modules[{i}]", remove_duplicate=False):
                for name, p in m.named_parameters(recurse=False):
                    self._names.setdefault(id(p), f"{prefix}.{name}")
                if any(p is not None for p in m._parameters.values()):
                    hooked[id(m)] = m
        if not self._names:
            raise ValueError("shared_modules: none of them has parameters")
        self._params = {id(p): p for m in shared_modules for p in m.parameters()}
        self._calls: List[_Call] = []
        self._pending: Dict[int, List[Optional[_Call]]] = {}
        self._owner: Dict[object, _Call] = {}
        self._started = 0  # calls begun: orders nested calls after the ones that contain them
        self._handles = []
        #: Bytes per rank of the last backward with process_group: {'chosen': what it moved, 'all_reduce': what
        #: all-reducing every layer's K gradients would have moved}.
        self.last_communication: Optional[Dict[str, int]] = None
        for m in hooked.values():
            self._handles.append(m.register_forward_pre_hook(self._before, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._after, with_kwargs=True))

    def remove(self) -> None:
        """Removes the hooks and forgets what was recorded."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._forget()

    def _forget(self) -> None:
        self._calls, self._owner = [], {}

    # --- forward: recording ----------------------------------------------------------------------------------

    def _before(self, module: nn.Module, args: tuple, kwargs: dict):
        stack = self._pending.setdefault(id(module), [])
        if not torch.is_grad_enabled():
            stack.append(None)
            return None
        kind = _kind(module)
        self._started += 1
        if kind != "generic":
            stack.append(_Call(module, kind, self._started, {
                t.grad_fn for t in _tensors((args, kwargs)) if t.grad_fn is not None}))
            return None
        # One boundary per distinct input tensor: attention tests `query is key` to take its self-attention path.
        leaves, spec = tree_flatten((args, kwargs))
        wrapped: Dict[int, Tensor] = {}
        for i, t in enumerate(leaves):
            if isinstance(t, Tensor) and t.requires_grad:
                if id(t) not in wrapped:
                    wrapped[id(t)] = _Boundary.apply(t)
                leaves[i] = wrapped[id(t)]
        stack.append(_Call(module, kind, self._started, {t.grad_fn for t in wrapped.values()}))
        return tree_unflatten(leaves, spec) if wrapped else None

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        call = self._pending[id(module)].pop()
        if call is None:
            return
        outputs = [t for t in _tensors(output) if t.grad_fn is not None]
        if not outputs:
            return
        call.edges = [get_gradient_edge(t) for t in outputs]
        if call.kind != "generic":
            x = args[0] if args else kwargs["input"]
            # Under autocast the layer multiplied a cast copy of its input: the gradient is made of that copy.
            if call.kind != "embedding" and x.dtype != outputs[0].dtype:
                x = x.to(outputs[0].dtype)
            call.input, call.input_version = x.detach(), x._version
        self._claim(call, outputs)
        self._calls.append(call)

    def _claim(self, call: _Call, outputs: List[Tensor]) -> None:
        """Walks the graph the call created (from its outputs back to its inputs) and records the shared
        parameters it used. Nodes of calls nested in it are crossed but stay theirs; nodes of earlier calls end
        the walk, as do the inputs."""
        stack = [t.grad_fn for t in outputs]
        seen = set()
        params: Dict[int, Tensor] = {}
        while stack:
            node = stack.pop()
            if node is None or node in seen or node in call.stops:
                continue
            seen.add(node)
            owner = self._owner.get(node)
            if owner is not None and owner.seq < call.seq:
                continue
            variable = getattr(node, "variable", None)
            if variable is not None:
                continue
            if owner is None:
                self._owner[node] = call
                for next_node, _ in node.next_functions:
                    p = getattr(next_node, "variable", None)
                    if p is not None and id(p) in self._params:
                        params[id(p)] = p
            stack.extend(next_node for next_node, _ in node.next_functions)
        call.params = list(params.values())

    # --- backward ----------------------------------------------------------------------------------------------

    def backward(self, losses: Union[Tensor, Sequence[Tensor]], *, aggregator: Aggregator,
                 retain_graph: bool = False, process_group: Optional[dist.ProcessGroup] = None) -> Tensor:
        """Backpropagates K task losses, combining the shared parameters' task gradients with ``aggregator``.

        Exactly the contract of :func:`mtl_fast.backward` with the hooked modules' parameters as
        ``shared_params``: shared parameters get the aggregate of their K per-task gradients, every other
        parameter the losses reach gets its ordinary gradient of the loss sum, accumulated into ``.grad``.

        Args:
            losses: K scalar losses (a sequence, or a 1-D tensor of them), computed from a forward through the
                hooked modules since the last call.
            aggregator: a Gram-based aggregator (``mf.PCGrad()``, ``mf.MGDA()``, ...) or a fixed-weight one
                (``mf.Sum()``, ``mf.Mean()``, ``mf.Weighted(...)``: one ordinary backward, no G).
            retain_graph: keep the graph (and what the hooks recorded) for another backward.
            process_group: as in :func:`mtl_fast.backward`: each rank holds an equal share of the batch, and every
                rank writes the bitwise same gradients, those of one process on the whole batch (G is the Gram
                of the global-batch task gradients). Every rank must run the same model and call this with the
                same aggregator, and its losses must reach the same parameters. See :mod:`mtl_fast._engine_dist`.
        Returns:
            The (K,) float64 weights applied to the shared gradients.
        Raises:
            ValueError / TypeError on bad input; RuntimeError when a shared parameter is reached other than
            through a recorded forward of a hooked module (used outside its module, or no forward recorded).
            Nothing is written to any ``.grad`` in these cases (nor when a collective fails).
        """
        losses = check_losses(losses)
        if not isinstance(aggregator, GramAggregator) or isinstance(aggregator, GlobalGram):
            raise TypeError(f"aggregator: GramEngine needs a Gram-based aggregator of mtl_fast (e.g. "
                            f"mtl_fast.PCGrad(), mtl_fast.Sum()), got {type(aggregator).__name__}, which combines "
                            "the task gradients coordinate by coordinate: use mtl_fast.backward for it")
        K, device = len(losses), losses[0].device
        shared, others, calls = self._reached(losses)
        for i, p in enumerate(shared):
            if p.device != device:
                raise ValueError(f"{self._names[id(p)]}: is on {p.device} but the losses are on {device}")
        if process_group is not None:
            weights = self._backward_across_ranks(losses, shared, others, calls, aggregator, retain_graph,
                                                  Ranks(process_group))
        elif aggregator.fixed_weights(K, device) is not None:
            # Python-float weights, as a user writes sum(w_k * L_k): the same graph, the same bits.
            scales = aggregator.fixed_weights(K, torch.device("cpu")).tolist()
            torch.autograd.backward(sum(s * loss for s, loss in zip(scales, losses)), retain_graph=retain_graph)
            weights = torch.tensor(scales, dtype=torch.float64, device=device)
        else:
            if aggregator.needs_losses:
                aggregator.update_losses([loss.detach() for loss in losses])
            others_sum = self._task_gradients(losses, calls, others)
            G = torch.zeros(K, K, dtype=torch.float64, device=device)
            for params, unit_calls in _units(shared, calls):
                G += self._unit_gram(params, unit_calls, K, None)
            for call in calls:
                call.deltas = []
            weights = aggregator.weights(G)
            weighted = (torch.stack(losses) * weights.to(losses[0].dtype)).sum()
            torch.autograd.backward(weighted, inputs=shared, retain_graph=retain_graph)
            with torch.no_grad():
                reached = [(p, g) for p, g in zip(others, others_sum) if g is not None]
                accumulate_grads([p for p, _ in reached], [g for _, g in reached])
        if not retain_graph:
            self._forget()
        return weights

    def _backward_across_ranks(self, losses: List[Tensor], shared: List[Tensor], others: List[Tensor],
                               calls: List[_Call], aggregator: GramAggregator, retain_graph: bool,
                               ranks: Ranks) -> Tensor:
        """backward() with the task gradients averaged over the ranks: G from the per-layer collectives of
        :class:`~mtl_fast._engine_dist.Ranks` divided by R^2 (the mean J/R has Gram G/R^2), the weighted
        gradients and the task-specific sums reduced once at the end and divided by R."""
        K, device = len(losses), losses[0].device
        fixed = aggregator.fixed_weights(K, device) is not None
        ranks.agree([fixed, K, [self._names[id(p)] for p in shared], [(str(p.dtype), tuple(p.shape)) for p in others],
                     [(c.kind, type(c.module).__name__, len(c.edges)) for c in calls]],
                    "the tasks, the shared parameters reached, the task-specific ones or the hooked calls")
        if fixed:
            weights = aggregator.fixed_weights(K, torch.device("cpu"))
            weighted = sum(s * loss for s, loss in zip(weights.tolist(), losses))
            weights = weights.to(device)
            grads = torch.autograd.grad(weighted, shared + others, retain_graph=retain_graph, materialize_grads=True)
            shared_grads, others_sum = list(grads[:len(shared)]), list(grads[len(shared):])
        else:
            if aggregator.needs_losses:
                # the losses of the global batch, so that every rank computes the same weights
                mean_losses = torch.stack([loss.detach() for loss in losses])
                dist.all_reduce(mean_losses, group=ranks.group)
                aggregator.update_losses(mean_losses / ranks.size)
            others_sum = [torch.zeros_like(p) if g is None else g
                          for p, g in zip(others, self._task_gradients(losses, calls, others))]
            G = torch.zeros(K, K, dtype=torch.float64, device=device)
            for params, unit_calls in _units(shared, calls):
                G += self._unit_gram(params, unit_calls, K, ranks)
            for call in calls:
                call.deltas = []
            weights = agreed_weights(aggregator, G / ranks.size ** 2, ranks.group)
            weighted = (torch.stack(losses) * weights.to(losses[0].dtype)).sum()
            shared_grads = list(torch.autograd.grad(weighted, shared, retain_graph=retain_graph,
                                                    materialize_grads=True))
        ranks.sum_(shared_grads + others_sum, alternative=True)
        self.last_communication = dict(ranks.bytes)
        with torch.no_grad():
            accumulate_grads(shared + others, [g.div_(ranks.size) for g in shared_grads + others_sum])
        return weights

    def _reached(self, losses: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[_Call]]:
        """The shared and the task-specific parameters the losses reach and the recorded calls they reach, after
        checking that every use of a shared parameter was inside a recorded call."""
        shared: Dict[int, Tensor] = {}
        others: Dict[int, Tensor] = {}
        stack = [loss.grad_fn for loss in losses]
        seen = set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            variable = getattr(node, "variable", None)
            if variable is not None:
                if id(variable) not in self._params:
                    others.setdefault(id(variable), variable)
                continue
            for next_node, _ in node.next_functions:
                p = getattr(next_node, "variable", None)
                if p is not None and id(p) in self._params:
                    if node not in self._owner:
                        raise RuntimeError(self._unrecorded_message(p))
                    shared.setdefault(id(p), p)
            stack.extend(next_node for next_node, _ in node.next_functions)
        if not shared:
            raise ValueError("shared_modules: the losses reach none of their parameters")
        order = {i: n for n, i in enumerate(self._params)}
        shared = dict(sorted(shared.items(), key=lambda item: order[item[0]]))
        calls = [c for c in self._calls if any(e.node in seen for e in c.edges)]
        for call in calls:
            if call.input is not None and call.input._version != call.input_version:
                raise RuntimeError(f"GramEngine: the input of {type(call.module).__name__} (which uses "
                                   f"{self._names[id(call.params[0])] if call.params else 'no parameter'}) was "
                                   "modified in place after its forward")
        return list(shared.values()), list(others.values()), calls

    def _unrecorded_message(self, p: Tensor) -> str:
        name = self._names[id(p)]
        if not self._calls:
            return (f"GramEngine: the losses reach {name}, but no forward through the hooked modules was recorded "
                    "since the last backward (was the forward run before the engine was created, or under "
                    "torch.no_grad()?)")
        return (f"GramEngine: {name} is used outside the forward of any module given to GramEngine (e.g. "
                "`x @ module.weight` in another module); give the engine the module that uses it, or use it "
                "only through its own module")

    def _task_gradients(self, losses: List[Tensor], calls: List[_Call],
                        others: List[Tensor]) -> List[Optional[Tensor]]:
        """Step 2: every recorded output's K task gradients (stored on its call) and the task sum of every
        task-specific parameter's gradient."""
        K = len(losses)
        edges = [e for c in calls for e in c.edges]
        stacked = torch.stack(losses)
        eye = torch.eye(K, dtype=stacked.dtype, device=stacked.device)
        try:
            grads = list(torch.autograd.grad(stacked, edges + others, grad_outputs=eye, retain_graph=True,
                                             allow_unused=True, is_grads_batched=True))
        except RuntimeError:
            # Some op has no batching rule: one backward per task, rows gathered.
            per_task = [torch.autograd.grad(loss, edges + others, retain_graph=True, allow_unused=True)
                        for loss in losses]
            grads = [_stack_rows([row[i] for row in per_task]) for i in range(len(edges) + len(others))]
        it = iter(grads[:len(edges)])
        for call in calls:
            call.deltas = [next(it) for _ in call.edges]
        return [None if g is None else g.sum(0) for g in grads[len(edges):]]

    def _unit_gram(self, params: List[Tensor], calls: List[_Call], K: int, ranks: Optional[Ranks]) -> Tensor:
        """Step 3 for one unit (parameters linked by the calls that use them): its share of G (with ``ranks``:
        of the sums over the ranks)."""
        if all(c.kind != "generic" for c in calls):
            G = 0
            for p in params:
                G = G + _formula_gram(p, [c for c in calls if any(q is p for q in c.params)], K, ranks)
            return G
        grads = self._generic_gradients(params, [c for c in calls if c.kind == "generic"], K)
        for c in calls:
            if c.kind != "generic":
                for i, p in enumerate(params):
                    if any(q is p for q in c.params):
                        g = _formula_gradients(p, c, K)
                        grads[i] = g if grads[i] is None else grads[i] + g
        present = [g for g in grads if g is not None]
        return _formed_gram(present, ranks) if present else 0

    def _generic_gradients(self, params: List[Tensor], calls: List[_Call], K: int) -> List[Optional[Tensor]]:
        """The K task gradients of ``params`` through these calls alone: a VJP from their outputs' Delta_k,
        cut at their inputs."""
        outputs, deltas = [], []
        for c in calls:
            for e, d in zip(c.edges, c.deltas):
                if d is not None:
                    outputs.append(e)
                    deltas.append(d)
        if not outputs:
            return [None] * len(params)
        _Cut.active = True
        try:
            try:
                return list(torch.autograd.grad(outputs, params, grad_outputs=deltas, retain_graph=True,
                                                allow_unused=True, is_grads_batched=True))
            except RuntimeError:
                rows = [torch.autograd.grad(outputs, params, grad_outputs=[d[k] for d in deltas],
                                            retain_graph=True, allow_unused=True) for k in range(K)]
                return [_stack_rows([row[i] for row in rows]) for i in range(len(params))]
        finally:
            _Cut.active = False


def _stack_rows(rows: List[Optional[Tensor]]) -> Optional[Tensor]:
    """(K, ...) from K per-task gradients, zeros for the tasks that do not reach the input; None if none does."""
    present = next((r for r in rows if r is not None), None)
    if present is None:
        return None
    return torch.stack([torch.zeros_like(present) if r is None else r for r in rows])


def _units(shared: List[Tensor], calls: List[_Call]) -> List[Tuple[List[Tensor], List[_Call]]]:
    """Groups the reached shared parameters into units: parameters linked through calls that use several of
    them (a layer's weight and bias, tied weights, a module called twice), with those calls."""
    parent = {id(p): id(p) for p in shared}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for c in calls:
        ids = [id(p) for p in c.params if id(p) in parent]
        for i in ids[1:]:
            parent[root(i)] = root(ids[0])
    units: Dict[int, Tuple[List[Tensor], List[_Call]]] = {}
    for p in shared:
        units.setdefault(root(id(p)), ([], []))[0].append(p)
    for c in calls:
        ids = [id(p) for p in c.params if id(p) in parent]
        if ids:
            units[root(ids[0])][1].append(c)
    return list(units.values())


def _rows(call: _Call, K: int) -> Tuple[Tensor, Tensor]:
    """(A (R, d), Delta (K, R, m)) with the weight gradient of task k equal to Delta_k^T A: for a Linear layer
    its input and output rows, for a Conv2d layer its unfolded input patches and output pixels."""
    m, delta = call.module, call.deltas[0]
    if call.kind == "linear":
        return call.input.reshape(-1, m.in_features), delta.reshape(K, -1, m.out_features)
    patches = F.unfold(call.input, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, Cin*kh*kw, L)
    A = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return A, delta.reshape(K, delta.shape[1], delta.shape[2], -1).transpose(2, 3).reshape(K, -1, delta.shape[2])


def _row_count(call: _Call) -> int:
    """R of :func:`_rows` without forming them: the input rows of a Linear call, batch x output pixels of a
    Conv2d one."""
    if call.kind == "linear":
        return call.input.numel() // call.module.in_features
    return call.deltas[0].shape[1] * call.deltas[0].shape[3:].numel()


def _stacked_rows(calls: List[_Call], K: int) -> Tuple[Tensor, Tensor]:
    """The (A, Delta) of several calls of one weight, rows concatenated: its gradient is the sum of theirs."""
    pairs = [_rows(c, K) for c in calls]
    return torch.cat([a for a, _ in pairs]), torch.cat([dl for _, dl in pairs], dim=1)


def _is_bias(p: Tensor, call: _Call) -> bool:
    return getattr(call.module, "bias", None) is p


def _bias_gradients(call: _Call, K: int) -> Tensor:
    """(K, out) task gradients of a Linear or Conv2d bias: Delta summed over rows (and pixels)."""
    delta = call.deltas[0]
    if call.kind == "linear":
        return delta.reshape(K, -1, delta.shape[-1]).sum(1)
    return delta.sum((1, 3, 4))


def _formed_gram(grads: List[Tensor], ranks: Optional[Ranks]) -> Tensor:
    """The Gram of formed (K, ...) gradients, summed over the ranks first when there are ranks."""
    return _ops.gram(ranks.sum_(grads) if ranks is not None else grads)


def _ghost_is_cheaper(R: int, d: int, m: int, K: int) -> bool:
    """FLOPs: <Delta_i, (A A^T) Delta_j> against forming the K gradients Delta_k^T A and their Gram."""
    return 2 * R * R * d + 2 * K * R * R * m + 2 * K * K * R * m <= 2 * K * R * m * d + K * K * m * d


def _formula_gram(p: Tensor, calls: List[_Call], K: int, ranks: Optional[Ranks]) -> Tensor:
    """G's share of one parameter used only by Linear, Conv2d or Embedding calls (several calls: their
    contributions are summed before the products, so cross terms count)."""
    calls = [c for c in calls if c.deltas[0] is not None]
    if not calls:
        return 0
    kinds = {(c.kind, _is_bias(p, c)) for c in calls}
    kind, is_bias = next(iter(kinds))
    if is_bias and len(kinds) == 1:
        return _formed_gram([sum(_bias_gradients(c, K) for c in calls).to(p.dtype)], ranks)
    if kind == "embedding" and len(kinds) == 1 and ranks is None:
        return _ops.gram([_embedding_gradients(p, calls, K, compact=True)])
    # One tensor in two roles (e.g. a Linear weight tied to an Embedding), grouped convolutions, and tables
    # across ranks (their rows differ) are formed.
    if len(kinds) > 1 or kind == "embedding" or any(c.kind == "conv2d" and c.module.groups != 1 for c in calls):
        return _formed_gram([sum(_formula_gradients(p, c, K) for c in calls)], ranks)
    R = sum(_row_count(c) for c in calls)
    # the rows of A^T Delta_k: (in, out) of Linear, (Cin kh kw, Cout) of Conv2d
    m, d = p.shape[0], p.numel() // p.shape[0]
    if ranks is None:
        if _ghost_is_cheaper(R, d, m, K):
            return _ops.ghost_gram(*_stacked_rows(calls, K))
        return _ops.gram([sum(_formula_gradients(p, c, K) for c in calls)])
    R_all = ranks.total_rows(R)
    formed_bytes = K * p.numel() * p.element_size()
    row_bytes = d * calls[0].input.element_size() + K * m * calls[0].deltas[0].element_size()
    if R_all * row_bytes >= formed_bytes:
        return _formed_gram([sum(_formula_gradients(p, c, K) for c in calls)], ranks)
    A, delta = ranks.gather_rows(*_stacked_rows(calls, K), formed_bytes)
    if _ghost_is_cheaper(A.shape[0], d, m, K):
        return _ops.ghost_gram(A, delta)
    return _ops.gram([_outer_gradients(p, A, delta)])


def _formula_gradients(p: Tensor, call: _Call, K: int) -> Tensor:
    """(K, *p.shape): the K task gradients of p through one Linear, Conv2d or Embedding call, formed from the
    recorded input and the output gradients (zeros where this call leaves p alone or no task reaches it)."""
    m, delta = call.module, call.deltas[0]
    if delta is None:
        return torch.zeros(K, *p.shape, dtype=p.dtype, device=p.device)
    if call.kind == "embedding":
        return _embedding_gradients(p, [call], K, compact=False)
    if _is_bias(p, call):
        return _bias_gradients(call, K).to(p.dtype)
    if call.kind == "linear":
        A, D = _rows(call, K)
        return _outer_gradients(p, A, D)
    # One weight-gradient convolution per task: folding the K tasks into the output channels instead would copy
    # K x the layer's output gradient first.
    return torch.stack([torch.nn.grad.conv2d_weight(call.input.to(p.dtype), p.shape, delta[k].to(p.dtype),
                                                    m.stride, m.padding, m.dilation, m.groups) for k in range(K)])


def _outer_gradients(p: Tensor, A: Tensor, delta: Tensor) -> Tensor:
    """(K, *p.shape): Delta_k^T A for every k as ONE (K m, R) x (R, d) product; a batched product would
    broadcast A to K copies."""
    K, R, m = delta.shape
    stacked = delta.transpose(1, 2).reshape(K * m, R).to(p.dtype)
    return (stacked @ A.to(p.dtype)).reshape(K, *p.shape)


def _embedding_gradients(p: Tensor, calls: List[_Call], K: int, compact: bool) -> Tensor:
    """The K task gradients of an embedding table: each Delta row added to the row of its index. With
    ``compact`` only the rows of the indices used (U x dim instead of the whole table: same Gram)."""
    idx = torch.cat([c.input.reshape(-1) for c in calls])
    delta = torch.cat([c.deltas[0].reshape(K, -1, p.shape[1]) for c in calls], dim=1).to(p.dtype)
    pad = calls[0].module.padding_idx
    if pad is not None:  # the padding row gets no gradient
        keep = idx != pad
        idx, delta = idx[keep], delta[:, keep]
    if compact:
        idx, slot = torch.unique(idx, return_inverse=True)
        out = torch.zeros(K, idx.numel(), p.shape[1], dtype=p.dtype, device=p.device)
    else:
        slot = idx
        out = torch.zeros(K, *p.shape, dtype=p.dtype, device=p.device)
    return out.index_add_(1, slot, delta)
