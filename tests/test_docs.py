"""The documentation: executed tutorials that are not stale, a complete API reference, defined citations, and a
README quickstart that runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import pengster

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
DOCS = ROOT / "docs"
CITE = re.compile(r"(?::cite:[pt]:|\{cite:[pt]\})`([^`]+)`")


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_tutorials():
    assert [path.stem for path in TUTORIALS][:3] == ["01_snareseq2", "02_cite_seq", "03_mosaic"]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_is_executed_with_the_installed_version(path):
    """Tutorials are committed executed; re-run them (tutorials/execute.py) when the package version changes."""
    notebook = read_notebook(path)
    recorded = notebook["metadata"].get("pengster", {}).get("version")
    assert recorded == pengster.__version__, (
        f"{path.name} was executed with pengster {recorded}, the installed version is {pengster.__version__}; "
        f"re-run it: .venv/bin/python tutorials/execute.py {path.relative_to(ROOT)}"
    )
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells
    not_run = [i for i, cell in enumerate(code_cells) if cell["execution_count"] is None]
    assert not not_run, f"{path.name}: code cells {not_run} were not executed"
    assert [cell["execution_count"] for cell in code_cells] == list(range(1, len(code_cells) + 1)), (
        f"{path.name} was not executed top to bottom in one kernel"
    )
    outputs = [output for cell in code_cells for output in cell["outputs"]]
    errors = [output for output in outputs if output["output_type"] == "error"]
    assert not errors, f"{path.name} stored an error: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    printed = "".join(
        "".join(output.get("text", "")) for output in code_cells[0]["outputs"] if output["output_type"] == "stream"
    )
    assert f"pengster {pengster.__version__}" in printed, f"{path.name}: the first cell must print the version"
    threads = notebook["metadata"]["pengster"].get("torch_threads")
    assert f"torch threads: {threads}" in printed, f"{path.name}: executed with {threads} threads, it must say so"
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} stores no figure"


def test_every_tutorial_is_in_the_docs_and_every_docs_entry_exists():
    listed = re.findall(r"^tutorials/(\S+)$", (DOCS / "tutorials.md").read_text(), flags=re.MULTILINE)
    assert sorted(listed) == [path.stem for path in TUTORIALS]


def test_api_reference_lists_every_public_name():
    api = (DOCS / "api.md").read_text()
    missing = [
        f"{subpackage}.{name}"
        for subpackage in pengster.__all__
        if subpackage != "__version__"
        for name in getattr(pengster, subpackage).__all__
        if not re.search(rf"^\s+{subpackage}\.{name}$", api, flags=re.MULTILINE)
    ]
    assert not missing, f"docs/api.md lacks {missing}; add them to an autosummary list there"


def test_every_cited_key_is_in_the_bibliography():
    bib_keys = set(re.findall(r"^@\w+\{([^,]+),", (DOCS / "references.bib").read_text(), flags=re.MULTILINE))
    sources = [*ROOT.joinpath("src").rglob("*.py"), *DOCS.rglob("*.md"), *TUTORIALS]
    cited = {}
    for path in sources:
        if "_build" in path.parts or "generated" in path.parts:
            continue
        for group in CITE.findall(path.read_text()):
            for key in group.split(","):
                cited.setdefault(key.strip(), path.relative_to(ROOT))
    undefined = {key: str(path) for key, path in cited.items() if key not in bib_keys}
    assert not undefined, f"cited but not in docs/references.bib: {undefined}"
    user_guide = (DOCS / "user_guide" / "jointvae.md").read_text()
    for key in ["ashuach2023multivi", "gayoso2021totalvi", "ashuach2022peakvi", "wu2018mvae", "radford2021clip"]:
        assert key in CITE.findall(user_guide) or any(key in group for group in CITE.findall(user_guide)), key


def readme_quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_docs_front_page_includes_the_readme_quickstart():
    index = (DOCS / "index.md").read_text()
    include = re.search(r"```\{include\} \.\./README\.md\n:start-after: \"(.+)\"\n:end-before: \"(.+)\"", index)
    assert include, "docs/index.md must include the README quickstart"
    readme = (ROOT / "README.md").read_text()
    start, end = include.groups()
    assert start in readme and end in readme and readme.index(start) < readme.index(end)
    assert readme_quickstart() in readme[readme.index(start) : readme.index(end)]


def test_readme_quickstart_runs(data_dir, tmp_path, monkeypatch):
    """The quickstart as written, twice in a row, for 2 epochs (the suite tests accuracy elsewhere)."""
    import matplotlib

    matplotlib.use("Agg")
    code = readme_quickstart()
    assert code.count("model.train()") == 1, "the test shortens model.train()"
    code = code.replace("model.train()", "model.train(max_epochs=2, enable_progress_bar=False)")
    monkeypatch.chdir(tmp_path)
    # run twice in the same folder, as a user who runs the cell again: the second run must not lose its model
    for _ in range(2):
        namespace = {}
        exec(compile(code, "README.md quickstart", "exec"), namespace)
    mdata, multiome = namespace["mdata"], namespace["multiome"]
    assert mdata.obsm["X_pengster"].shape == (mdata.n_obs, 20)
    proteins = namespace["protein_of_multiome_cells"]
    assert proteins.shape == (multiome.n_obs, namespace["cite"].mod["prot"].n_vars)
    assert proteins.notna().all().all()
    assert {path.name for path in (tmp_path / "model_dir").iterdir()} == {
        "model.safetensors",
        "pengster.json",
        "adata.h5mu",
    }
    assert namespace["model"].is_trained


# the pages a user reads in the source tree; the site is checked from its HTML in tests/test_docs_html.py
LINKED_PAGES = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *sorted(DOCS.glob("*.md")),
    *sorted((DOCS / "user_guide").glob("*.md")),
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "benchmarks" / "results").glob("*.md")),
]
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_no_page_links_to_a_repository_that_does_not_exist():
    """pengster has no public repository yet: no page may send a reader to one (install, changelog, source)."""
    sources = [*LINKED_PAGES, DOCS / "conf.py", ROOT / "pyproject.toml", *TUTORIALS]
    offending = [str(path.relative_to(ROOT)) for path in sources if "github.com/pengster" in path.read_text().lower()]
    assert not offending, f"links to github.com/pengster, which does not exist: {offending}"


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_of_a_page_resolves_to_a_file(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    broken = []
    for target in MARKDOWN_LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_the_readme_installs_from_what_the_user_has():
    readme = (ROOT / "README.md").read_text()
    install = readme.split("## Installation", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^pip install (\S+)", install, flags=re.MULTILINE)
    assert commands[0].startswith("torch=="), "PyTorch first: a plain torch requirement pulls a CUDA build"
    assert {".", "dist/pengster-*.whl"} <= set(commands)
    assert "git+" not in install
