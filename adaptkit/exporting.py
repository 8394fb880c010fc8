"""The export host: everything around an exporter, done once for all of them.

An exporter (:class:`adaptkit.plugins.contracts.Exporter`) declares its options and writes its
files; the host does the rest, in this order, so that nothing is loaded or written before
everything checkable is checked:

1. **options**: each option the user gave must be one the chosen exporter declares (a flag of
   another exporter is refused, naming the exporter that takes it), and its value must pass the
   exporter's ``options_schema`` (:func:`adaptkit.plugins.options.checked_options`); defaults
   are filled in;
2. **output**: the folder is checked with the output guard (an empty existing folder is free, a
   non-empty one needs ``force``, an input is never an output);
3. **model**: resolved and vetted (:func:`adaptkit.io.models.resolve_model`), before any adapter
   is read: a recipe's tuning may take minutes;
4. **adapters**: SPECs are loaded; a recipe is combined by :mod:`adaptkit.combine.job`, the one
   path ``adaptkit combine`` takes too, ``tune:`` included (:func:`load_export_adapters`);
5. **export**: into a temp folder beside the output, published atomically when the exporter
   returns; the host adds ``export-report.json`` (the exporter's report under the host's keys
   ``exporter``, ``model``, ``model_dir``, ``adapters``, ``options``). A report that is not a
   dict of plain JSON values (a ``Path``, a NumPy or torch scalar) is the exporter's bug, a
   :class:`~adaptkit.errors.PluginError` naming it, and nothing is published.

``adaptkit export``'s flags are generated from the registered exporters' declarations
(:func:`exporter_options`): flag = ``--`` + key with ``_`` → ``-``, ``--no-KEY`` for a boolean
that defaults to true, ``--KEY`` and ``--no-KEY`` for a nullable boolean
(:mod:`adaptkit.plugins.export_flags`, which the registry holds each exporter to as it registers).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.adapter import WeightedAdapter
from adaptkit.errors import AdaptkitError, PluginError
from adaptkit.plugins.export_flags import HOST_FLAGS as HOST_FLAGS  # the host's own flags
from adaptkit.plugins.export_flags import ExportFlags, ExportOption, selector
from adaptkit.plugins.options import option_flag as option_flag  # kept importable from here
from adaptkit.plugins.options import option_flags

if TYPE_CHECKING:
    from adaptkit.adapter import Adapter

#: The one report file of every export, written by the host.
REPORT = "export-report.json"
#: Keys the host writes into every report.
HOST_KEYS = ("exporter", "model", "model_dir", "adapters", "options")


def exporter_options(registry: Any, *, only: Iterable[str] | None = None) -> dict[str, ExportOption]:
    """Every option of every registered exporter, keyed by option key, in exporter-name order.

    Reads only ``options_schema`` (a class attribute): nothing heavy is imported. The registry
    admitted each exporter only if its declaration fits beside the others'
    (:class:`adaptkit.plugins.export_flags.ExportFlags`, which builds this table too), so two
    exporters share a key only when it is the same flag taking the same kind of value; each
    exporter's own property checks its value.

    Raises:
        PluginError: naming the plugin, for a registry not built by
            :func:`adaptkit.plugins.load_registry` that holds a declaration it would refuse.
    """
    regs = registry.all("exporter")
    if only is not None:
        wanted = set(only)
        regs = [r for r in regs if r.name in wanted]
    flags = ExportFlags()
    for reg in regs:
        flags.add(reg.name, getattr(reg.obj, "options_schema", None), plugin=reg.plugin)
    return flags.options


def _named(exporters: Iterable[str]) -> str:
    return " and ".join(selector(n) for n in exporters)


def check_export_options(
    name: str, exporter: Any, given: Mapping[str, Any], table: Mapping[str, ExportOption] | None = None
) -> dict[str, Any]:
    """``given`` checked against exporter ``name``'s ``options_schema``; defaults filled in.

    Args:
        name: The exporter's registered name.
        exporter: The exporter.
        given: The options the user set (text from flags, or values from Python).
        table: :func:`exporter_options`, to name the exporter that takes a foreign option.

    Raises:
        AdaptkitError: a flag of another exporter (``--opset is an option of --onnx, not of
            --merged``), an unknown option, or a bad value, naming the flag.
    """
    from adaptkit.plugins.options import checked_options

    schema = exporter.options_schema
    properties = schema.get("properties") or {}
    table = table or {}
    for key in given:
        if key in properties:
            continue
        if key in table:
            flag = table[key].flag
            raise AdaptkitError(
                f"{flag} is an option of {_named(table[key].specs)}, not of {selector(name)}",
                hint=f"leave {flag} out",
            )
        valid = ", ".join("/".join(option_flags(k, s)) for k, s in properties.items()) or "none"
        raise AdaptkitError(f"exporter {name!r} has no option {key!r}; its options: {valid}")
    flags = {key: option_flag(key, spec) for key, spec in properties.items()}
    return checked_options(schema, given, owner=name, label=lambda key: flags.get(key, key))


def load_export_adapters(
    specs: Sequence[str], registry: Any = None, *, log: Callable[[str], None] | None = None
) -> list[WeightedAdapter]:
    """``--adapter`` SPECs as adapters, in order, with distinct names.

    An adapter SPEC loads as is; a recipe SPEC becomes one adapter combined exactly as ``adaptkit
    combine RECIPE`` would write it (:func:`adaptkit.combine.job.combine_recipe`: its strategy,
    params, rank, seed, and ``tune:`` block, whose tuning runs here).

    Raises:
        AdaptkitError: an unreadable SPEC, a saved module at a weight other than 1 (exports
            add their adapters exactly), or two adapters with one name.
    """
    from adaptkit.combine import Concatenate, check_saved_modules
    from adaptkit.combine.job import combine_recipe
    from adaptkit.io.recipe import yaml_kind
    from adaptkit.io.specs import is_yaml, load_ref, resolve_spec
    from adaptkit.plugins import get_registry

    registry = registry or get_registry()
    out: list[WeightedAdapter] = []
    for spec in specs:
        p = Path(spec)
        if is_yaml(p) and yaml_kind(p) == "recipe":
            out.append(combine_recipe(p, registry, log=log))
        else:
            ref = resolve_spec(spec)
            reads = tuple(x for x in (ref.spec, ref.path) if x is not None)
            out.append(WeightedAdapter(load_ref(ref, registry), ref.weight, ref.name, ref.path, reads))
    # Exports sum their adapters exactly (cat): a saved module at a weight other than 1 is
    # refused here, before any model loads.
    check_saved_modules(out, Concatenate())
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise AdaptkitError(
            f"two adapters are named {dup!r}; give them distinct names (name: in a manifest YAML)"
        )
    return out


def export_reads(specs: Sequence[str]) -> list[Any]:
    """Every file and folder ``--adapter`` SPECs read, found without loading a tensor: a SPEC's
    manifest and adapter; a recipe, what it names, and its tuning sets and model."""
    from adaptkit.combine.job import plan_combine
    from adaptkit.io.recipe import yaml_kind
    from adaptkit.io.specs import is_yaml, resolve_spec

    reads: list[Any] = []
    for spec in specs:
        p = Path(spec)
        if is_yaml(p) and yaml_kind(p) == "recipe":
            reads += plan_combine([spec], allow_outside=True).reads
        else:
            ref = resolve_spec(spec)
            reads += [spec, ref.spec, ref.path]
    return reads


def combined(adapters: Sequence[WeightedAdapter]) -> Adapter | None:
    """The exact weighted sum ``Σ wᵢ·ΔWᵢ`` of all adapters, as one adapter (``None`` for none)."""
    from adaptkit.combine import Concatenate, combine

    if not adapters:
        return None
    if len(adapters) == 1 and adapters[0].weight == 1.0:
        return adapters[0].adapter
    return combine(list(adapters), Concatenate()).adapter


def prepare_output(output: Path, force: bool, *, inputs: Iterable[Any] = ()) -> None:
    """Check the export folder with :func:`adaptkit.io.output_guard.check_output` (before any
    work): an empty existing folder is free, a non-empty one needs ``force``, and one that is,
    holds or lies inside an input is refused."""
    from adaptkit.io.output_guard import EXPORT_FOLDER, check_output

    check_output(output, EXPORT_FOLDER, inputs=inputs, force=force, empty_folder_ok=True)


def may_replace(output: Path, force: bool) -> bool:
    """Whether an existing ``output`` may be replaced: with ``force``, or when it is an empty
    folder (which :func:`prepare_output` accepts without ``--force``)."""
    return force or (output.is_dir() and not any(output.iterdir()))


def _json_ready(report: Any) -> Any:
    """``report`` as plain JSON values; a non-finite float becomes ``"nan"``/``"inf"``/``"-inf"``
    (what ``--json`` prints), so the report file is JSON every parser reads."""
    words = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}
    return json.loads(json.dumps(report), parse_constant=words.__getitem__)


_JSON_SCALARS = (str, int, float, bool, type(None))


def _not_json(value: Any, where: str, path: frozenset[int] = frozenset()) -> tuple[str, Any] | None:
    """``(where, value)`` of the first value in ``value`` that is not plain JSON (a ``Path``, a
    NumPy or torch scalar, a set, a cycle), or ``None`` when there is none."""
    if isinstance(value, _JSON_SCALARS):
        return None
    if isinstance(value, (dict, list, tuple)):
        if id(value) in path:
            return where, "a reference to itself"
        inner = path | {id(value)}
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, _JSON_SCALARS):
                    return f"{where} key {key!r}", key
                found = _not_json(item, f"{where}[{key!r}]", inner)
                if found:
                    return found
        else:
            for i, item in enumerate(value):
                found = _not_json(item, f"{where}[{i}]", inner)
                if found:
                    return found
        return None
    return where, value


def _local(model: str) -> Path | None:
    return Path(model) if Path(model).exists() else None


def _adapter_reads(adapters: Sequence[WeightedAdapter]) -> list[Any]:
    return [p for a in adapters for p in (a.reads or (a.source,))]


def run_export(
    name: str,
    model: str,
    adapters: Sequence[WeightedAdapter],
    output: Path,
    *,
    options: Mapping[str, Any] | None = None,
    force: bool = False,
    registry: Any = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export ``model`` with ``adapters`` (already loaded) to ``output`` with exporter ``name``.

    Steps 1, 2, 3 and 5 of the module docstring; ``options`` are the ones the user set.
    Returns the report, as written to ``OUTPUT/export-report.json``.
    """
    from adaptkit.io.models import resolve_model
    from adaptkit.plugins import get_registry

    registry = registry or get_registry()
    exporter = registry.get("exporter", name)
    given = dict(options or {})
    filled = check_export_options(name, exporter, given, exporter_options(registry))
    output = Path(output)
    prepare_output(output, force, inputs=[_local(model), *_adapter_reads(adapters)])
    folder = resolve_model(model)
    return _export(name, exporter, model, folder, adapters, output, given, filled, force=force, log=log)


