"""Contracts (Protocols) for what plugins register.

Each kind shares a small common surface — a ``name`` (lower-case, ``[a-z0-9_-]``), a
one-line ``description``, and optionally ``requires``: a mapping from an importable module
name to the pip requirement that provides it (checked with ``importlib.util.find_spec``,
never imported, so a missing heavy dependency is reported instead of crashing start-up).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from adaptkit.adapter import Adapter
    from adaptkit.plugins.records import ExportRequest, GenerateRequest, MergeContext, MergeInput, MergeResult


@runtime_checkable
class Plugin(Protocol):
    """What every registered object has."""

    name: str
    description: str


@runtime_checkable
class AdapterFormat(Plugin, Protocol):
    """Reads (and optionally writes) adapters in some on-disk format."""

    def detect(self, path: Path) -> bool:
        """True if ``path`` is in this format. Must be cheap and must not raise."""
        ...

    def read(self, path: Path) -> Adapter:
        """Load ``path`` into an :class:`~adaptkit.adapter.Adapter`.

        Raises:
            AdaptkitError: for anything wrong with the input, naming the file and key.
        """
        ...


@runtime_checkable
class WritableFormat(AdapterFormat, Protocol):
    """A format that can also write adapters.

    It may declare ``output_kind`` (an :class:`adaptkit.io.output_guard.OutputKind`: a file with
    given suffixes, or a folder) so the output guard checks names of the right kind; without
    it, any name that is not a dotfile or code is accepted.
    """

    def write(self, adapter: Adapter, path: Path, *, overwrite: bool = False) -> Path:
        """Write ``adapter`` to ``path`` atomically; refuse an existing output unless
        ``overwrite``."""
        ...


@runtime_checkable
class Backend(Plugin, Protocol):
    """A training backend (``adaptkit train --backend NAME``).

    The shared trainer (:mod:`adaptkit.training.loop`) loads the model and data and runs the
    loop (schedule, micro-batches, DDP, checkpoints); the backend decides how adapters are
    attached and optimised. Run :func:`adaptkit.testing.check_backend` in your own tests.

    Attributes:
        supports: Optional; the trainer features the backend claims, a subset of
            ``{"resume", "ddp", "shard"}``: ``resume`` — a run resumed from a checkpoint
            continues exactly; ``ddp`` — ``torchrun`` over N processes equals one process with
            the same global batch; ``shard`` — so does ``torchrun ... --shard`` (FSDP2): then
            ``prepare`` runs on the base's skeleton (parameters on the meta device; the LoRA
            factors it attaches are real), before the weights load, and ``optimizer`` receives
            the sharded parameters in the order ``prepare`` returned them (new objects: a
            backend must not tell parameters apart by ``id``). The contract kit checks each
            claim. Missing: no claims.
        options_schema: The backend's options (``--option KEY=VALUE``) as a JSON-Schema
            ``object``: per property a ``type``, an ``enum`` or bounds, and a ``default``. The
            trainer checks options against it before the model loads and hands the backend
            ``config.options`` with defaults filled (:mod:`adaptkit.training.options`); every
            number must be finite, and the contract kit asks each numeric option for a lower
            and an upper bound. Declare ``{"type": "object", "additionalProperties": False,
            "properties": {}}`` for none. Missing: options pass unchecked but for finiteness.

    Optional method ``memory_report(model) -> dict`` is written to the metrics file at start.
    Optional method ``shard_plan(config, skeleton, device, log) -> dict`` (``shard`` only):
    swap layers in the skeleton for ones that store their weight otherwise, and return
    ``{checkpoint tensor name: convert}``, ``convert(whole tensor) -> tensor to shard``; the
    trainer reads such a tensor whole and keeps each process's rows of what ``convert`` returns
    (``qlora`` packs NF4 there).
    """

    def prepare(self, model: Any, settings: Any, config: Any, log: Any) -> list[Any]:
        """Attach adapters to ``model`` in place, freeze every base parameter, and return
        exactly the trainable LoRA parameters (nothing else may require grad).

        ``settings`` is a :class:`~adaptkit.nn.settings.LoraSettings`, ``config`` the
        whole :class:`~adaptkit.training.settings.TrainConfig` (backend options in
        ``config.options``), ``log`` a ``str -> None`` callable for one-line notices. Bad
        options raise :class:`~adaptkit.errors.AdaptkitError` naming the option."""
        ...

    def optimizer(self, params: list[Any], config: Any, log: Any) -> Any:
        """The ``torch.optim.Optimizer`` for ``params``. The trainer overwrites each param
        group's ``lr`` every step with ``schedule(step) · group.get("lr_scale", 1.0)``."""
        ...

    def extract(self, model: Any, *, base_name: str | None, provenance: dict[str, Any]) -> Adapter:
        """The trained adapter (native :class:`~adaptkit.adapter.Adapter`): one target per
        attached module, with the rank and scale it was trained with, loadable with
        ``adaptkit.nn.load`` onto the base the backend prepared."""
        ...


