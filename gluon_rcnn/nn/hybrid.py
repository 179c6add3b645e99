"""``HybridBlock``: GluonCV's ``hybridize()``/``export()`` face on a PyTorch ``nn.Module``.

``hybridize()`` compiles the static parts of a block with ``torch.compile``; the parts with
data-dependent Python control flow (proposal selection, NMS, per-image loops) stay eager
because a subclass names only its static children in :meth:`HybridBlock._hybrid_children`.
``export()`` writes a ``torch.export`` program that loads back with
``torch.export.load(path).module()`` without any of this library's classes.

Shapes: ``dynamic=True`` (the default) compiles sizes as symbols, which still keep a guard where
a choice depends on a size (sizes 0 and 1; the CPU convolution's kernel, which eager mode also
picks by input size): one graph per such regime, made in a warm-up. A block names in
:meth:`HybridBlock._hybrid_count_dims` the parts whose first input's leading dimension counts
items (the RoIs of a box or mask head): that size is unbacked, one graph for every count.

Mechanism: a compiled module keeps its ``nn.Module`` identity (parameter names, state dict,
hooks, ``.train()``/``.eval()`` are untouched); what changes is its ``_compiled_call_impl``, the
slot ``nn.Module.__call__`` already consults (the one ``nn.Module.compile()`` fills). That slot is
dropped when the module is pickled or deep-copied, so a hybridized model can still be saved,
copied and wrapped in DDP; ``hybridize(False)`` clears it and the block is eager again.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["HybridBlock"]

# a backend that never needs a C/C++ or Triton toolchain: the safety net when another fails
FALLBACK_BACKEND = "aot_eager"


def _compile_failure_types() -> tuple[type, ...]:
    """Exception types that mean "the backend could not compile", not "the model is wrong"."""
    types: list[type] = []
    try:
        from torch._dynamo.exc import BackendCompilerFailed  # InductorError derives from it
        types.append(BackendCompilerFailed)
    except ImportError:  # pragma: no cover - very old torch
        pass
    try:
        from torch._inductor import exc as ind_exc
        for name in ("CppCompileError", "InvalidCxxCompiler", "TritonMissing", "GPUTooOldForTriton"):
            if hasattr(ind_exc, name):
                types.append(getattr(ind_exc, name))
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _strictly_contiguous(t: torch.Tensor) -> bool:
    """Contiguous strides also on the dims of size 1 (``is_contiguous()`` ignores those)."""
    expected, step = [], 1
    for n in reversed(t.shape):
        expected.append(step)
        step *= n
    return tuple(t.stride()) == tuple(reversed(expected))


class _CompiledCall:
    """``torch.compile`` of a module's ``_call_impl`` that falls back to ``aot_eager``.

    Compilation is lazy (at the first call), so a missing compiler or a backend bug only shows
    up then; when it does, we warn once and recompile with :data:`FALLBACK_BACKEND` instead of
    failing the user's run. Errors raised by the model itself propagate unchanged.
    """

    def __init__(self, module: nn.Module, backend: Any, mode: str | None, dynamic: bool | None,
                 options: dict | None, count_dim: int | None = None):
        self._fn = module._call_impl  # bound method; nn.Module.__call__ would call it anyway
        self.module_name = type(module).__name__
        self.mode = mode
        self.dynamic = dynamic
        self.options = options
        self.backend = backend
        self.count_dim = count_dim
        self._convs = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        self._compiled = self._compile(backend)

    def _compile(self, backend: Any) -> Callable:
        kwargs: dict[str, Any] = {"backend": backend, "dynamic": self.dynamic}
        mode, options = self.mode, self.options
        layout = {}
        if self.count_dim is not None and backend == "inductor":
            # inductor's layout optimisation turns convolutions channels_last, and on an unbacked
            # count torch (2.14) takes their output layout to be contiguous: wrong strides at run time
            layout = {"layout_optimization": False}
        elif self._convs and backend == "inductor":
            # a training graph's backward holds no forward convolution, so inductor does not
            # layout-optimise it, and then (torch 2.14, kernel/conv.py) lowers each convolution's
            # backward with its input gradient's strides fixed as integers: a new training graph for
            # every image size. Forced, the backward stays symbolic; forward graphs with convolutions
            # are layout-optimised on the CPU anyway (inductor's rule for oneDNN)
            layout = {"force_layout_optimization": True}
        if layout:
            from torch._inductor import list_mode_options
            options = {**(list_mode_options(mode, self.dynamic) if mode else {}), **layout, **(options or {})}
            mode = None  # torch.compile takes a mode or options, not both
        if mode is not None:
            kwargs["mode"] = mode
        if options:
            kwargs["options"] = options
        return torch.compile(self._fn, **kwargs)

    def _count_is_unbacked(self, x: torch.Tensor) -> bool:
        """Whether the count dim of ``x`` can be unbacked: with contiguous input and convolution
        weights only. On an unbacked count torch (2.14) takes a convolution's output to be
        contiguous, while the CPU kernel writes channels_last when the input or weight is (a 1x1
        weight in channels_last even passes ``is_contiguous()``)."""
        return x.is_contiguous() and all(_strictly_contiguous(m.weight) for m in self._convs)

    def __call__(self, *args, **kwargs):
        if (self.count_dim is not None and args and isinstance(args[0], torch.Tensor)
                and self._count_is_unbacked(args[0])):
            # one graph for every count, 0 and 1 included; a backed count (channels_last heads,
            # optimize_for_inference) is specialised on 0 and 1 and on the convolution kernel's
            # choice by count: a few graphs
            torch._dynamo.decorators.mark_unbacked(args[0], self.count_dim)
        try:
            return self._compiled(*args, **kwargs)
        except _compile_failure_types() as e:
            if self.backend == FALLBACK_BACKEND or self.backend == "eager":
                raise
            warnings.warn(
                f"hybridize: torch.compile backend {self.backend!r} failed on {self.module_name} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"falling back to backend={FALLBACK_BACKEND!r}",
                RuntimeWarning, stacklevel=2)
            self.backend = FALLBACK_BACKEND
            self.mode = None  # modes such as 'max-autotune' are inductor options
            self.options = None
            self._compiled = self._compile(FALLBACK_BACKEND)
            return self._compiled(*args, **kwargs)


class HybridBlock(nn.Module):
    """An ``nn.Module`` that can compile its static parts and export itself.

    Subclasses write an ordinary ``forward``. By default ``hybridize()`` compiles the whole
    block; a subclass whose ``forward`` has data-dependent Python logic overrides
    :meth:`_hybrid_children` to return the names of the submodules that are static instead.
    """

    # -- what gets compiled ----------------------------------------------------------------
    def _hybrid_children(self) -> Sequence[str] | None:
        """Names (as in ``get_submodule``) of the submodules to compile; ``None`` = this block.

        A named child that is itself a ``HybridBlock`` is hybridized recursively, so it again
        decides which of *its* parts are compiled.
        """
        return None

    def _hybrid_count_dims(self) -> dict[str, int]:
        """``{name: dim}`` for the compiled parts (names as in :meth:`_hybrid_children`, ``''`` for
        this block) whose first input's dimension ``dim`` counts independent items that can be
        any number, 0 and 1 included (the RoIs of a box or mask head): they are compiled once for
        every count. Other dimensions are dynamic as ``hybridize(dynamic=...)`` says."""
        return {}

    # -- GluonCV's face --------------------------------------------------------------------
    def hybridize(self, active: bool = True, mode: str | None = None, dynamic: bool | None = True,
                  backend: Any = "inductor", options: dict | None = None, freeze: bool = False) -> "HybridBlock":
        """Compile (``active=True``) or un-compile (``active=False``) this block.

        Args:
            active: False restores eager execution everywhere under this block.
            mode: ``torch.compile`` mode (``None``, ``'default'``, ``'reduce-overhead'``,
                ``'max-autotune'``, ...).
            dynamic: ``torch.compile``'s ``dynamic``; True (default) because detection inputs
                change size from batch to batch and a recompile per size would cost more than it
                saves.
            backend: a ``torch.compile`` backend; ``None`` means ``'inductor'``. If it fails to
                compile (e.g. no C compiler), the block warns and uses ``'aot_eager'``.
            options: backend options passed to ``torch.compile``.
            freeze: inference graphs (compiled without autograd: ``torch.no_grad``/``inference_mode``)
                take the parameters as constants (inductor's ``freezing``): their casts (bf16 under
                autocast) done once at compile time, bias/ReLU/add in fused kernels. The parameters'
                values at the first call are baked in: after changing them call ``hybridize()``
                again. Training graphs are not frozen.

        Training: forward and backward of the same blocks are compiled. Inductor graphs of blocks
        with convolutions are layout-optimised by force (torch 2.14 otherwise fixed the strides of
        each convolution's input gradient in the backward: a new graph per image size). Train
        compiled after ``optimize_for_training()`` (channels_last): on torch 2.14 a contiguous
        model's training graph still specialises on the image width. A backend that fails to
        compile a block warns and uses ``aot_eager``. docs/benchmarks.md, "Compiled training steps".

        Returns ``self`` (so ``net.hybridize()`` can be chained). Compilation happens at the
        first call. Parameters, state dict and module names are unchanged.
        """
        self._clear_compiled()
        if not active:
            return self
        backend = "inductor" if backend is None else backend
        if freeze:
            options = {**(options or {}), "freezing": True}
        names = self._hybrid_children()
        count_dims = self._hybrid_count_dims()
        if names is None:
            self._compiled_call_impl = _CompiledCall(self, backend, mode, dynamic, options, count_dims.get(""))
            return self
        for name in names:
            child = self.get_submodule(name)
            if isinstance(child, HybridBlock):
                child.hybridize(True, mode=mode, dynamic=dynamic, backend=backend, options=options)
            else:
                child._compiled_call_impl = _CompiledCall(child, backend, mode, dynamic, options,
                                                          count_dims.get(name))
        return self

    @property
    def hybridized(self) -> bool:
        """True when this block or any module under it runs compiled."""
        return any(isinstance(m._compiled_call_impl, _CompiledCall) for m in self.modules())

    def compiled_backends(self) -> dict[str, Any]:
        """``{module name: backend}`` of every compiled module under this block ('' = self);
        shows, e.g., whether a fallback to ``aot_eager`` happened."""
        return {name: m._compiled_call_impl.backend for name, m in self.named_modules()
                if isinstance(m._compiled_call_impl, _CompiledCall)}

    def _clear_compiled(self) -> list[tuple[nn.Module, _CompiledCall]]:
        cleared = []
        for m in self.modules():
            if isinstance(m._compiled_call_impl, _CompiledCall):
                cleared.append((m, m._compiled_call_impl))
                m._compiled_call_impl = None
        return cleared

    def export(self, path: str, example_inputs: Any, *, dynamic_shapes: Any = None,
               strict: bool = False) -> "torch.export.ExportedProgram":
        """Write this block as a ``torch.export`` program to ``path`` and return it.

        Args:
            path: output file (conventionally ``*.pt2``).
            example_inputs: one tensor or a tuple of positional arguments for ``forward``;
                they fix dtypes, devices and (unless ``dynamic_shapes`` says otherwise) shapes.
            dynamic_shapes: passed to ``torch.export.export`` (e.g. ``{"x": {2: Dim("h"), ...}}``).
            strict: ``torch.export``'s strict (TorchDynamo) tracing; off by default.

        The program is traced in the block's current mode (call ``.eval()`` first for
        inference) and always from the eager code, even when hybridized. Load it back with
        ``torch.export.load(path).module()``; that needs only PyTorch, not this library.
        """
        if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
            example_inputs = (example_inputs,)
        cleared = self._clear_compiled()  # export traces Python, not a compiled callable
        try:
            program = torch.export.export(self, tuple(example_inputs), dynamic_shapes=dynamic_shapes,
                                          strict=strict)
        finally:
            for m, compiled in cleared:
                m._compiled_call_impl = compiled
        torch.export.save(program, path)
        return program

