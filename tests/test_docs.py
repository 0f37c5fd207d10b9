"""The README and docs/: every example runs, every command and link holds.

* Every ```python block of README.md and docs/*.md is executed, except the
  few that need a dataset, a trained workdir or downloaded weights:
  `NOT_RUN` names each of them with its reason (they are still compiled).
* Every command of a ```bash block (lines joined over trailing
  backslashes) is checked: `python -m mclnet_jax.main` uses only flags
  that main.py defines (plus absl's logging flags), its `--config` recipe
  (a name such as `sysu:val=1`, or a path such as `configs/sysu.py:base`)
  loads, and every `--config.<path>=...` names a field of that recipe's
  config; any other `python -m MODULE` names a runnable module and
  `python FILE.py` an existing file.
* README.md stays short (`README_MAX_LINES`), and every relative link of
  the pages reaches an existing file and, with `#anchor`, one of its
  headings (GitHub's slugs).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
import pathlib
import re
import shlex
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README_MAX_LINES = 300

# (page, first line of the block) -> why the block is compiled, not run.
NOT_RUN = {
    ("docs/datasets.md", "from data_pipeline import datasets"): (
        "needs a SYSU-MM01 folder at /data/SYSU-MM01"
    ),
    ("docs/datasets.md", "from data_pipeline.regdb import regdb"): (
        "needs the SYSU-MM01 and RegDB folders"
    ),
    ("docs/datasets.md", "import tensorflow_datasets as tfds"): (
        "needs a SYSU-MM01 folder"
    ),
    ("docs/datasets.md", "import jax"): (
        "needs SYSU-MM01 records prepared under /data/tfds"
    ),
    ("docs/evaluation.md", "import functools"): (
        "needs SYSU-MM01 and a trained workdir"
    ),
    ("docs/checkpoints.md", "# pip install torch torchvision safetensors"): (
        "downloads torchvision's ImageNet weights"
    ),
    ("docs/checkpoints.md", "from mclnet_jax.models import pretrained"): (
        "a fragment: `variables` of a model and a weights file"
    ),
    ("docs/checkpoints.md", "from mclnet_jax.models import release"): (
        "a fragment: `variables` of a model and converted release files"
    ),
    ("docs/export.md", "from mclnet_jax import embed"): (
        "needs a trained workdir and image files"
    ),
    ("docs/export.md", "import jax, numpy as np"): (
        "a fragment: an exported workdir and `images`, `rows`"
    ),
    ("docs/design.md", "import jax, jax.numpy as jnp"): (
        "a full-size ResNet-50 forward (30 s here); tests/test_models.py "
        "checks that model's parameters and outputs"
    ),
}
# The section that shows the losses as a library; its example must run.
LOSSES_EXAMPLE = ("docs/design.md", "Using the losses in your own model")

MAIN_MODULE = "mclnet_jax.main"
# Flags main.py accepts besides its own: absl's logging flags (--log_dir).
OTHER_FLAG_MODULES = ("absl.logging",)


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # Relative to ROOT, e.g. "docs/training.md".
    line: int  # 1-based line of the opening fence.
    lang: str
    text: str
    section: str  # The heading above the block.

    @property
    def first_line(self) -> str:
        return next((s for s in self.text.splitlines() if s.strip()), "")


def pages() -> list[str]:
    docs = sorted(
        p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md")
    )
    return ["README.md", *docs]


def _read(page: str) -> str:
    return (ROOT / page).read_text(encoding="utf-8")


def _outside_fences(text: str):
    """(line number, line) of the lines outside ``` fences."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence:
            yield number, line


def blocks(page: str) -> list[Block]:
    out, lang, start, body, section = [], None, 0, [], ""
    for number, line in enumerate(_read(page).splitlines(), 1):
        stripped = line.strip()
        if lang is None:
            if stripped.startswith("```"):
                lang, start, body = stripped[3:].strip(), number, []
            elif re.match(r"#{1,6}\s", line):
                section = line.lstrip("#").strip()
        elif stripped == "```":
            out.append(
                Block(page, start, lang, "\n".join(body) + "\n", section)
            )
            lang = None
        else:
            body.append(line)
    assert lang is None, f"{page}:{start}: unclosed code fence"
    return out


def all_blocks(lang: str) -> list[Block]:
    return [b for page in pages() for b in blocks(page) if b.lang == lang]


