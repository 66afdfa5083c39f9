"""The README's figures name the command that reproduces them, and the commands it names exist."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"\d+\.\d+|\d+/\d+|\b\d{2,}\b")
COMMAND = re.compile(r"`[^`]*\bpython3? [^`]+`")


def _blocks(lines):
    """(kind, start line, lines) for each table, code block and paragraph of the README, in order."""
    blocks, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            blocks.append(("code", i, lines[i + 1:j]))
            i = j + 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(("table", i, lines[i:j]))
            i = j
        elif line.strip():
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("|", "```")):
                j += 1
            blocks.append(("text", i, lines[i:j]))
            i = j
        else:
            i += 1
    return blocks


def _names_a_command(block):
    kind, _, lines = block
    text = "\n".join(lines)
    return bool(re.search(r"^\s*python3? ", text, re.M)) if kind == "code" else bool(COMMAND.search(text))


def _cells(row):
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_every_table_of_figures_names_its_command():
    blocks = _blocks((ROOT / "README.md").read_text().splitlines())
    for k, (kind, start, lines) in enumerate(blocks):
        if kind != "table":
            continue
        head, rows = _cells(lines[0]), lines[2:]
        with_figures = [r for r in rows if FIGURE.search(r)]
        if not with_figures:
            continue
        if "command" in head:  # each row names its own command, or repeats the one above it
            col = head.index("command")
            for r in with_figures:
                cell = _cells(r)[col]
                assert COMMAND.search(cell) or cell.startswith("the same"), f"README line {start + 1}: {r}"
        else:  # the command comes just before the table: a code block, or a paragraph that names it
            assert k > 0 and _names_a_command(blocks[k - 1]), (
                f"the table at README line {start + 1} has figures but the block before it names no command"
            )


def test_headline_paragraphs_with_measured_figures_name_their_command():
    """A paragraph that reports a measurement (accuracy, seconds, images/s) names the command that made it."""
    for kind, start, lines in _blocks((ROOT / "README.md").read_text().splitlines()):
        text = " ".join(lines)
        if kind == "text" and re.search(r"\b(measured|scored|scores|gave)\b", text) and FIGURE.search(text):
            assert COMMAND.search(text), f"the paragraph at README line {start + 1} gives figures but no command"


def test_every_script_the_readme_runs_exists():
    text = (ROOT / "README.md").read_text()
    scripts = set(re.findall(r"\bpython3? ((?:[\w-]+/)*[\w-]+\.py)\b", text))
    assert {"train.py", "driver.py", "bench/experiments/baselines.py", "bench/experiments/seeds.py"} <= scripts
    missing = sorted(s for s in scripts if not (ROOT / s).is_file())
    assert not missing, f"the README runs scripts that are not in the repository: {missing}"


def test_every_package_command_the_readme_runs_exists():
    """`python -m perceiver.NAME` in the README names a module of the package that has a command line."""
    text = (ROOT / "README.md").read_text()
    names = set(re.findall(r"\bpython3? -m perceiver\.(\w+)", text))
    assert {"calibration", "htmlreport", "plots"} <= names
    for name in names:
        source = ROOT / "perceiver" / f"{name}.py"
        assert source.is_file() and 'if __name__ == "__main__":' in source.read_text(), name


def test_nothing_in_the_package_imports_a_top_level_file():
    """The package stands alone: the seed's files on top (train.py, driver.py and the front doors) import it, never
    the other way round."""
    top = {p.stem for p in ROOT.glob("*.py")}
    pattern = re.compile(r"^\s*(?:import|from)\s+(\w+)", re.M)
    for source in (ROOT / "perceiver").glob("*.py"):
        imported = set(pattern.findall(source.read_text())) & top
        assert not imported, f"{source.name} imports the top-level {sorted(imported)}"
