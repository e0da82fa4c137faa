"""Every command that README.md, docs/ and benchmarks/README.md show runs as written from the repository root.

The shell commands of their fenced code blocks are collected and checked:

* every program is one this file knows how to check (an unknown one fails, so a new kind of command gets a rule);
* every repository path they name (a recipe, a script, a config) exists, every module they run can be found,
  every ``pip install`` extra is declared in ``pyproject.toml``;
* every script and module entry point answers ``--help`` in a fresh process started from the repository root
  (what a user of a fresh clone gets: ``python tests/test_faults.py`` must not need ``PYTHONPATH``);
* every training command's recipe and flags pass the recipe validation (no training);
* the Quickstart's digits training runs for two steps, and the shown ``evaluate`` / ``analyze`` commands run on
  its output.

The Python blocks are compiled, and every name they import from ``plot_hf`` must exist.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
REPO_DIRS = ("recipes/", "benchmarks/", "tests/", "docs/", "model_cards/", "plot_hf/", ".ci/")
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    """One shell command of a documentation file (``&&`` chains are split), as its argument list."""

    argv: tuple[str, ...]
    source: str  # "FILE:LINE" of the code block

    def __str__(self) -> str:
        return f"{shlex.join(self.argv)}  ({self.source})"


def code_blocks(path: Path) -> list[tuple[str, str, int]]:
    """The fenced code blocks of a Markdown file as ``(language, text, first line number)``."""
    blocks, language, lines, start = [], None, [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if language is None and match:
            language, lines, start = match.group(2).lower(), [], number + 1
        elif language is not None and line.strip().startswith("```"):
            blocks.append((language, "\n".join(lines), start))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def split_commands(text: str, source: str) -> list[Command]:
    """Shell text -> commands: continuation lines joined, comments dropped, ``&&`` chains split."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            argv = tokens[:cut]
            while argv and ENV_ASSIGNMENT.match(argv[0]):  # `OMP_NUM_THREADS=1 python ...`
                argv = argv[1:]
            if argv:
                commands.append(Command(tuple(argv), source))
            tokens = tokens[cut + 1 :]
    return commands


INLINE_COMMAND = re.compile(r"`((?:[A-Z_]+=\S+ )*python3? [^`]+)`")


def shell_commands() -> list[Command]:
    """The commands of the shell code blocks, and the ``python ...`` commands shown inline in the text."""
    commands = []
    for path in DOC_FILES:
        for language, text, line in code_blocks(path):
            if language in SHELL_LANGUAGES:
                commands += split_commands(text, f"{path.relative_to(ROOT)}:{line}")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in INLINE_COMMAND.finditer(line):
                commands += split_commands(match.group(1), f"{path.relative_to(ROOT)}:{number} (inline)")
    return commands


def python_blocks() -> list[tuple[str, str]]:
    return [
        (text, f"{path.relative_to(ROOT)}:{line}")
        for path in DOC_FILES
        for language, text, line in code_blocks(path)
        if language in ("python", "py")
    ]


COMMANDS = shell_commands()


# ------------------------------------------------------------------------------------------- parsing commands
@dataclass(frozen=True)
class EntryPoint:
    """What a command runs: ``("module", "plot_hf.train")`` or ``("script", "tests/test_faults.py")``, its args."""

    kind: str
    target: str
    args: tuple[str, ...]


def entry_point(command: Command) -> EntryPoint | None:
    """The Python entry point a command runs (``python -m M``, ``python FILE``, ``accelerate launch ... -m M``)."""
    argv = command.argv
    if argv[0] in ("python", "python3"):
        if argv[1] == "-m":
            return EntryPoint("module", argv[2], argv[3:])
        return EntryPoint("script", argv[1], argv[2:])
    if argv[:2] == ("accelerate", "launch"):
        rest = argv[2:]  # the launcher's own options, then `-m MODULE` or `SCRIPT.py`, then its arguments
        if "-m" in rest:
            at = rest.index("-m")
            return EntryPoint("module", rest[at + 1], rest[at + 2 :])
        scripts = [i for i, token in enumerate(rest) if token.endswith(".py")]
        if scripts:
            return EntryPoint("script", rest[scripts[0]], rest[scripts[0] + 1 :])
    return None


def repository_paths(command: Command) -> list[str]:
    """Arguments of a command that name a file or folder of the repository (outputs are not checked)."""
    return [token for token in command.argv if token.startswith(REPO_DIRS)]


def test_the_documentation_shows_commands() -> None:
    """The collector finds the Quickstart (so a broken parser cannot make the other tests vacuous)."""
    shown = {c.argv for c in COMMANDS}
    assert ("pip", "install", "-e", ".[dev]") in shown and ("python", "-m", "pytest", "-q") in shown
    assert ("python", "-m", "plot_hf.train", "recipes/digits_lt.yaml") in shown
    assert any(c.argv[:2] == ("accelerate", "launch") for c in COMMANDS)
    assert len(python_blocks()) >= 2


def test_collector_splits_chains_continuations_and_comments() -> None:
    text = ('pip install -e ".[dev]" && python -m pytest -q   # the tests\naccelerate launch -m a \\\n    b.yaml\n'
            "OMP_NUM_THREADS=1 python x.py\n")
    argvs = [c.argv for c in split_commands(text, "x:1")]
    assert argvs == [("pip", "install", "-e", ".[dev]"), ("python", "-m", "pytest", "-q"),
                     ("accelerate", "launch", "-m", "a", "b.yaml"), ("python", "x.py")]
    launch = entry_point(Command(("accelerate", "launch", "--config_file", "c.yaml", "-m", "m", "r.yaml"), "x"))
    assert launch == EntryPoint("module", "m", ("r.yaml",))


