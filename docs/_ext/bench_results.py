"""Include the benchmark tables (``benchmarks/results/*.md``) as printed.

Usage::

    .. benchmark-results::

       grassmann  The Grassmann core against geomstats, pymanopt and scipy

Each content line is a results file stem and a title.  A file that exists is
parsed with MyST and placed under its title, so the page always shows the
figures of the latest ``make bench``; one that does not exist yet gets a note
saying which command produces it.  Results files that the list does not name
follow, titled by their file name.
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
        entries = []
        for line in self.content:
            if line.strip():
                stem, _, title = line.strip().partition(" ")
                entries.append((stem, title.strip() or stem))
        # results files the page does not list yet are shown too, after the others
        listed = {stem for stem, _ in entries}
        if results.is_dir():
            extra = sorted(p.stem for p in results.glob("*.md"))
            entries += [(stem, stem) for stem in extra if stem not in listed]
        for stem, title in entries:
            path = results / f"{stem}.md"
            section = nodes.section(ids=[make_id(self.env, self.state.document, "bench", stem)])
            section += nodes.title(text=title)
            # a dependency also when missing: Sphinx re-reads this page on every
            # build until the file exists, then whenever it changes
            self.env.note_dependency(str(path))
            if path.is_file():
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
        # Demote the file's own headings to rubrics; the file's top heading is
        # dropped, since the page supplies the section title.
        children: list[nodes.Node] = []

        def flatten(node: nodes.Node, depth: int) -> None:
            for child in list(node.children):
                if isinstance(child, nodes.section):
                    title = child.next_node(nodes.title)
                    if title is not None and depth > 0:
                        children.append(nodes.rubric(text=title.astext()))
                    for sub in child.children:
                        if isinstance(sub, nodes.title):
                            continue
                        if isinstance(sub, nodes.section):
                            wrapper = nodes.container()
                            wrapper += sub
                            flatten(wrapper, depth + 1)
                        else:
                            children.append(sub)
                else:
                    children.append(child)

        flatten(doc, 0)
        return children


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("myst_parser")
    app.add_directive("benchmark-results", BenchmarkResults)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
