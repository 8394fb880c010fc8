"""The exporter contract kit: run it against your exporter in your own tests.

::

    from adaptkit.testing import check_exporter

    def test_my_exporter_contract(tmp_path):
        check_exporter(MyExporter(), tmp_path)

The kit drives the real command line, ``adaptkit export --exporter NAME ...``, in a child
process (one per check, every invocation inside it), on a tiny random Llama
(:func:`adaptkit.testing.tiny_causal_lm`, saved with safetensors) and one random LoRA adapter on
its attention projections. The exporter's class must therefore be importable
(``module.Class``) and constructible without arguments; the child registers it in place of any
exporter of the same name (its whole plugin gives way). A failed check raises ``AssertionError``
saying which promise of :class:`adaptkit.plugins.contracts.Exporter` broke; every command-line
check fails, with the registry's reason, when adaptkit refused to register the exporter.

Checked properties (the first three need no export and take a second or two):
    * declared — ``options_schema`` is a class attribute and a declaration the registry accepts
      beside the exporters installed here (:class:`adaptkit.plugins.export_flags.ExportFlags`:
      complete per :func:`adaptkit.plugins.options.schema_problems`, ``additionalProperties:
      false``, every property typed, with a valid default and a description, every number
      bounded; no selector or option flag that is the host's or another exporter's);
    * help — ``adaptkit export --help`` has an option line for ``--NAME`` and one for every
      option's flag that names ``--NAME`` among the exporters taking it (a flag mentioned in
      some paragraph, or another exporter's option of that flag, does not count);
    * refusals — for every option a value its declaration forbids (not a choice, a choice in
      other letter case, not an integer, out of bounds, ``nan``; a value given to a switch,
      ``--FLAG=true``; a text option without its value), and a flag only another exporter
      takes, is one ``error:`` line naming the flag, exit code 2, and no output folder;
    * report — (real export) the export succeeds; ``--json`` prints exactly
      ``OUT/export-report.json``, which names the exporter, the model and the adapter;
    * atomic — (real export) an export that fails after the exporter wrote its files leaves no
      output folder and nothing else beside it (the exporter wrote only into
      ``request.out_dir`` and cleaned its own scratch), and a failing ``--force`` run leaves an
      existing output intact.

``export=False`` skips the two real-export checks (for an exporter too slow to run in a test
suite; say so where you skip them). ``args`` are extra flags for the real exports, e.g.
``("--graph", "logits")`` for the cheapest ONNX path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptkit.plugins.hookspecs import hookimpl as _hookimpl

_DRIVER = """\
import contextlib, importlib, io, json, os, sys
from pathlib import Path

from adaptkit.cli import main
from adaptkit.errors import AdaptkitError
from adaptkit.plugins.hookspecs import hookimpl
from adaptkit.plugins import registry as host

spec = json.loads(Path(sys.argv[1]).read_text())
module, _, qualname = spec["exporter"].partition(":")
cls = importlib.import_module(module)
for part in qualname.split("."):
    cls = getattr(cls, part)
exporter = cls()


class Failing:
    # The exporter, failing before it starts or after it wrote its files.
    def __init__(self, inner, when):
        self.inner, self.when = inner, when
        self.name, self.description = inner.name, inner.description
        self.options_schema = inner.options_schema
        self.requires = getattr(inner, "requires", {})

    def export(self, request, log):
        if self.when == "before":
            raise AdaptkitError("injected failure before the export")
        self.inner.export(request, log)
        raise AdaptkitError("injected failure after the export wrote its files")


class Kit:
    def __init__(self, obj):
        self.obj = obj

    @hookimpl
    def register_exporters(self, register):
        register(self.obj)


def registry_with(obj):
    owner = host.load_registry().entries["exporter"].get(obj.name)
    env = dict(os.environ)
    if owner is not None:  # the installed registration of this name gives way to the kit's
        env[host.BLOCK_ENV] = ",".join(x for x in (env.get(host.BLOCK_ENV, ""), owner.plugin) if x)
    return host.load_registry(env=env, extra=[("adaptkit-exporter-kit", Kit(obj))])