# ------------------------------------------------------------------------------------------- static checks
KNOWN_PROGRAMS = ("pip", "python", "python3", "accelerate", "mkdocs", "bash")


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_is_known_and_its_paths_exist(command: Command) -> None:
    assert command.argv[0] in KNOWN_PROGRAMS, f"no rule to check {command}; add one to this file"
    missing = [p for p in repository_paths(command) if not (ROOT / p).exists()]
    assert not missing, f"{command} names missing path(s) {missing}"
    if command.argv[0] == "bash":
        assert (ROOT / command.argv[1]).is_file(), command
    if command.argv[0] == "mkdocs":
        assert command.argv[1] in ("build", "serve") and (ROOT / "mkdocs.yml").is_file(), command
    if command.argv[0] == "pip":
        check_pip_install(command)
    entry = entry_point(command)
    if command.argv[0] in ("python", "python3", "accelerate"):
        assert entry is not None, f"cannot tell what {command} runs"
    if entry is not None and entry.kind == "module":
        assert importlib.util.find_spec(entry.target) is not None, f"{command}: no module {entry.target}"
    if entry is not None and entry.kind == "script":
        assert (ROOT / entry.target).is_file(), f"{command}: no script {entry.target}"


def check_pip_install(command: Command) -> None:
    assert command.argv[1] == "install", command
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for spec in command.argv[2:]:
        match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", spec)
        if spec.startswith("-") or match is None:
            continue
        extras = match.group(1).split(",") if match.group(1) else []
        assert set(extras) <= declared.keys(), f"{command}: extra(s) {set(extras) - declared.keys()} not declared"


TRAIN_COMMANDS = [c for c in COMMANDS if (e := entry_point(c)) and e.target == "plot_hf.train" and e.args]


@pytest.mark.parametrize("command", TRAIN_COMMANDS, ids=str)
def test_training_command_recipe_and_flags_validate(command: Command) -> None:
    from plot_hf.recipe import load_recipe

    args = list(entry_point(command).args)
    if not torch.cuda.is_available():  # GPU recipes (bf16) are validated as if on a GPU, the rest unchanged
        args += ["--use_cpu", "true"]
    recipe = load_recipe(ROOT / args[0], args[1:])
    assert recipe.training.output_dir


@pytest.mark.parametrize("code, source", python_blocks(), ids=[s for _, s in python_blocks()])
def test_python_block_compiles_and_its_plot_hf_imports_exist(code: str, source: str) -> None:
    tree = ast.parse(code, filename=source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "plot_hf":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{source}: {node.module} has no {alias.name}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "plot_hf":
                    importlib.import_module(alias.name)


# ------------------------------------------------------------------------------------------- running them
@pytest.fixture(scope="module")
def clone_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a user in a fresh clone with the package installed: this checkout's ``plot_hf`` is
    importable (through a folder that holds only a link to it), the repository root is not on the path."""
    site = tmp_path_factory.mktemp("site")
    (site / "plot_hf").symlink_to(ROOT / "plot_hf", target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PLOT_HF_LOG_LEVEL": "WARNING",
            "MPLBACKEND": "Agg"}


HELP_ENTRIES = sorted({
    (e.kind, e.target)
    for c in COMMANDS
    if (e := entry_point(c)) is not None and e.target not in ("pytest", "mkdocs")
})


@pytest.fixture(scope="module")
def help_outputs(clone_env: dict[str, str]) -> dict[str, tuple[int, str, str]]:
    """``ENTRY --help`` of every shown entry point, each in its own fresh process (started together: they spend
    their time importing torch), from the repository root: target -> (exit code, stdout, stderr)."""
    procs = {}
    for kind, target in HELP_ENTRIES:
        head = [sys.executable, "-m", target] if kind == "module" else [sys.executable, target]
        procs[target] = subprocess.Popen([*head, "--help"], cwd=ROOT, env=clone_env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outputs = {}
    for target, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:  # a script that ignores --help and does its work
            proc.kill()
            stdout, stderr = proc.communicate()
            stderr += f"\n{target} --help did not return within 600 s: give it an argument parser"
        outputs[target] = (proc.returncode, stdout, stderr)
    return outputs


@pytest.mark.parametrize("kind, target", HELP_ENTRIES, ids=[t for _, t in HELP_ENTRIES])
def test_entry_point_answers_help_from_the_repository_root(kind: str, target: str, help_outputs) -> None:
    returncode, stdout, stderr = help_outputs[target]
    assert returncode == 0, f"{kind} {target} --help failed:\n{stderr[-3000:]}"
    assert "usage" in stdout.lower(), stdout[-2000:]


def shown(program_start: tuple[str, ...]) -> Command:
    return next(c for c in COMMANDS if c.argv[: len(program_start)] == program_start)


@pytest.mark.slow
def test_quickstart_trains_and_the_shown_evaluate_and_analyze_commands_run_on_it(tmp_path: Path, clone_env) -> None:
    """The Quickstart's training command for two steps, then the README's evaluate and analyze commands on it."""
    train = shown(("python", "-m", "plot_hf.train", "recipes/digits_lt.yaml"))
    out = tmp_path / "digits_lt"
    run_shown(train.argv, ["--output_dir", str(out), "--max_steps", "2", "--report_to", "none"], clone_env)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    for module in ("plot_hf.evaluate", "plot_hf.analyze"):
        command = shown(("python", "-m", module, "outputs/digits_lt"))
        argv = [str(out) if token == "outputs/digits_lt" else token for token in command.argv]
        run_shown(argv, ["--num_batches", "1"] if module == "plot_hf.analyze" else [], clone_env)


def run_shown(argv: tuple[str, ...] | list[str], extra: list[str], env: dict[str, str]) -> None:
    command = [sys.executable, *argv[1:], *extra]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{proc.stderr[-4000:]}"
