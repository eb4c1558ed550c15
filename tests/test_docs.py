"""docs/how-it-works.md stays true to the code: every `path.py: name` reference names a real
function or class in that file, every step links code and gives a measured figure with the
command that reproduces it, and every such command names a step the script has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "how-it-works.md"
REF = re.compile(r"`([\w./-]+\.py): ([\w.]+)`")  # `pipeline/nn/layers.py: dense_backward`
SCRIPT = re.compile(r"python scripts/how_it_works\.py (\w+)")


def defined_names(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and Class.method for their methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{n.name}" for n in node.body
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def references(text: str) -> list[tuple[str, str]]:
    return REF.findall(text)


def unresolved(text: str, root: Path = REPO) -> list[str]:
    bad = []
    for path, name in references(text):
        file = root / path
        if not file.is_file():
            bad.append(f"{path}: {name} (no such file)")
        elif name not in defined_names(file):
            bad.append(f"{path}: {name} (no such function or class)")
    return bad


def sections(text: str) -> dict[str, str]:
    """'## heading' -> its text, for the numbered steps ('## 3. ...')."""
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0]: p for p in parts if re.match(r"\d+\.", p)}


def test_every_code_reference_resolves():
    # each `file.py: name` in the doc is a function or class defined in that file
    text = DOC.read_text(encoding="utf-8")
    assert len(references(text)) >= 25
    assert unresolved(text) == []


def test_every_code_reference_links_to_its_file():
    # each reference is a link a reader can follow on GitHub, to the file it names
    text = DOC.read_text(encoding="utf-8")
    links = re.findall(r"\[`([\w./-]+\.py): [\w.]+`\]\(\.\./([\w./-]+)\)", text)
    assert len(links) == len(references(text))
    assert all(path == target for path, target in links)


def test_the_checker_catches_a_stale_reference(tmp_path):
    # a renamed function, a missing file and a method that is not there are all reported
    (tmp_path / "m.py").write_text("def f():\n    pass\n\nclass C:\n    def g(self):\n"
                                   "        pass\n")
    text = "`m.py: f` `m.py: C.g` `m.py: gone` `n.py: f` `m.py: C.h`"
    assert unresolved(text, tmp_path) == ["m.py: gone (no such function or class)",
                                          "n.py: f (no such file)",
                                          "m.py: C.h (no such function or class)"]


def test_every_step_has_math_code_and_a_measured_figure():
    # each numbered step shows equations, points at code, and states a measured figure with the
    # command that gives it and its date
    steps = sections(DOC.read_text(encoding="utf-8"))
    assert len(steps) >= 12
    for title, body in steps.items():
        assert "$" in body or "```math" in body, f"no equations in step {title!r}"
        assert references(body), f"no code reference in step {title!r}"
        command = re.search(r"`(python|\.venv/bin/python|digits|make) ", body)
        assert "**Measured" in body and command, f"no measured figure with its command in {title!r}"
        assert re.search(r"20\d\d-\d\d-\d\d", body), f"no date in step {title!r}"


def test_measurement_commands_name_real_steps():
    # every `python scripts/how_it_works.py STEP` in the doc is a step the script defines
    script = REPO / "scripts" / "how_it_works.py"
    steps = {n[5:] for n in defined_names(script) if n.startswith("step_")}
    used = set(SCRIPT.findall(DOC.read_text(encoding="utf-8")))
    assert used and used <= steps | {"all", "STEP"}, used - steps


@pytest.mark.parametrize("link", ["docs/how-it-works.md", "notebooks/learn.ipynb",
                                  "digits gradcheck"])
def test_readme_links_the_learning_material(link):
    # the README's "Learn how it works" section points at the doc, the notebook and the command
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## Learn how it works" in readme
    assert link in readme.split("## Learn how it works", 1)[1].split("\n## ", 1)[0]


def test_readme_layout_names_every_module():
    # the README's Layout section lists every module of the package and every script
    import re
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("## Tests")]
    named = set(re.findall(r"[\w]+\.py", layout))
    modules = {p.name for p in (REPO / "pipeline").rglob("*.py")} - {"__init__.py", "__main__.py"}
    scripts = {p.name for p in (REPO / "scripts").glob("*.py")}
    assert modules | scripts <= named, sorted((modules | scripts) - named)