def _export(
    name: str,
    exporter: Any,
    model: str,
    folder: Path,
    adapters: Sequence[WeightedAdapter],
    output: Path,
    given: Mapping[str, Any],
    filled: Mapping[str, Any],
    *,
    force: bool,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Step 5: everything checked, ``model`` resolved to ``folder``, the adapters loaded."""
    from adaptkit.io.atomic import atomic_directory, sweep_stale_scratch
    from adaptkit.plugins.records import ExportRequest

    say = log or (lambda _m: None)
    # A killed export's model-sized scratch folder beside the output goes with the next one.
    sweep_stale_scratch(output.parent)
    properties = exporter.options_schema.get("properties") or {}
    # How the user spelt each option: a two-way switch by the way it was given.
    flags = {key: option_flags(key, spec) for key, spec in properties.items()}
    spelt = {key: f[-1] if len(f) == 2 and filled.get(key) is False else f[0] for key, f in flags.items()}
    with atomic_directory(output, overwrite=may_replace(output, force)) as tmp:
        request = ExportRequest(
            model=str(model),
            model_dir=folder,
            adapters=list(adapters),
            output=output,
            out_dir=tmp,
            options=filled,
            given=frozenset(given),
            flags=spelt,
        )
        produced = exporter.export(request, say)
        report = _report(name, request, produced)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _report(name: str, request: Any, produced: Any) -> dict[str, Any]:
    """The host's keys, then the exporter's report (a plugin bug when it is not a dict of plain
    JSON values, sets a host key, or wrote the report file itself)."""
    if not isinstance(produced, dict):
        raise PluginError(f"exporter {name!r} returned {type(produced).__name__}, not a report dict")
    if (request.out_dir / REPORT).exists():
        raise PluginError(f"exporter {name!r} wrote {REPORT}, which the host writes")
    taken = sorted(set(produced) & set(HOST_KEYS))
    if taken:
        raise PluginError(f"exporter {name!r} sets report key {taken[0]!r}, which the host writes")
    found = _not_json(produced, "report")
    if found:
        where, value = found
        shown = value if isinstance(value, str) else f"{type(value).__name__} {value!r:.60}"
        raise PluginError(
            f"exporter {name!r} returned a report whose {where} is {shown}, not a JSON value "
            "(text, number, true/false, null, list or dict)",
            hint="convert it in export(): str(path), float(x) or x.item() for a NumPy or torch scalar",
        )
    host = {
        "exporter": name,
        "model": request.model,
        "model_dir": str(request.model_dir),
        "adapters": [
            {"name": a.name, "weight": a.weight, "source": None if a.source is None else str(a.source)}
            for a in request.adapters
        ],
        "options": dict(request.options),
    }
    return _json_ready({**host, **produced})


def export_specs(
    name: str | None,
    model: str,
    specs: Sequence[str],
    output: Path,
    *,
    options: Mapping[str, Any] | None = None,
    force: bool = False,
    registry: Any = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole of ``adaptkit export``: the module docstring's steps, in order, for SPECs.

    Raises:
        AdaptkitError: no exporter chosen, or the first problem found (nothing is written).
    """
    from adaptkit.io.models import resolve_model
    from adaptkit.plugins import get_registry

    registry = registry or get_registry()
    if not name:
        flags = ", ".join(selector(r.name) for r in registry.all("exporter"))
        raise AdaptkitError(f"choose what to export: {flags} or --exporter NAME")
    exporter = registry.get("exporter", name)
    # Options, the output path and the model before any adapter is read (a recipe may tune for
    # minutes).
    given = dict(options or {})
    filled = check_export_options(name, exporter, given, exporter_options(registry))
    output = Path(output)
    prepare_output(output, force, inputs=[_local(model), *specs])
    # Then with what the SPECs name (a recipe's tuning model and sets too), still before loading.
    prepare_output(output, force, inputs=[_local(model), *export_reads(specs)])
    folder = resolve_model(model)
    adapters = load_export_adapters(list(specs), registry, log=log)
    prepare_output(output, force, inputs=[_local(model), *_adapter_reads(adapters)])
    return _export(name, exporter, model, folder, adapters, output, given, filled, force=force, log=log)
