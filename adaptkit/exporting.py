"""What every exporter receives: the base model, the adapters, where to write, options.

Several ``--adapter`` SPECs are kept as separate named adapters (``onnx --lora-inputs`` writes
one ``.onnx_adapter`` per adapter); exporters that bake updates in use :func:`combined`,
the exact weighted sum. A recipe SPEC becomes one adapter, combined with its own strategy.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.adapter import WeightedAdapter
from adaptkit.errors import AdaptkitError
from adaptkit.plugins.records import ExportRequest  # noqa: F401  (its home before the records moved)

if TYPE_CHECKING:
    from adaptkit.adapter import Adapter


#: One ``--adapter`` of an export (the one input record, see
#: :class:`adaptkit.adapter.WeightedAdapter`).
NamedAdapter = WeightedAdapter


#: Every option ``adaptkit export`` passes to an exporter: its flag, and the value that means
#: the flag was not given.
OPTION_FLAGS: dict[str, tuple[str, Any]] = {
    "graph": ("--graph", None),
    "precision": ("--precision", None),
    "device": ("--device", None),
    "min_agreement": ("--min-agreement", None),
    "opset": ("--opset", None),
    "dtype": ("--dtype", None),
    "base_dtype": ("--base-dtype", None),
    "atol": ("--atol", None),
    "verify": ("--no-verify", True),
    "lora_inputs": ("--lora-inputs", False),
    "external_data": ("--external-data", None),
    "merge_base": ("--merge-base", None),
}


def given_options(options: dict[str, Any]) -> set[str]:
    """The keys of :data:`OPTION_FLAGS` the user set in ``options``."""
    return {
        key
        for key, (_, absent) in OPTION_FLAGS.items()
        if options.get(key) is not None and options.get(key) != absent
    }


def refuse_unused_options(options: dict[str, Any], unused: dict[str, str], where: str) -> None:
    """Refuse the first option in ``unused`` (``key -> why it does nothing``) that was given.

    An exporter calls this once it knows which path it takes (graph, precision, verification),
    before any export work: a flag that would be silently ignored is an error naming the flag,
    so nobody believes an option took effect when it did not.

    Raises:
        AdaptkitError: ``--FLAG does nothing for WHERE: WHY``.
    """
    given = given_options(options)
    for key, why in unused.items():
        if key in given:
            flag = OPTION_FLAGS[key][0]
            raise AdaptkitError(f"{flag} does nothing for {where}: {why}", hint=f"leave {flag} out")


def load_export_adapters(specs: list[str], registry: Any = None) -> list[NamedAdapter]:
    """Resolve ``--adapter`` SPECs; a recipe is combined as ``adaptkit combine`` would (its
    strategy and its ``tune:`` block), by :func:`adaptkit.combine.job.combine_recipe`."""
    from adaptkit.combine.job import combine_recipe
    from adaptkit.io.recipe import yaml_kind
    from adaptkit.io.specs import is_yaml, load_ref, resolve_spec
    from adaptkit.plugins import get_registry

    registry = registry or get_registry()
    out: list[NamedAdapter] = []
    for spec in specs:
        p = Path(spec)
        if is_yaml(p) and yaml_kind(p) == "recipe":
            # Combined as `adaptkit combine RECIPE` writes it, tune: included.
            out.append(combine_recipe(p, registry))
        else:
            ref = resolve_spec(spec)
            reads = tuple(x for x in (ref.spec, ref.path) if x is not None)
            out.append(WeightedAdapter(load_ref(ref, registry), ref.weight, ref.name, ref.path, reads))
    from adaptkit.combine import Concatenate, check_saved_modules

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


def combined(adapters: list[NamedAdapter]) -> Adapter | None:
    """The exact weighted sum of all adapters (``None`` when there are none)."""
    from adaptkit.combine import Concatenate, combine

    if not adapters:
        return None
    if len(adapters) == 1 and adapters[0].weight == 1.0:
        return adapters[0].adapter
    return combine(adapters, Concatenate()).adapter


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