# ---------------------------------------------------------------------------
# Python examples.
# ---------------------------------------------------------------------------


def _python_params():
    params = []
    for block in all_blocks("python"):
        params.append(pytest.param(block, id=f"{block.page}:{block.line}"))
    return params


@pytest.mark.parametrize("block", _python_params())
def test_python_example(block):
    code = compile(block.text, f"{block.page}:{block.line}", "exec")
    reason = NOT_RUN.get((block.page, block.first_line))
    if reason is not None:
        pytest.skip(f"compiled only: {reason}")
    xla_flags = os.environ.get("XLA_FLAGS")
    try:
        exec(code, {"__name__": "docs_example"})
    finally:  # An example may apply the XLA:CPU defaults.
        if xla_flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = xla_flags


def test_not_run_list_names_existing_blocks():
    keys = {(b.page, b.first_line) for b in all_blocks("python")}
    stale = sorted(set(NOT_RUN) - keys)
    assert not stale, f"no such ```python block (page, first line): {stale}"


def test_losses_example_is_kept_and_run():
    page, heading = LOSSES_EXAMPLE
    found = [
        b for b in blocks(page) if b.lang == "python" and b.section == heading
    ]
    assert found, (
        f'{page} needs a section "{heading}" with a ```python example; '
        "test_python_example runs it."
    )
    assert (page, found[0].first_line) not in NOT_RUN