@runtime_checkable
class MergeStrategy(Plugin, Protocol):
    """A way to combine several adapters' updates (``adaptkit combine --strategy NAME``).

    Attributes:
        params_schema: JSON Schema (an ``object`` schema) of the strategy's parameters;
            ``default`` values are filled in before :meth:`merge` sees them.
        min_inputs / max_inputs: How many adapters the strategy accepts (``None``: any).
        symmetric: The result does not depend on the order of the inputs.
        linear: Multiplying every weight by ``c`` multiplies the result by ``c``.
        identity_params: Parameters under which one adapter at weight 1 is returned
            unchanged (used by :mod:`adaptkit.testing`).
    """

    params_schema: Mapping[str, Any]

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        """Merge one target's inputs (see :mod:`adaptkit.plugins.records`)."""
        ...


@runtime_checkable
class Exporter(Plugin, Protocol):
    """Turns a base model plus adapters into a deployable artefact (``adaptkit export``).

    The host owns everything around the export (:mod:`adaptkit.exporting`): the command-line
    flags, generated from ``options_schema``; checking the options before any work; resolving
    the model; loading the adapters (SPECs and recipes, ``tune:`` included); the atomic output
    folder and ``--force``; the report file ``export-report.json``; ``--json``. The exporter
    declares its options and writes its files. Run :func:`adaptkit.testing.check_exporter` in
    your own tests.

    Attributes:
        options_schema: The exporter's options as a JSON-Schema ``object`` with
            ``additionalProperties: false``: per property a ``type`` (``[TYPE, "null"]`` where
            ``None`` means "the exporter chooses"), an ``enum`` or, for a number, both bounds, a
            ``default`` and a ``description`` (its ``--help`` text). Each property becomes a flag
            of ``adaptkit export``: ``--`` + the key with ``_`` → ``-``, ``--no-KEY`` for a
            boolean that defaults to true, and both ``--KEY`` and ``--no-KEY`` for a nullable
            boolean. Declare ``{"type": "object", "additionalProperties": False, "properties":
            {}}`` for none. A class attribute: the host reads it to build the flags without
            importing anything heavy. The registry refuses the exporter's plugin when a flag (or
            the ``--NAME`` selector) would be the host's or another exporter's
            (:mod:`adaptkit.plugins.export_flags`).
        help: Optional; a paragraph for ``adaptkit export --help``, shown after ``--NAME`` with
            its lines kept (what the export is, an example or two).
    """

    options_schema: Mapping[str, Any]

    def export(self, request: ExportRequest, log: Callable[[str], None]) -> dict[str, Any]:
        """Write the export into ``request.out_dir`` (never elsewhere) and return its report, a
        dict of plain JSON values (text, numbers, booleans, ``None``, lists, dicts: not a
        ``Path`` or a NumPy or torch scalar, which the host refuses as a ``PluginError``) that
        the host writes to ``export-report.json`` beside the host's own keys (``exporter``,
        ``model``, ``adapters``, ``options``). ``log`` takes one-line progress
        messages. Raise :class:`~adaptkit.errors.AdaptkitError` for anything wrong with the
        inputs; the host then removes ``out_dir`` and leaves any earlier output intact."""
        ...


@runtime_checkable
class Runtime(Plugin, Protocol):
    """Runs a model for ``adaptkit generate``: an export folder, a GGUF file, ...

    ``adaptkit generate MODEL`` asks every runtime whether it ``accepts`` MODEL; exactly one
    may (two is a plugin conflict, reported with both names), and a MODEL no runtime accepts
    is a Hugging Face model run in PyTorch with the ``-a`` SPECs attached unmerged (adaptkit's
    own reference path). The host checks the flags, prints, and writes ``--json``.
    """

    def accepts(self, model: str) -> bool:
        """Whether MODEL is this runtime's to run. Cheap and never raising: look at the path
        (a suffix, a marker file, a magic number), never load it or import the runtime."""
        ...

    def generate(self, request: GenerateRequest, emit: Callable[[str], None]) -> dict[str, Any]:
        """Generate; pass each new piece of text to ``emit`` as it comes (with
        ``request.input_ids``: each token id followed by a space). Returns ``{"input_ids",
        "output_ids", "text", "tokens_per_s"}`` (``text`` is ``None`` for ``--input-ids``).
        Untrusted input (the model, its tokenizer, adapter files) is checked before the native
        runtime opens it; every failure is an :class:`~adaptkit.errors.AdaptkitError`."""
        ...


#: Registry kind -> (hook name, contract, attributes the contract requires). The single source
#: the registry, the CLI and the docs use.
KINDS: Mapping[str, tuple[str, type, tuple[str, ...]]] = {
    "format": ("register_formats", AdapterFormat, ("name", "description", "detect", "read")),
    "backend": (
        "register_backends",
        Backend,
        ("name", "description", "prepare", "optimizer", "extract"),
    ),
    "strategy": (
        "register_merge_strategies",
        MergeStrategy,
        ("name", "description", "params_schema", "merge"),
    ),
    "exporter": ("register_exporters", Exporter, ("name", "description", "options_schema", "export")),
    "runtime": ("register_runtimes", Runtime, ("name", "description", "accepts", "generate")),
}
