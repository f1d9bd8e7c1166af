"""The examples of the README and of the documentation pages (docs/*.md) run as written, and
run again.

Every ```python block of README.md runs, in order, in one interpreter per ``##`` section (of a
docs page: one interpreter per page, its ``# `` title, so a page is a README section); every
```console block's ``$ `` lines run through bash (one shell per command, ``fashionrec`` on PATH;
a line continued with a trailing backslash is one command), interleaved with the python blocks in
README order. Each section runs twice in the same
directory: a snippet that works only once (``Catalog.create`` on an existing catalog) fails.
A command must exit 0 unless its line ends with ``# exit N``. ```bash blocks (installing,
exporting with TensorFlow, servers) are shown, not run.

A block preceded by ``<!-- readme-test: skip (REASON) -->`` is not run. Each section starts in a
fresh directory holding:

- ``model.onnx``: the small test model (64 px, random weights);
- ``images/``: PNG photos of Fashion-MNIST in ``dress/``, ``shirt/``, ``bag/``, ``sneaker/``,
  ``coat/``, ``trouser/`` (keys like ``dress/test-00013.png``), with ``images/labels.csv``
  (``key,category``);
- ``photo.jpg``: a query photo, 800 x 1000 px.

A failure names the file, the section, the block's line and the run (first or second).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from fashionrec_onnx.quality.datasets import SAMPLE_DIR

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^\s{0,3}(```+)\s*([\w+-]*)[^`]*$")  # CommonMark: no backtick in the info string
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+)\)\s*-->")
EXPECTED_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
CATEGORIES = ("dress", "shirt", "bag", "sneaker", "coat", "trouser")
PER_CATEGORY = 6
PINNED = ("dress/test-00013.png", "trouser/test-00843.png")  # keys the README names
TIMEOUT = 300


@dataclass
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None = None


@dataclass
class Section:
    title: str
    line: int
    blocks: list[Block] = field(default_factory=list)
    file: str = "README.md"

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.language in ("python", "console") and b.skip is None]


def sections(text: str, heading: str = "## ", file: str = "README.md") -> list[Section]:
    """The text cut at its ``heading`` lines (outside fences), each part with its fenced blocks."""
    found = [Section("(before the first section)", 1, file=file)]
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        if line.startswith(heading):
            found.append(Section(line[len(heading) :].strip(), number + 1, file=file))
        elif fence := FENCE.match(line):
            language, start = fence.group(2).lower(), number
            closing = re.compile(rf"^\s{{0,3}}{fence.group(1)}`*\s*$")
            body = []
            number += 1
            while number < len(lines) and not closing.match(lines[number]):
                body.append(lines[number])
                number += 1
            before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
            skip = SKIP.search(before)
            found[-1].blocks.append(Block(language, start + 1, "\n".join(body), skip and skip.group(1)))
        number += 1
    return [s for s in found if s.blocks]


def commands(block: Block) -> list[tuple[int, str, int]]:
    """``(README line, command, expected exit code)`` for each ``$ `` line of a console block."""
    found: list[tuple[int, str, int]] = []
    lines = block.code.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("$ "):
            start, command = block.line + 1 + index, line[2:]
            while command.endswith("\\") and index + 1 < len(lines):
                index += 1
                command = command[:-1].rstrip() + " " + lines[index].strip()
            expected = EXPECTED_EXIT.search(command)
            found.append((start, command, int(expected.group(1)) if expected else 0))
        index += 1
    return found


ALL_SECTIONS = sections(README.read_text(encoding="utf-8")) + [
    section
    for page in DOCS
    for section in sections(page.read_text(encoding="utf-8"), "# ", f"docs/{page.name}")
]
RUNNABLE = [s for s in ALL_SECTIONS if s.runnable]

# One interpreter per section runs its steps in README order: python blocks in a shared namespace,
# console commands through bash. It stops at the first failure and says where it was.
RUNNER = r"""
import json, subprocess, sys, traceback
steps = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for step in steps:
    if step["language"] == "python":
        try:
            exec(compile("\n" * (step["line"]) + step["code"], step["file"], "exec"), namespace)
        except BaseException:
            print(f"python block at {step['file']} line {step['line']} failed:", file=sys.stderr)
            traceback.print_exc()
            sys.exit(1)
        continue
    for line, command, expected in step["commands"]:
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
        if result.returncode != expected:
            print(
                f"console block at {step['file']} line {step['line']}: `{command}` (line {line}) exited "
                f"{result.returncode}, expected {expected}\nstdout:\n{result.stdout[-2000:]}\n"
                f"stderr:\n{result.stderr[-2000:]}",
                file=sys.stderr,
            )
            sys.exit(1)