results = []
for run in spec["runs"]:
    host._cached = registry_with(Failing(exporter, run["fail"]) if run.get("fail") else exporter)
    refused = host._cached.plugins["adaptkit-exporter-kit"].error  # why the registry refused it
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(run["argv"])
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue(), "refused": refused})
Path(spec["results"]).write_text(json.dumps(results))
"""


def _target(exporter: Any) -> str:
    cls = type(exporter)
    return f"{cls.__module__}:{cls.__qualname__}"


def export_in_process(
    exporter: Any,
    model: str | Path,
    adapters: Sequence[Any],
    output: str | Path,
    *,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``exporter`` through the export host in this process, as ``adaptkit export`` would.

    The registry holds the installed plugins plus ``exporter`` (an installed registration of the
    same name gives way to it); the host checks ``options`` against its declaration, vets the
    model, publishes ``output`` atomically and writes the report, which is returned. For numeric
    checks of what an exporter writes; :func:`check_exporter` covers the command line.

    Args:
        exporter: The exporter object under test.
        model: A model folder.
        adapters: ``WeightedAdapter`` records (``adaptkit.api.WeightedAdapter``).
        output: The output folder.
        options: The options the user would give, by key (``{"delta_dtype": "float16"}``).

    Raises:
        AdaptkitError: whatever the host or the exporter refuses.
    """
    from adaptkit.exporting import run_export
    from adaptkit.plugins import registry as host

    registry = host.load_registry()
    owner = registry.entries["exporter"].get(exporter.name)
    env = dict(os.environ)
    if owner is not None:
        env[host.BLOCK_ENV] = ",".join(x for x in (env.get(host.BLOCK_ENV, ""), owner.plugin) if x)

    class _Plugin:
        @staticmethod
        @_hookimpl
        def register_exporters(register: Any) -> None:
            register(exporter)

    registry = host.load_registry(env=env, extra=[("adaptkit-exporter-under-test", _Plugin())])
    error = registry.plugins["adaptkit-exporter-under-test"].error
    if error:
        raise AssertionError(f"the registry refused exporter {exporter.name!r}: {error}")
    return run_export(
        exporter.name, str(model), list(adapters), Path(output), options=options, registry=registry
    )


