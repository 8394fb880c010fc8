"""The plugin host: entry points, env filters, contracts, clashes, missing dependencies."""

import importlib.metadata
import inspect
import types
from pathlib import Path

import pytest

from adaptkit import hookimpl
from adaptkit.errors import MissingDependencyError, PluginError, UnknownNameError
from adaptkit.plugins import BLOCK_ENV, LOAD_ENV, hookspecs, load_registry
from adaptkit.plugins.contracts import KINDS

REPO = Path(__file__).resolve().parents[2]


class Thing:
    def __init__(self, name, requires=None):
        self.name = name
        self.description = f"test {name}"
        if requires:
            self.requires = requires

    def detect(self, path):
        return False

    def accepts(self, model):
        return False

    def generate(self, request, emit):
        raise NotImplementedError

    def read(self, path):
        raise NotImplementedError

    params_schema = {"type": "object"}
    options_schema = {"type": "object", "additionalProperties": False, "properties": {}}

    def merge(self, inputs, ctx):
        raise NotImplementedError

    def prepare(self, model, settings, config, log):
        raise NotImplementedError

    def optimizer(self, params, config, log):
        raise NotImplementedError

    def extract(self, model, *, base_name, provenance):
        raise NotImplementedError

    def export(self, request, log):
        raise NotImplementedError


def plugin_registering(hook, *objs):
    mod = types.SimpleNamespace()

    @hookimpl(specname=hook)
    def impl(register):
        for obj in objs:
            register(obj)

    mod.impl = impl
    return mod


def test_every_builtin_plugin_folder_is_an_entry_point():
    eps = {ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group="adaptkit")}
    folders = {p.name for p in (REPO / "plugins").iterdir() if (p / "__init__.py").exists()}
    missing = folders - eps
    assert not missing, (
        f"plugins/{sorted(missing)} not declared under [project.entry-points.adaptkit] "
        "(or the install is stale: run `pip install -e .` again)"
    )


def test_every_hook_is_documented_and_tested():
    specs = [n for n, f in vars(hookspecs).items() if callable(f) and n.startswith("register_")]
    assert sorted(specs) == sorted([h for h, _, _ in KINDS.values()] + ["register_commands"])
    tests_text = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Args:" in doc and len(doc) > 80, f"hook {name} is not documented"
        assert f"def test_hook_{name}" in tests_text, f"hook {name} has no test_hook_{name}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_hook_registration_per_kind(kind):
    hook = KINDS[kind][0]
    reg = load_registry(env={LOAD_ENV: ""}, extra=[("mine", plugin_registering(hook, Thing("x-1")))])
    entry = reg.registration(kind, "x-1")
    assert (entry.plugin, entry.obj.name, entry.available) == ("mine", "x-1", True)
    assert reg.registered_by("mine") == {kind: ["x-1"]}


def test_hook_register_formats():
    reg = load_registry(env={LOAD_ENV: "native"})
    assert reg.registration("format", "adaptkit").plugin == "native"


def test_hook_register_backends():
    reg = load_registry(
        env={LOAD_ENV: ""}, extra=[("b", plugin_registering("register_backends", Thing("toy")))]
    )
    assert reg.names("backend") == ["toy"]


def test_hook_register_merge_strategies():
    reg = load_registry(
        env={LOAD_ENV: ""},
        extra=[("s", plugin_registering("register_merge_strategies", Thing("avg")))],
    )
    assert reg.names("strategy") == ["avg"]


def test_hook_register_exporters():
    reg = load_registry(
        env={LOAD_ENV: ""}, extra=[("e", plugin_registering("register_exporters", Thing("zip")))]
    )
    assert reg.names("exporter") == ["zip"]


class EchoRuntime:
    """A third-party runtime: a ``*.echo`` MODEL answers with the prompt's ids reversed."""

    name = "echo"
    description = "test runtime"

    def accepts(self, model):
        return model.endswith(".echo")

    def generate(self, request, emit):
        ids = list(request.input_ids)
        request.check_ids(ids, vocab=100, context=8)
        out = ids[::-1][: request.max_new_tokens]
        for token in out:
            emit(f"{token} ")
        return {"input_ids": ids, "output_ids": out, "text": None, "tokens_per_s": 1.0}


