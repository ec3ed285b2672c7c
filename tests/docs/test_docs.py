"""The documentation is tested: every Python example of the README and of docs/ runs (a page's examples in order,
in one namespace, in a temporary directory), the site builds with ``mkdocs build --strict`` (broken links and
references fail it), and every public name has a docstring and a place in the API reference.

An example may show sizes too big for a test: an HTML comment on the line above its fence,
``<!-- docs-test: 4096->256 16384->512 -->``, names the replacements the test makes (text, left to right)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import yoso_attention
import yoso_attention.ops
import yoso_attention.onnx_export

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(?:<!-- docs-test: (?P<subs>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)
SUBSTITUTION = re.compile(r"(\S+)->(\S+)")


def python_examples(page: Path) -> list[str]:
    examples = []
    for match in BLOCK.finditer(page.read_text()):
        code = match["code"]
        for old, new in SUBSTITUTION.findall(match["subs"] or ""):
            assert old in code, f"{page.name}: docs-test replacement {old!r} not in its example"
            code = code.replace(old, new)
        examples.append(code)
    return examples


PAGES_WITH_EXAMPLES = [p for p in PAGES if python_examples(p)]


def test_the_readme_and_the_docs_have_examples():
    assert {p.name for p in PAGES_WITH_EXAMPLES} >= {"README.md", "getting-started.md"}


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for i, code in enumerate(python_examples(page)):
        exec(compile(code, f"{page.name}[example {i + 1}]", "exec"), namespace)


def public_names():
    yield from (f"yoso_attention.{n}" for n in yoso_attention.__all__ if n not in yoso_attention.ops.__all__
                and not n.startswith("_"))  # the ops are documented under yoso_attention.ops
    yield from (f"yoso_attention.ops.{n}" for n in yoso_attention.ops.__all__)
    yield "yoso_attention.onnx_export.onnx_translations"


def test_every_public_name_has_a_docstring_and_an_api_entry():
    api = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    for name in public_names():
        module, attr = name.rsplit(".", 1)
        assert (getattr(sys.modules[module], attr).__doc__ or "").strip(), f"{name} has no docstring"
        assert f"::: {name}\n" in api, f"{name} is missing from docs/api"


def test_the_readmes_links_point_at_files_of_the_repository():
    for page in (ROOT / "README.md", ROOT / "DEVELOPERS.md"):
        links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text())
        local = [link for link in links if "://" not in link]
        assert local, page.name
        for link in local:
            assert (ROOT / link).exists(), f"{page.name} links to {link}, which does not exist"


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "api" / "ops" / "index.html").is_file()
