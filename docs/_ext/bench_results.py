"""Include the benchmark tables (``benchmarks/results/*.md``) as printed.

Usage::

    .. benchmark-results::

       grassmann  The Grassmann core against geomstats, pymanopt and scipy

Each content line is a results file stem and a title.  A file that exists is
parsed with MyST and placed under its title, so the page always shows the
figures of the latest ``make bench``; one that does not exist yet gets a note
saying which command produces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id


class BenchmarkResults(SphinxDirective):
    has_content = True
    option_spec: ClassVar[dict[str, Any]] = {"dir": str}

    def run(self) -> list[nodes.Node]:
        src_dir = Path(self.env.srcdir)
        results = (src_dir / self.options.get("dir", "../benchmarks/results")).resolve()
        out: list[nodes.Node] = []
        for line in self.content:
            if not line.strip():
                continue
            stem, _, title = line.strip().partition(" ")
            title = title.strip() or stem
            path = results / f"{stem}.md"
            section = nodes.section(ids=[make_id(self.env, self.state.document, "bench", stem)])
            section += nodes.title(text=title)
            if path.is_file():
                self.env.note_dependency(str(path))
                section += self._parse_markdown(path)
            else:
                note = nodes.note()
                para = nodes.paragraph()
                para += nodes.literal(text=f"benchmarks/results/{stem}.md")
                para += nodes.Text(" has not been produced yet; run ")
                para += nodes.literal(text="make bench")
                para += nodes.Text(" (or ")
                para += nodes.literal(text=f"python benchmarks/run.py {stem}")
                para += nodes.Text(").")
                note += para
                section += note
            out.append(section)
        return out

    def _parse_markdown(self, path: Path) -> list[nodes.Node]:
        from docutils.utils import new_document
        from myst_parser.parsers.sphinx_ import MystParser

        text = path.read_text(encoding="utf-8")
        settings = self.state.document.settings
        doc = new_document(str(path), settings)
        MystParser().parse(text, doc)
        # Demote the file's own headings to rubrics: the page supplies the title.
        children: list[nodes.Node] = []

        def flatten(node: nodes.Node) -> None:
            for child in list(node.children):
                if isinstance(child, nodes.section):
                    title = child.next_node(nodes.title)
                    if title is not None:
                        children.append(nodes.rubric(text=title.astext()))
                    for sub in child.children:
                        if isinstance(sub, nodes.title):
                            continue
                        if isinstance(sub, nodes.section):
                            wrapper = nodes.container()
                            wrapper += sub
                            flatten(wrapper)
                        else:
                            children.append(sub)
                else:
                    children.append(child)

        flatten(doc)
        return children


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("myst_parser")
    app.add_directive("benchmark-results", BenchmarkResults)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
