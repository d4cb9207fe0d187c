"""The shape of the house: small modules, a thin command root, one definition of each shared rule,
one set of runtime options, no marker comments. Read from the source; nothing is run but `--help`."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migfuse.cli import app

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "migfuse"
MODULES = sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_500_lines_and_the_command_root_is_under_200():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
    assert len((PACKAGE / "cli.py").read_text().splitlines()) < 200


def _definitions(name: str) -> list[str]:
    """Where `name` is defined (def or class) at any level of the package."""
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("name", ["Precision", "resolve_device", "resolve_precision", "cpu_has_amx", "class_weights",
                                  "Runtime", "Registry", "read_checkpoint"])
def test_each_shared_rule_is_defined_once(name):
    assert len(_definitions(name)) == 1, _definitions(name)


def test_one_learning_rate_schedule():
    """One warm-up + cosine rule serves every trainer: no cosine formula outside `warmup_cosine`."""
    assert len(_definitions("warmup_cosine")) == 1
    cosines = {str(p.relative_to(ROOT)) for p in MODULES if re.search(r"math\.cos\(math\.pi", p.read_text())}
    assert cosines == {"migfuse/training/recipe.py"}


RUNTIME_OPTIONS = ["--device", "--precision", "--compile", "--threads", "--trust-checkpoint"]
MODEL_COMMANDS = [["extract", "video"], ["extract", "context"], ["extract", "skeleton"], ["extract", "face"],
                  ["extract", "all"],
                  ["backbone", "run"], ["backbone", "train", "video"], ["backbone", "train", "skeleton"],
                  ["fuse", "train"], ["fuse", "eval"], ["fuse", "predict"], ["demo"]]


def _option_blocks(help_text: str) -> dict[str, str]:
    """Option name -> its whole help entry (the lines from the option to the next option)."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        m = re.match(r"\s{2}(--[\w-]+)", line)
        if m:
            current = m.group(1)
            blocks[current] = line.strip()
        elif current and line.startswith(" " * 10):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


def test_every_command_that_runs_a_model_lists_identical_runtime_options():
    seen = {}
    for command in MODEL_COMMANDS:
        r = CliRunner().invoke(app, [*command, "--help"], terminal_width=100)
        assert r.exit_code == 0, r.output
        blocks = _option_blocks(r.stdout)
        seen[" ".join(command)] = tuple(blocks.get(o) for o in RUNTIME_OPTIONS)
    first = next(iter(seen.values()))
    assert all(first), first
    assert {name: opts for name, opts in seen.items() if opts != first} == {}


def test_no_section_markers_or_issue_numbers_in_the_code_and_the_contracts():
    files = [*MODULES, ROOT / "docs" / "contracts.md"]
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"\[(end )?section|\bissue #?\d+|\(\w+ issue\)", line, re.I)]
    assert hits == []


def test_no_help_shows_a_bare_type_where_the_values_are_a_closed_set():
    """Closed choices are StrEnums (or listed choices), so --help shows [a|b|c], never <str>, for them."""
    closed = {"--task", "--split", "--scheme", "--dataset-layout", "--stream", "--arch", "--mode", "--scope",
              "--decoder", "--precision", "--balance"}
    bare = []
    for command in [*MODEL_COMMANDS, ["data", "prepare"], ["data", "synth"], ["data", "export-pyskl"],
                    ["fuse", "eval"], ["fuse", "predict"], ["fuse", "late"], ["fuse", "import"], ["score"],
                    ["export", "miga2025"], ["export", "emotion"]]:
        text = CliRunner().invoke(app, [*command, "--help"], terminal_width=200).stdout
        for option, block in _option_blocks(text).items():
            if option in closed and re.match(rf"{option}\s+<(str|text)>", block):
                bare.append(f"{' '.join(command)} {option}")
    assert bare == []


def test_one_progress_rule_every_long_loop_goes_through_progress_bar():
    """A bar on a terminal, lines at intervals elsewhere: no loop builds its own tqdm."""
    builders = {str(p.relative_to(ROOT)) for p in MODULES if re.search(r"\btqdm\(", p.read_text())}
    assert builders == {"migfuse/progress_bar.py"}


# Calls that write a file by themselves; anywhere in the package they must sit inside
# `with open_atomic(...)` / `with atomic_path(...)` (migfuse/atomic_write.py). Allowed raw writers: the
# helper itself and the Zarr cache (rows made whole by their status flag, `data_cache/chunks.py`).
_WRITES_WITH = {"np": {"save", "savez", "savez_compressed", "savetxt"}, "numpy": {"save", "savez", "savetxt"},
                "torch": {"save"}, "pickle": {"dump"}, "json": {"dump"}, "os": {"replace", "rename"},
                "shutil": {"copy", "copy2", "copyfile", "move"}}
_WRITING_METHODS = {"write_text", "write_bytes", "savefig", "tofile", "Workbook", "FileHandler"}
_RAW_WRITER_ALLOWED = {"migfuse/atomic_write.py", "migfuse/data_cache"}


def _writes_a_file(call: ast.Call) -> bool:
    """True for a call that writes a file: open()/av.open()/ZipFile() in a writing mode, np.save & co.,
    Path.write_text/write_bytes, savefig, os.replace. (The helper's own `write_text(path, ...)` is a plain
    name, not a method, so it is not matched.)"""
    func = call.func
    if isinstance(func, ast.Name):
        name, owner = func.id, None
    elif isinstance(func, ast.Attribute):
        name, owner = func.attr, func.value.id if isinstance(func.value, ast.Name) else None
    else:
        return False
    modes = [a.value for a in [*call.args[1:2], *(k.value for k in call.keywords if k.arg == "mode")]
             if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if name in ("open", "ZipFile"):
        return any(set(m) & set("wax+") for m in modes)
    if owner in _WRITES_WITH:
        return name in _WRITES_WITH[owner]
    return isinstance(func, ast.Attribute) and name in _WRITING_METHODS or name in ("Workbook", "FileHandler")


def test_every_file_is_written_through_the_atomic_writer():
    """No raw write outside `with open_atomic(...)`/`with atomic_path(...)`: a full disk would leave a half
    file under the final name and end in a traceback."""
    raw = []
    for path in MODULES:
        rel = str(path.relative_to(ROOT))
        if any(rel == a or rel.startswith(a + "/") for a in _RAW_WRITER_ALLOWED):
            continue
        tree = ast.parse(path.read_text())
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any(
                    isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "id", "") in
                    ("open_atomic", "atomic_path") for i in node.items):
                guarded |= {id(n) for n in ast.walk(node)}
        raw += [f"{rel}:{n.lineno}" for n in ast.walk(tree)
                if isinstance(n, ast.Call) and id(n) not in guarded and _writes_a_file(n)]
    assert raw == [], raw