# ---------------------------------------------------------------------------
# Shell commands.
# ---------------------------------------------------------------------------


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines joined over trailing backslashes and open quotes."""
    out, pending, start = [], "", 0
    for offset, line in enumerate(text.splitlines()):
        if not pending:
            start = offset
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # An open quote: the command goes on.
            pending += "\n"
            continue
        out.append((start, pending))
        pending = ""
    assert not pending, f"unterminated command: {pending!r}"
    return out


def _tokens(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _simple_commands(command: str) -> list[list[str]]:
    """The commands of a line, split at ;, &&, ||, | and &."""
    out, current = [], []
    for token in _tokens(command):
        if token and set(token) <= set(";&|"):
            out.append(current)
            current = []
        else:
            current.append(token)
    out.append(current)
    found = []
    for words in out:
        # Leading environment assignments (XLA_FLAGS=... python ...).
        while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words:
            found.append(words)
        # A command inside an argument: ssh --command="cd x && python ...".
        for word in words[1:]:
            inner = word.partition("=")[2] if word.startswith("--") else word
            if re.search(r"(^|\s)python3?\s", inner):
                found.extend(_simple_commands(inner))
    return found


@dataclasses.dataclass(frozen=True)
class Command:
    page: str
    line: int
    words: tuple[str, ...]

    def __str__(self):
        return shlex.join(self.words)


def all_commands() -> list[Command]:
    out = []
    for block in all_blocks("bash"):
        for offset, line in _logical_lines(block.text):
            for words in _simple_commands(line):
                out.append(
                    Command(block.page, block.line + 1 + offset, tuple(words))
                )
    return out


def _python_commands(kind: str):
    params = []
    for command in all_commands():
        words = command.words
        if words[0] not in ("python", "python3") or len(words) < 2:
            continue
        if words[1] == "-c":
            continue
        is_main = words[1:3] == ("-m", MAIN_MODULE)
        if (kind == "main") == is_main:
            params.append(
                pytest.param(command, id=f"{command.page}:{command.line}")
            )
    return params


@functools.cache
def main_flag_names() -> frozenset[str]:
    from absl import flags

    importlib.import_module(MAIN_MODULE)
    by_module = flags.FLAGS.flags_by_module_dict()
    names = set()
    for module in (MAIN_MODULE, *OTHER_FLAG_MODULES):
        for flag in by_module.get(module, ()):
            names.add(flag.name)
            if flag.short_name:
                names.add(flag.short_name)
    return frozenset(names)


def recipe_path(recipe: str) -> pathlib.Path:
    """configs/<name>.py for a name, ROOT/<path> for a path.

    As main.py tells them apart: a path contains "/" or ends in ".py".
    """
    if "/" in recipe or recipe.endswith(".py"):
        path = pathlib.Path(recipe)
        return path if path.is_absolute() else ROOT / path
    return ROOT / "configs" / f"{recipe}.py"


@functools.cache
def load_config(spec: str):
    """The config of `--config=SPEC`: RECIPE or RECIPE:ARG."""
    recipe, _, arg = spec.partition(":")
    path = recipe_path(recipe)
    assert path.is_file(), (
        f"--config={spec}: no recipe {path.relative_to(ROOT)} "
        "(a name is a file of configs/, a path is relative to the "
        "repository root)"
    )
    name = f"_docs_recipe_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module.get_config(arg or None)


def _has_field(config, dotted: str) -> bool:
    import ml_collections

    node = config
    for key in dotted.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            return False
        if key not in node:
            return False
        node = node[key]
    return True


def _main_arguments(command: Command) -> list[tuple[str, str | None]]:
    out = []
    for word in command.words[3:]:
        assert word.startswith("--"), (
            f"{command.page}:{command.line}: {word!r} is not a --flag in "
            f"`{command}` (write optional flags as their own command)"
        )
        name, eq, value = word[2:].partition("=")
        out.append((name, value if eq else None))
    return out


@pytest.mark.parametrize("command", _python_commands("main"))
def test_main_command(command):
    from absl import flags

    where = f"{command.page}:{command.line}: `{command}`"
    arguments = _main_arguments(command)
    known = main_flag_names()
    spec = "synthetic"  # main.py's default recipe.
    overrides = []
    for name, value in arguments:
        if name.startswith("config."):
            overrides.append(name[len("config.") :])
            assert value is not None, f"{where}: --{name} needs =VALUE"
            continue
        assert name in known, (
            f"{where}: main.py has no flag --{name}; it has "
            f"{sorted(known)} and --config.<field>=<value>"
        )
        if name == "config":
            spec = value
        elif value is not None:
            flag = flags.FLAGS[name]
            if flag.parser is not None:
                flag.parser.parse(value)  # Raises for an unknown value.
    config = load_config(spec)
    for path in overrides:
        assert _has_field(config, path), (
            f"{where}: --config={spec} has no field config.{path}"
        )


@pytest.mark.parametrize("command", _python_commands("other"))
def test_other_python_command(command):
    words = command.words
    where = f"{command.page}:{command.line}: `{command}`"
    if words[1] == "-m":
        module = words[2]
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{where}: no module {module}"
        if spec.submodule_search_locations is not None:  # A package.
            main = importlib.util.find_spec(f"{module}.__main__")
            assert main is not None, f"{where}: {module} has no __main__"
    else:
        script = words[1]
        assert (ROOT / script).is_file(), f"{where}: no file {script}"


def test_console_scripts_are_declared():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11.
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"].get("scripts", {})
    for command in all_commands():
        name = command.words[0]
        if name.startswith("mclnet-"):
            assert name in scripts, (
                f"{command.page}:{command.line}: {name} is not a console "
                f"script of pyproject.toml ({sorted(scripts)})"
            )


def test_the_recipes_of_the_docs_exist():
    # The names the docs use, resolved as main.py resolves them.
    for name in ("synthetic", "sysu", "regdb"):
        assert recipe_path(name).is_file(), name


# ---------------------------------------------------------------------------
# Size and links.
# ---------------------------------------------------------------------------


def test_readme_is_short():
    lines = len(_read("README.md").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it to {README_MAX_LINES} and "
        "move the details into docs/"
    )


def github_slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # Links.
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _outside_fences(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def links(page: str) -> list[tuple[int, str]]:
    out = []
    for number, line in _outside_fences(_read(page)):
        line = re.sub(r"`[^`]*`", "``", line)  # Inline code.
        for match in _LINK.finditer(line):
            out.append((number, match.group(1)))
    return out


@pytest.mark.parametrize("page", pages())
def test_relative_links_resolve(page):
    broken = []
    for number, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (ROOT / page).parent / path_part if path_part else ROOT / page
        if not path.exists():
            broken.append(f"{page}:{number}: {target}: no such file")
            continue
        if anchor:
            if path.suffix != ".md":
                broken.append(f"{page}:{number}: {target}: not a page")
            elif anchor not in anchors(path):
                broken.append(
                    f"{page}:{number}: {target}: no heading #{anchor} in "
                    f"{path.relative_to(ROOT)}"
                )
    assert not broken, "\n".join(broken)


def test_docs_pages_are_linked_from_the_readme():
    linked = {t.partition("#")[0] for _, t in links("README.md")}
    missing = [p for p in pages()[1:] if p not in linked]
    assert not missing, f"README.md does not link {missing}"