def run_export_cli(
    exporter: Any, runs: Sequence[dict[str, Any]], tmp_path: Path, *, timeout: float = 600
) -> list[dict[str, Any]]:
    """Run ``adaptkit ARGV`` for each run in one child process with ``exporter`` registered.

    Args:
        exporter: The exporter (its class must be importable and constructible without arguments).
        runs: ``{"argv": [...], "fail": None | "before" | "after"}`` each; ``fail`` wraps the
            exporter so its export raises before it starts or after it returns.
        tmp_path: Where the driver and its results go.

    Returns:
        ``{"code", "out", "err", "refused"}`` per run: the exit code, stdout and stderr of that
        invocation, and why the registry refused the exporter (``None``: it registered).
    """
    tmp = Path(tmp_path)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "driver.py").write_text(_DRIVER)
    spec = {
        "exporter": _target(exporter),
        "runs": [{"argv": [str(a) for a in r["argv"]], "fail": r.get("fail")} for r in runs],
        "results": str(tmp / "results.json"),
    }
    (tmp / "runs.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    res = subprocess.run(
        [sys.executable, str(tmp / "driver.py"), str(tmp / "runs.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, f"{exporter.name}: the kit's driver failed:\n" + textwrap.indent(
        res.stderr[-3000:], "  "
    )
    return json.loads((tmp / "results.json").read_text())


def kit_workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny random Llama (safetensors) and one random LoRA adapter on its q/v projections.

    ``B`` is random too, so the adapter visibly changes the model (an exporter's parity check
    may require that). Returns ``(model folder, adapter file)``."""
    import torch

    from adaptkit.io.native import save_adapter
    from adaptkit.nn.inject import attach, extract, lora_layers
    from adaptkit.testing.backends import tiny_causal_lm
    from adaptkit.training.settings import LoraSettings

    tmp = Path(tmp_path)
    model_dir, adapter = tmp / "model", tmp / "adapter.safetensors"
    if not model_dir.exists():
        tiny_causal_lm().save_pretrained(model_dir, safe_serialization=True)
    if not adapter.exists():
        model = tiny_causal_lm()
        attach(model, LoraSettings(targets=["q_proj", "v_proj"], rank=4, alpha=8))
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=g))
        save_adapter(extract(model), adapter)
    return model_dir, adapter


def _installed_flags(exporter: Any) -> Any:
    """The flags ``adaptkit export`` has here without ``exporter``'s name (whose plugin gives way
    to it, as in the kit's child process), built the way the registry builds them."""
    from adaptkit.plugins import load_registry
    from adaptkit.plugins.export_flags import ExportFlags

    table = load_registry().entries["exporter"]  # registration order: builtins first
    owner = table[exporter.name].plugin if exporter.name in table else None
    flags = ExportFlags()
    for reg in table.values():
        if reg.plugin != owner:
            flags.add(reg.name, reg.obj.options_schema, plugin=reg.plugin)
    return flags


def check_declared(exporter: Any) -> None:
    name = getattr(exporter, "name", repr(exporter))
    for attr in ("name", "description", "options_schema", "export"):
        assert hasattr(exporter, attr), f"exporter {name!r} lacks {attr!r}"
    assert "options_schema" in dir(type(exporter)), (
        f"{name}: options_schema must be a class attribute: adaptkit builds `export --help` from it "
        "without constructing anything heavy"
    )
    problems = _installed_flags(exporter).problems(name, exporter.options_schema)
    assert not problems, f"{name}: the registry would refuse it: " + "; ".join(problems)


def _bad_values(key: str, spec: dict[str, Any]) -> list[tuple[str, list[str], str]]:
    """``(flag, what follows it, what it is)`` a user could type that the declaration forbids: a
    value that is not a choice (or a choice in other letter case), not an integer, not finite or
    out of bounds; a value given to a switch's flag; a text option's flag without its value (last
    on the command line)."""
    from adaptkit.plugins.options import declared_types, option_flags

    flags = option_flags(key, spec)
    kind = declared_types(spec)[0][0]
    if kind == "boolean":  # a switch takes no value: `--FLAG=true` must not be swallowed
        return [(f"{flag}=true", [], f"{flag}=true") for flag in flags]
    (flag,) = flags
    bad = []
    if "enum" in spec:
        bad.append("not-a-choice")
        texts = [v for v in spec["enum"] if isinstance(v, str)]
        variants = [v.swapcase() for v in texts if v.swapcase() not in texts]
        bad += variants[:1]
    if kind == "integer":
        bad.append("1.5")
    if kind in ("number", "integer"):
        bad.append("nan")
        for word, step in (("minimum", -1), ("exclusiveMinimum", 0), ("maximum", 1), ("exclusiveMaximum", 0)):
            if word in spec:
                edge = spec[word] + step
                bad.append(str(int(edge)) if kind == "integer" else repr(float(edge)))
    cases = [(flag, [value], f"{flag} {value!r}") for value in bad]
    if kind == "string":
        cases.append((flag, [], f"{flag} without its value"))  # the flag is last
    return cases


def _one_error(result: dict[str, Any]) -> str | None:
    lines = result["err"].splitlines()
    if result["code"] != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        return None
    return lines[0]


class _Check:
    """One CLI check: the invocations it needs (``runs``) and what it asserts of their results
    (``verify``), so :func:`check_exporter` can run every check's invocations in one child."""

    def __init__(self, runs: list[dict[str, Any]], verify: Any) -> None:
        self.runs, self.verify = runs, verify


def _run_checks(exporter: Any, checks: Sequence[_Check], tmp: Path) -> Any:
    results = run_export_cli(exporter, [r for c in checks for r in c.runs], tmp)
    refused = next((r["refused"] for r in results if r["refused"]), None)
    why = f"adaptkit refused to register the exporter: {refused}"
    out, i = [], 0
    for check in checks:
        try:
            out.append(check.verify(results[i : i + len(check.runs)]))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n  ({why})" if refused else str(exc)) from None
        i += len(check.runs)
    assert not refused, f"{exporter.name}: {why}"
    return out


def _option_rows(help_text: str) -> dict[str, str]:
    """``flag -> its row`` (the option's own line and its wrapped help, joined) in the options
    section of a click ``--help``: a flag mentioned in some text is not an option line."""
    rows: dict[str, str] = {}
    lines = help_text.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Options:"), len(lines))
    flags: list[str] = []
    text: list[str] = []
    for line in lines[start:]:
        if line.startswith("  -"):  # an option's own line: its flags, then (maybe) its help
            decl = line.strip().split("  ")[0]
            flags = [t for t in re.split(r"[\s,/]+", decl) if t.startswith("-")]
            text = [line.strip()]
        elif line.startswith("   ") and flags:  # its help, wrapped
            text.append(line.strip())
        else:
            flags = []
            continue
        for flag in flags:
            rows[flag] = " ".join(text)
    return rows


def _help(exporter: Any) -> _Check:
    from adaptkit.exporting import selector
    from adaptkit.plugins.options import option_flags

    own = selector(exporter.name)
    flags = [f for k, s in exporter.options_schema["properties"].items() for f in option_flags(k, s)]

    def verify(results: list[dict[str, Any]]) -> None:
        (result,) = results
        assert result["code"] == 0, f"{exporter.name}: `adaptkit export --help` failed: {result['err']}"
        rows = _option_rows(result["out"])
        # Whitespace aside: click wraps the help anywhere, hyphens included.
        mine = [f for f in flags if f in rows and own + ":" in "".join(rows[f].split())]
        missing = ([] if own in rows else [own]) + [f for f in flags if f not in mine]
        assert not missing, (
            f"{exporter.name}: `adaptkit export --help` has no option line for {', '.join(missing)} "
            f"as an option of {own}"
        )

    return _Check([{"argv": ["export", "--help"]}], verify)


def _refusals(exporter: Any, tmp: Path, foreign: dict[str, str | None] | None) -> _Check:
    model_dir, adapter = kit_workspace(tmp.parent)
    tmp.mkdir(parents=True, exist_ok=True)
    base = ["export", "--exporter", exporter.name, "--model", model_dir, "-a", adapter]
    cases = [case for k, s in exporter.options_schema["properties"].items() for case in _bad_values(k, s)]
    cases += [
        (flag, [], flag) if value is None else (flag, [value], f"{flag} {value!r}")
        for flag, value in (foreign or {}).items()
    ]
    outs = [tmp / f"out{i}" for i in range(len(cases))]

    def verify(results: list[dict[str, Any]]) -> None:
        for (typed, _, shown), out, result in zip(cases, outs, results, strict=True):
            flag = typed.split("=")[0]
            line = _one_error(result)
            got = textwrap.indent(result["err"][-2000:], "  ")
            assert line is not None and flag in line, (
                f"{exporter.name}: {shown} must be refused as one `error:` line naming {flag} "
                f"with exit code 2; got exit {result['code']}:\n{got}"
            )
            assert not out.exists(), f"{exporter.name}: {shown} was refused after writing"

    # The flag goes last, so that a flag given without its value has nothing after it.
    runs = [{"argv": [*base, "-o", out, case[0], *case[1]]} for case, out in zip(cases, outs, strict=True)]
    return _Check(runs, verify)


def _report(exporter: Any, tmp: Path, args: Sequence[str]) -> _Check:
    from adaptkit.exporting import REPORT

    model_dir, adapter = kit_workspace(tmp.parent)
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "out"
    argv = ["export", "--exporter", exporter.name, "--model", model_dir, "-a", adapter, "-o", out, "--json"]

    def verify(results: list[dict[str, Any]]) -> dict[str, Any]:
        (result,) = results
        assert result["code"] == 0, (
            f"{exporter.name}: the export failed:\n{textwrap.indent(result['err'], '  ')}"
        )
        assert (out / REPORT).is_file(), f"{exporter.name}: no {REPORT} in the output"
        written = json.loads((out / REPORT).read_text())
        assert json.loads(result["out"]) == written, f"{exporter.name}: --json does not print {REPORT}"
        assert written["exporter"] == exporter.name and written["model"] == str(model_dir), written
        assert [a["name"] for a in written["adapters"]] == ["adapter"], written["adapters"]
        assert len(list(out.iterdir())) > 1, f"{exporter.name}: the export wrote nothing but the report"
        return written

    return _Check([{"argv": [*argv, *args]}], verify)


def _atomic(exporter: Any, tmp: Path, args: Sequence[str]) -> _Check:
    model_dir, adapter = kit_workspace(tmp.parent)
    fresh, kept = tmp / "fresh" / "out", tmp / "kept" / "out"
    fresh.parent.mkdir(parents=True, exist_ok=True)
    kept.mkdir(parents=True, exist_ok=True)
    (kept / "earlier.txt").write_text("an earlier export")
    base = ["export", "--exporter", exporter.name, "--model", model_dir, "-a", adapter, *args]

    def verify(results: list[dict[str, Any]]) -> None:
        after, before = results
        assert after["code"] == 2 and "injected failure after" in after["err"], (
            f"{exporter.name}: the export itself failed before the injected failure:\n"
            + textwrap.indent(after["err"][-2000:], "  ")
        )
        left = sorted(p.name for p in fresh.parent.iterdir())
        assert left == [], f"{exporter.name}: a failed export left {left} (write only into request.out_dir)"
        assert before["code"] == 2 and "injected failure before" in before["err"], before["err"]
        assert sorted(p.name for p in kept.iterdir()) == ["earlier.txt"], f"{exporter.name}: lost the output"
        assert (kept / "earlier.txt").read_text() == "an earlier export"
        assert sorted(p.name for p in kept.parent.iterdir()) == ["out"], "a failed --force run left files"

    runs = [
        {"argv": [*base, "-o", fresh], "fail": "after"},
        {"argv": [*base, "-o", kept, "--force"], "fail": "before"},
    ]
    return _Check(runs, verify)


def check_help(exporter: Any, tmp_path: Path) -> None:
    tmp = Path(tmp_path) / "help"
    _run_checks(exporter, [_help(exporter)], tmp)


def check_refusals(exporter: Any, tmp_path: Path, *, foreign: dict[str, str | None] | None = None) -> None:
    """Bad values of every option, and ``foreign`` (``flag -> value``, flags of other exporters;
    ``None`` for a switch), refused as one ``error:`` line naming the flag, exit 2, nothing
    written."""
    tmp = Path(tmp_path) / "refusals"
    _run_checks(exporter, [_refusals(exporter, tmp, foreign)], tmp)


def check_report(exporter: Any, tmp_path: Path, *, args: Sequence[str] = ()) -> dict[str, Any]:
    tmp = Path(tmp_path) / "report"
    return _run_checks(exporter, [_report(exporter, tmp, args)], tmp)[0]


def check_atomic(exporter: Any, tmp_path: Path, *, args: Sequence[str] = ()) -> None:
    tmp = Path(tmp_path) / "atomic"
    _run_checks(exporter, [_atomic(exporter, tmp, args)], tmp)


def check_exporter(
    exporter: Any,
    tmp_path: Path,
    *,
    args: Sequence[str] = (),
    export: bool = True,
    foreign: dict[str, str | None] | None = None,
) -> None:
    """Run every contract check against ``exporter`` (writes only under ``tmp_path``); the CLI
    checks share one child process.

    Args:
        exporter: The exporter object.
        tmp_path: A folder for the model, the adapter and the exports.
        args: Extra ``adaptkit export`` flags for the real exports.
        export: Run the checks that need a real export (report, atomic).
        foreign: ``flag -> value`` (``None`` for a switch) of other exporters' options, each of
            which must be refused.
    """
    tmp = Path(tmp_path)
    check_declared(exporter)
    checks = [_help(exporter), _refusals(exporter, tmp / "refusals", foreign)]
    if export:
        checks += [_report(exporter, tmp / "report", args), _atomic(exporter, tmp / "atomic", args)]
    _run_checks(exporter, checks, tmp / "driver")
