"""One output guard for every writer (adaptkit.io.output_guard + adaptkit.io.atomic): tested once at
the mechanism and once through every command that writes."""

import os
import stat
import threading

import pytest

from adaptkit import save_adapter
from adaptkit.errors import OutputError
from adaptkit.io.atomic import atomic_directory, atomic_path
from adaptkit.io.output_guard import ADAPTER_FILE, EXPORT_FOLDER, PLOT, check_output
from tests.helpers.adapters import make_adapter

# --- the mechanism ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.safetensors").write_bytes(b"input")
    (tmp_path / "old.safetensors").write_bytes(b"old")
    return tmp_path


@pytest.mark.parametrize(
    ("out", "inp", "words"),
    [
        ("in/a.safetensors", "in/a.safetensors", "is an input"),
        ("in", "in/a.safetensors", "contains an input"),
        ("in/new.safetensors", "in", "lies inside an input"),
    ],
)
@pytest.mark.parametrize("force", [False, True])
def test_inputs_are_never_outputs(tree, out, inp, words, force):
    kind = EXPORT_FOLDER if out == "in" else ADAPTER_FILE
    with pytest.raises(OutputError, match=words):
        check_output(tree / out, kind, inputs=[tree / inp], force=force)


def test_an_input_reached_through_a_symlink_is_still_an_input(tree):
    os.symlink(tree / "in", tree / "alias")
    with pytest.raises(OutputError, match="is an input"):
        check_output(tree / "alias" / "a.safetensors", ADAPTER_FILE, inputs=[tree / "in/a.safetensors"])


@pytest.mark.parametrize("thing", ["symlink", "fifo", "folder"])
def test_only_regular_files_are_replaced_even_with_force(tree, thing):
    dest = tree / "x.safetensors"
    {
        "symlink": lambda: os.symlink(tree / "old.safetensors", dest),
        "fifo": lambda: os.mkfifo(dest),
        "folder": lambda: dest.mkdir(),
    }[thing]()
    with pytest.raises(OutputError, match="only a regular file is ever replaced"):
        check_output(dest, ADAPTER_FILE, force=True)


def test_character_device_is_refused_even_with_force():
    with pytest.raises(OutputError, match="a character device is in the way"):
        check_output("/dev/null", ADAPTER_FILE, force=True)


def test_existing_output_needs_force(tree):
    with pytest.raises(OutputError, match="output exists"):
        check_output(tree / "old.safetensors", ADAPTER_FILE)
    check_output(tree / "old.safetensors", ADAPTER_FILE, force=True)
    (tree / "empty").mkdir()
    check_output(tree / "empty", EXPORT_FOLDER, empty_folder_ok=True)
    with pytest.raises(OutputError, match="not empty"):
        check_output(tree / "in", EXPORT_FOLDER, empty_folder_ok=True)


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("zz.pth", ADAPTER_FILE, "other programs run"),
        ("sitecustomize.py", ADAPTER_FILE, "other programs run"),
        (".bashrc", ADAPTER_FILE, "hidden"),
        (".hidden.safetensors", ADAPTER_FILE, "hidden"),
        ("notes.txt", ADAPTER_FILE, "does not end in .safetensors"),
        ("plot.jpg", PLOT, "does not end in .png"),
        ("out.py", EXPORT_FOLDER, "other programs run"),
    ],
)
def test_names_of_the_wrong_kind_need_force(tree, name, kind, words):
    with pytest.raises(OutputError, match=words):
        check_output(tree / name, kind)
    check_output(tree / name, kind, force=True)


def test_file_creation_is_exclusive_down_to_the_rename(tree):
    dest = tree / "race.safetensors"
    with pytest.raises(OutputError, match="output exists"), atomic_path(dest) as tmp:
        tmp.write_bytes(b"mine")
        dest.write_bytes(b"theirs")  # another writer finished first
    assert dest.read_bytes() == b"theirs"
    assert sorted(p.name for p in tree.iterdir() if p.name.startswith(".")) == []


def test_folder_creation_is_exclusive_down_to_the_rename(tree):
    dest = tree / "race"
    with pytest.raises(OutputError, match="output exists"), atomic_directory(dest) as tmp:
        (tmp / "f").write_text("mine")
        dest.mkdir()
        (dest / "g").write_text("theirs")
    assert [p.name for p in dest.iterdir()] == ["g"]


def test_replace_refuses_what_appeared_meanwhile(tree):
    dest = tree / "x.safetensors"
    with pytest.raises(OutputError, match="only a regular file"), atomic_path(dest, replace=True) as tmp:
        tmp.write_bytes(b"new")
        os.mkfifo(dest)
    assert stat.S_ISFIFO(os.lstat(dest).st_mode)