def test_hook_register_runtimes(run_cli, monkeypatch, tmp_path):
    """adaptkit generate hands MODEL to the runtime that accepts it, with its flags checked; the
    request's own checks give the CLI's one error line; two takers are a plugin conflict."""
    import json

    extra = [("e", plugin_registering("register_runtimes", EchoRuntime()))]
    monkeypatch.setattr("adaptkit.plugins.registry._cached", load_registry(extra=extra))
    code, out, err = run_cli("generate", "m.echo", "--input-ids", "1,2,3", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["output_ids"] == [3, 2]
    code, _, err = run_cli("generate", "m.echo", "--input-ids", "1,2,300")
    assert code == 2 and "token id 300 is outside the vocabulary (size 100)" in err
    code, _, err = run_cli("generate", "m.echo", "--input-ids", "1,2,3", "--max-new-tokens", "9")
    assert code == 2 and "exceed the model's context of 8" in err
    other = type("Echo2", (EchoRuntime,), {"name": "e2"})()
    both = [*extra, ("f", plugin_registering("register_runtimes", other))]
    monkeypatch.setattr("adaptkit.plugins.registry._cached", load_registry(extra=both))
    code, _, err = run_cli("generate", "m.echo", "--input-ids", "1")
    assert code == 2 and "more than one runtime accepts it: 'e2' (plugin 'f'), 'echo' (plugin 'e')" in err


def test_duplicate_names_name_both_plugins():
    with pytest.raises(PluginError, match=r"registered by both plugin 'one' and plugin 'two'"):
        load_registry(
            env={LOAD_ENV: ""},
            extra=[
                ("one", plugin_registering("register_formats", Thing("same"))),
                ("two", plugin_registering("register_formats", Thing("same"))),
            ],
        )


def test_unknown_name_lists_valid_ones():
    reg = load_registry(env={LOAD_ENV: "native"})
    with pytest.raises(UnknownNameError, match=r"unknown format 'peft-ish'; valid: adaptkit"):
        reg.get("format", "peft-ish")


def test_missing_dependency_registers_and_says_what_to_install():
    obj = Thing("gpu-thing", requires={"surely_not_installed_mod": "surely-not-installed>=1"})
    reg = load_registry(env={LOAD_ENV: ""}, extra=[("g", plugin_registering("register_backends", obj))])
    entry = reg.registration("backend", "gpu-thing")
    assert not entry.available
    with pytest.raises(MissingDependencyError, match=r"pip install surely-not-installed>=1"):
        reg.get("backend", "gpu-thing")


def test_contract_violations_rejected():
    class NoRead:
        name = "half"
        description = "no read()"

        def detect(self, path):
            return False

    with pytest.raises(PluginError, match=r"without read required by AdapterFormat"):
        load_registry(env={LOAD_ENV: ""}, extra=[("p", plugin_registering("register_formats", NoRead()))])
    with pytest.raises(PluginError, match="invalid name 'Bad Name'"):
        load_registry(
            env={LOAD_ENV: ""},
            extra=[("p", plugin_registering("register_formats", Thing("Bad Name")))],
        )


def test_misspelled_hook_fails_loudly():
    """Loudly but alone: the plugin is reported by name with the reason and skipped."""
    mod = types.SimpleNamespace()

    @hookimpl
    def register_format(register):  # missing the trailing "s"
        pass

    mod.register_format = register_format
    registry = load_registry(env={LOAD_ENV: ""}, extra=[("typo", mod)])
    assert (
        "unknown hook" in registry.plugins["typo"].error
        and "register_formats" in registry.plugins["typo"].error
    )
    assert registry.pm.get_plugin("typo") is None


def test_env_vars_restrict_and_block():
    assert load_registry(env={LOAD_ENV: ""}).names("format") == []
    assert load_registry(env={BLOCK_ENV: "native,peft"}).names("format") == []
    assert load_registry(env={BLOCK_ENV: "native"}).names("format") == ["peft"]
    assert "adaptkit" in load_registry(env={}).names("format")
    with pytest.raises(UnknownNameError, match="unknown plugin 'nope'"):
        load_registry(env={LOAD_ENV: "nope"})


def test_registry_factory_does_no_work_at_import():
    import subprocess
    import sys

    code = (
        "import adaptkit, adaptkit.plugins, sys; print(any(m.startswith('adaptkit_') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_third_party_exporter_clashing_with_a_builtin_is_the_one_refused(monkeypatch):
    """Even when it loads first (entry point 'aaa' sorts before 'onnx'): adaptkit's own plugins
    register first, so a switch key shared with different defaults (`verify` false: --verify;
    ONNX's `verify` true: --no-verify) is blamed on the third party, which loses everything it
    registered, and ONNX keeps its flags."""
    real = importlib.metadata.entry_points

    class Fast(Thing):
        options_schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {"verify": {"type": "boolean", "default": False, "description": "check it"}},
        }

    mod = types.SimpleNamespace()

    @hookimpl
    def register_exporters(register):
        register(Fast("fast"))

    @hookimpl
    def register_formats(register):
        register(Thing("fastfmt"))

    mod.register_exporters, mod.register_formats = register_exporters, register_formats
    third = types.SimpleNamespace(name="aaa", value="aaa_plugin", dist=None, load=lambda: mod)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [third, *real(group=group)])
    reg = load_registry(env={LOAD_ENV: "aaa,onnx"})
    assert reg.names("exporter") == ["onnx"] and reg.names("format") == []
    assert reg.plugins["onnx"].error is None
    assert reg.plugins["aaa"].error.startswith(
        "exporter 'fast' refused: option 'verify' (--verify) differs from option 'verify' of exporter "
        "'onnx' (--no-verify)"
    )
    assert reg.pm.get_plugin("aaa") is None