"""


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Path:
    """What every section starts with (copied into its own directory)."""
    root = tmp_path_factory.mktemp("readme-fixtures")
    labels = {row["key"]: row["category"] for row in csv.DictReader((SAMPLE_DIR / "labels.csv").open())}
    chosen = list(PINNED)
    for category in CATEGORIES:
        photos = sorted((SAMPLE_DIR / category).glob("*.png"))[:PER_CATEGORY]
        chosen += [f"{category}/{photo.name}" for photo in photos]
    chosen = list(dict.fromkeys(chosen))
    for key in chosen:
        (root / "images" / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLE_DIR / key, root / "images" / key)
    with (root / "images" / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "category"])
        writer.writerows([key, labels[key]] for key in chosen)
    query = Image.open(SAMPLE_DIR / "dress" / sorted(os.listdir(SAMPLE_DIR / "dress"))[-1]).convert("RGB")
    query.resize((800, 1000), Image.Resampling.BICUBIC).save(root / "photo.jpg", quality=90)
    (root / "model.onnx").symlink_to(small_model.resolve())
    return root


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def run_section(section: Section, folder: Path, attempt: str) -> None:
    steps = [
        {"language": b.language, "line": b.line, "code": b.code, "commands": commands(b)}
        | {"file": section.file}
        for b in section.runnable
    ]
    (folder / ".readme-steps.json").write_text(json.dumps(steps))
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder / ".readme-steps.json")],
        cwd=folder, env=environment(), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(
            f"{section.file} section {section.title!r} (line {section.line}), {attempt} run: "
            f"{result.stderr[-5000:]}",
            pytrace=False,
        )


@pytest.mark.parametrize("section", RUNNABLE, ids=[f"{s.file}: {s.title}" for s in RUNNABLE])
def test_the_readme_section_runs_as_written_twice(section: Section, fixtures: Path, tmp_path: Path) -> None:
    folder = tmp_path / "work"
    shutil.copytree(fixtures, folder, symlinks=True)
    for attempt in ("first", "second"):
        run_section(section, folder, attempt)


def test_a_snippet_that_works_only_once_fails_on_the_second_run(fixtures: Path, tmp_path: Path) -> None:
    shutil.copytree(fixtures, tmp_path / "work", symlinks=True)
    once = Section(
        "Once",
        7,
        [Block("python", 9, 'from fashionrec_onnx import Catalog\nCatalog.create("c", "model.onnx")')],
    )
    run_section(once, tmp_path / "work", "first")
    with pytest.raises(
        pytest.fail.Exception,
        match=r"(?s)README.md section 'Once' \(line 7\), second run: .*line 11.*already exists",
    ):
        run_section(once, tmp_path / "work", "second")


def test_the_readme_has_runnable_examples() -> None:
    assert sum(len(s.runnable) for s in ALL_SECTIONS if s.file == "README.md") >= 2


def test_the_docs_pages_have_runnable_examples() -> None:
    """The pages the README's sections moved to keep their examples, and they run too."""
    pages = {s.file for s in RUNNABLE if s.file.startswith("docs/")}
    assert {"docs/catalogs.md", "docs/products.md", "docs/feed-sync.md", "docs/service.md"} <= pages


def test_a_docs_page_is_one_section_however_many_subheadings_it_has() -> None:
    text = "# Page\n\n```python\nx = 1\n```\n\n## Sub\n\n```python\ny = x\n```\n"
    (page,) = sections(text, "# ", "docs/page.md")
    assert page.title == "Page" and page.file == "docs/page.md" and len(page.runnable) == 2