def test_concurrent_writers_without_force_one_wins(tree):
    results = []
    barrier = threading.Barrier(2)

    def write(tag):
        try:
            with atomic_path(tree / "both.safetensors") as tmp:
                tmp.write_bytes(tag)
                barrier.wait(timeout=10)
            results.append("ok")
        except OutputError:
            results.append("refused")

    threads = [threading.Thread(target=write, args=(t,)) for t in (b"one", b"two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "refused"]
    assert (tree / "both.safetensors").read_bytes() in (b"one", b"two")


# --- through every command ---------------------------------------------------------------------


@pytest.fixture
def box(tmp_path, monkeypatch):
    save_adapter(make_adapter(0), tmp_path / "a.safetensors")
    save_adapter(make_adapter(1), tmp_path / "b.safetensors")
    (tmp_path / "a.yaml").write_text("adapter: a.safetensors\nname: a\n")
    (tmp_path / "data.jsonl").write_text('{"input_ids": [1, 2, 3]}\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"base weights")
    (tmp_path / "old.png").write_bytes(b"old plot")
    (tmp_path / "metrics.jsonl").write_text("old metrics\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(root):
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if "__pycache__" not in p.parts
    }


TRAIN = ["train", "--model", "model", "--data", "data.jsonl"]
CASES = [
    # class 2: inputs overwritten
    (["inspect", "a.safetensors", "--model", "model", "--plot", "a.safetensors"], "is an input"),
    (["inspect", "a.safetensors", "--model", "model", "--plot", "model/model.safetensors"], "lies inside"),
    (["inspect", "a.safetensors", "--model", "model", "--plot", "old.png"], "output exists"),
    ([*TRAIN, "-o", "new.safetensors", "--metrics", "metrics.jsonl"], "output exists"),
    ([*TRAIN, "-o", "new.safetensors", "--metrics", "data.jsonl", "--force"], "is an input"),
    ([*TRAIN, "-o", "data.jsonl", "--force"], "is an input"),
    (["export", "--merged", "--model", "model", "-a", "a.yaml", "-o", "model", "--force"], "is an input"),
    (["export", "--onnx", "--model", "model", "-a", "a.yaml", "-o", "model/onnx"], "lies inside"),
    (["export", "--merged", "--model", "model", "-a", "a.yaml", "-o", ".", "--force"], "not a folder"),
    (["combine", "a.yaml", "b.safetensors", "-o", "a.yaml", "--force"], "is an input"),
    (["combine", "a.yaml", "b.safetensors", "-o", "a.safetensors", "--force"], "is an input"),
    (["convert", "a.yaml", "--to", "peft", "-o", ".", "--force"], "not a folder"),
    (["convert", "a.safetensors", "--to", "peft", "-o", "/dev/null", "--force"], "character device"),
    (["combine", "a.yaml", "b.safetensors", "-o", "/dev/null", "--force"], "character device"),
    (["demo", "-o", "model", "--quick"], "not empty"),
    # class 1: names of the wrong kind
    (["combine", "a.yaml", "b.safetensors", "-o", "zz.pth"], "other programs run"),
    (["convert", "a.yaml", "--to", "adaptkit", "-o", ".env"], "hidden"),
    ([*TRAIN, "-o", "x.py"], "other programs run"),
]


@pytest.mark.parametrize(("args", "words"), CASES, ids=[" ".join(a[:1] + a[-3:]) for a, _ in CASES])
def test_commands_refuse_and_write_nothing(run_cli, box, args, words):
    before = _snapshot(box)
    code, _, err = run_cli(*args)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and words in errors[0], err
    assert _snapshot(box) == before


def test_convert_into_a_folder_holding_its_input(run_cli, box):
    (box / "peft_in").mkdir()
    code, _, err = run_cli("convert", "a.safetensors", "--to", "peft", "-o", "peft_in/p")
    assert code == 0, err
    before = _snapshot(box)
    code, _, err = run_cli("convert", "peft_in/p", "--to", "peft", "-o", "peft_in", "--force")
    assert code == 2 and "contains an input" in err
    assert _snapshot(box) == before


def test_existing_checkpoints_need_force(run_cli, box):
    step = box / "new.safetensors.checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "state.json").write_text("{}")
    before = _snapshot(box)
    code, _, err = run_cli(*TRAIN, "-o", "new.safetensors", "--save-every", "2")
    assert code == 2 and "step-2" in err and "output exists" in err
    assert _snapshot(box) == before


def test_recipe_output_stays_in_the_recipe_folder_not_the_working_directory(run_cli, tmp_path, monkeypatch):
    # A project root holding .venv, a downloaded recipe in a subfolder: `../` would reach the
    # root (the working directory), which used to be allowed.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    save_adapter(make_adapter(), tmp_path / "recipes" / "a.safetensors")
    site = tmp_path / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    for output, words in [
        ("../.venv/lib/site-packages/zz.safetensors", "outside the recipe's folder"),
        ("zz.pth", "other programs run"),
        (".zz.safetensors", "hidden"),
    ]:
        (tmp_path / "recipes" / "r.yaml").write_text(
            f"adapters: [a.safetensors]\nstrategy: cat\noutput: '{output}'\n"
        )
        code, _, err = run_cli("combine", "recipes/r.yaml")
        assert code == 2 and words in err, err
    assert list(site.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "recipes").iterdir()) == ["a.safetensors", "r.yaml"]


def test_a_format_that_does_not_declare_its_kind_may_replace_a_file_or_a_folder(tree):
    from adaptkit.io.output_guard import kind_of_writer

    kind = kind_of_writer(object())
    (tree / "folder_out").mkdir()
    check_output(tree / "folder_out", kind, force=True)
    check_output(tree / "old.safetensors", kind, force=True)
    with pytest.raises(OutputError, match="a character device is in the way"):
        check_output("/dev/null", kind, force=True)
    with pytest.raises(OutputError, match="other programs run"):
        check_output(tree / "x.pth", kind)