def test_the_block_parser_finds_lines_skips_and_continued_commands() -> None:
    text = (
        "## One\n\n<!-- readme-test: skip (needs internet) -->\n```python\nx = 1\n```\n\n"
        "```console\n$ fashionrec index images \\\n    --catalog c   # exit 1\nprinted output\n```\n"
        "```` ```python ```` inline code is no fence\n"
    )
    (one,) = sections(text)
    assert one.title == "One" and [b.line for b in one.blocks] == [4, 8]
    assert one.blocks[0].skip == "needs internet" and one.runnable == [one.blocks[1]]
    assert commands(one.blocks[1]) == [(9, "fashionrec index images --catalog c   # exit 1", 1)]


def test_the_readme_fits_a_few_screens_and_its_links_lead_somewhere() -> None:
    """The reference lives in docs/ (checked by `mkdocs build --strict`); the README stays short."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local and [t for t in local if not (ROOT / t).exists()] == []


@pytest.mark.parametrize("page, title", [("README.md", "From Python"), ("docs/getting-started.md", None)])
def test_the_docs_say_how_to_get_the_files_their_examples_use(page: str, title: str, tmp_path: Path) -> None:
    """A newcomer has no `images/` nor `photo.jpg`: the copy commands of the README and of the
    first docs page (run here from a clone's layout) make the ones the examples read."""
    (section,) = [s for s in ALL_SECTIONS if s.file == page and title in (None, s.title)]
    shown = "\n".join(block.code for block in section.blocks if block.language == "bash")
    copies = [line.split("#")[0] for line in shown.splitlines() if line.startswith("cp ")]
    assert len(copies) == 2
    (tmp_path / "fashionrec_onnx").symlink_to(ROOT / "fashionrec_onnx")
    subprocess.run(["bash", "-c", " && ".join(copies)], cwd=tmp_path, check=True)
    assert (tmp_path / "images" / "labels.csv").is_file() and not (tmp_path / "images").is_symlink()
    assert len(list((tmp_path / "images").glob("*/*.png"))) == 1000
    with Image.open(tmp_path / "photo.jpg") as photo:
        assert photo.size[0] > 0


def test_every_picture_of_a_page_is_found_from_that_page() -> None:
    """On GitHub and in the built site alike: MkDocs rewrites Markdown images for the site's page
    URLs (checked by --strict), not a raw `<img src>` (`docs/demo-phone.png` showed nowhere)."""
    missing = []
    for page in [README, *DOCS]:
        text = page.read_text(encoding="utf-8")
        sources = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
        assert sources or page != README
        missing += [f"{page.name}: {s}" for s in sources if not (page.parent / s).exists() and "://" not in s]
        missing += [f"{page.name}: raw {tag}" for tag in re.findall(r"<img\s[^>]*>", text)]
    assert missing == []


# A catalog a docs example names: `--catalog NAME` (and `--catalog-out`), `Catalog.*("NAME"`.
CATALOG_NAME = re.compile(r"--catalog(?:-out)?[ =]([^\s\"'`]+)|Catalog\.\w+\(\s*\"([^\"]+)\"")


def catalog_names(section: Section) -> set[str]:
    code = "\n".join(b.code for b in section.blocks if b.language in ("python", "console", "bash"))
    return {a or b for a, b in CATALOG_NAME.findall(code) if "://" not in (a or b) and "$" not in (a or b)}


def test_each_docs_page_builds_its_own_catalogs() -> None:
    """A reader following the pages in order in one folder never finds an earlier page's items in
    a later page's catalog, nor a clash of settings. The README's examples are the first ones of
    docs/catalogs.md (same images, model and metadata), so those two share `catalog`."""
    owners: dict[str, set[str]] = {}
    for section in ALL_SECTIONS:
        page = "docs/catalogs.md" if section.file == "README.md" else section.file
        for name in catalog_names(section):
            owners.setdefault(name, set()).add(page)
    assert {name: pages for name, pages in owners.items() if len(pages) > 1} == {}


def test_catalog_names_are_found_in_commands_and_python() -> None:
    blocks = [
        Block("console", 2, "$ fashionrec index images --catalog shop -k 3"),
        Block("python", 5, 'Catalog.open_or_create("big", "model.onnx")'),
        Block("console", 8, "$ fashionrec serve --catalog milvus://h:1/c"),
    ]
    section = Section("S", 1, blocks)
    assert catalog_names(section) == {"shop", "big"}
