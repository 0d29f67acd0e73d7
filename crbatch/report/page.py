"""A small report writer: ``report.md`` plus a static ``index.html`` over the same PNG figures.

Every report a stage produces (data comparison, training analysis, ...) goes through
:class:`ReportPage`::

    with ReportPage(Path("reports/my_report"), "My report") as page:
        page.section("Inputs")
        page.table([{"name": "a", "jets": 10}])
        page.figure(fig, "jet_pt", caption="Jet pT")   # saved now, closed, memory freed

Figures are written as they come, into a temporary directory next to the final one; the markdown
and HTML are written at the end and the directory is renamed into place, so a killed job leaves
the previous report (or none), never half of one. The report directory belongs to the report:
rewriting it replaces everything in it.
"""

from __future__ import annotations

import contextlib
import html
import logging
import numbers
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import schema

log = logging.getLogger(__name__)

TMP_MARK = schema.TMP_MARK
OLD_MARK = ".crbatch-old"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
figure { display: inline-block; vertical-align: top; margin: .4em; max-width: 48%; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 85%; color: #555; }
nav ul { columns: 2; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def slug(text: str) -> str:
    """A file-name-safe stem: letters, digits, ``_``, ``-`` and ``.`` only."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return s or "figure"


def _inline_html(text: str) -> str:
    """Escape ``text`` for HTML, keeping the two inline markdown forms reports use: `code`, **bold**."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _md_cell(value: str) -> str:
    return value.replace("|", r"\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)  # numpy scalars are Numbers too


def format_value(value: Any, float_format: str = "{:.4g}") -> str:
    """Table cell text: floats with ``float_format``, ints with thousands separators, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Number) and hasattr(value, "item"):  # numpy scalar → Python
        value = value.item()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


@dataclass
class _Block:
    """One piece of the page, rendered both ways."""

    md: str
    html: str


@dataclass
class _Section:
    title: str
    anchor: str
    level: int
    children: list[_Section] = field(default_factory=list)


class ReportPage:
    """Collects sections, text, tables and figures; writes ``report.md`` and ``index.html`` atomically.

    Use as a context manager (written on success, discarded on an exception) or call
    :meth:`write` / :meth:`discard` yourself.
    """

    def __init__(self, out_dir: Path, title: str, dpi: int = 100, pdf: bool = False):
        self.out_dir = Path(out_dir)
        self.title = title
        self.dpi = dpi
        self.pdf = pdf  # also write each figure as vector PDF next to its PNG (for notes)
        self._blocks: list[_Block] = []
        self._toc: list[_Section] = []
        self._names: set[str] = {"report.md", "index.html"}  # file names taken in the report directory
        self._anchors: set[str] = set()
        self._done = False
        from ..outputs import check_output

        check_output(self.out_dir, "report")  # it replaces the directory as a whole: never someone else's
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.out_dir)
        tag = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.tmp_dir = self.out_dir.with_name(f".{self.out_dir.name}.{tag}{TMP_MARK}")
        try:
            self.tmp_dir.mkdir()
        except OSError as e:
            err = _write_error(self.out_dir, e)
            if err is e:
                raise
            raise err from e

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> ReportPage:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.write()
        else:
            self.discard()
            if isinstance(exc, (OSError, RuntimeError)):  # a figure that could not be saved: disk full, ...
                err = _write_error(self.out_dir, exc)
                if err is not exc:
                    raise err from exc

    # -- content ---------------------------------------------------------------------------------
    def section(self, title: str, level: int = 2) -> str:
        """Start a section (``level`` 2) or sub-section (3); returns its HTML anchor."""
        if level not in (2, 3, 4):
            raise ValueError("section level must be 2, 3 or 4 (1 is the page title)")
        anchor = self._unique(slug(title).lower(), self._anchors)
        sec = _Section(title, anchor, level)
        if level == 2 or not self._toc:
            self._toc.append(sec)
        elif level == 3:
            self._toc[-1].children.append(sec)
        hashes = "#" * level
        self._blocks.append(_Block(f"{hashes} {title}\n", f'<h{level} id="{anchor}">{html.escape(title)}</h{level}>'))
        return anchor

    def code(self, text: str, lang: str = "") -> None:
        """A preformatted block (config files, commands)."""
        self._blocks.append(
            _Block(f"```{lang}\n{text.rstrip()}\n```\n", f"<pre><code>{html.escape(text)}</code></pre>")
        )

    def text(self, text: str) -> None:
        """A paragraph. Markdown inline `code` and **bold** are kept in both outputs."""
        self._blocks.append(_Block(text.rstrip() + "\n", f"<p>{_inline_html(text)}</p>"))

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        md = "".join(f"- {i}\n" for i in items)
        li = "".join(f"<li>{_inline_html(i)}</li>" for i in items)
        self._blocks.append(_Block(md, f"<ul>{li}</ul>"))

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        caption: str | None = None,
        formats: Mapping[str, Callable[[Any], str]] | None = None,
        float_format: str = "{:.4g}",
    ) -> None:
        """A table from a list of dicts. ``columns`` fixes the order (default: first-seen order of keys);
        ``formats`` maps a column to a function giving its cell text. Numbers are right-aligned."""
        if columns is None:
            columns = list(dict.fromkeys(k for r in rows for k in r))
        formats = formats or {}
        if caption:
            self.text(caption)
        if not rows:
            self._blocks.append(_Block("(none)\n", "<p><i>(none)</i></p>"))
            return

        def cell(row: Mapping[str, Any], col: str) -> str:
            v = row.get(col)
            return formats[col](v) if col in formats else format_value(v, float_format)

        numeric = {
            c: any(_is_number(r.get(c)) for r in rows) and all(_is_number(r.get(c)) or r.get(c) is None for r in rows)
            for c in columns
        }
        md = ["| " + " | ".join(_md_cell(c) for c in columns) + " |"]
        md.append("|" + "|".join("---:" if numeric[c] else "---" for c in columns) + "|")
        for r in rows:
            md.append("| " + " | ".join(_md_cell(cell(r, c)) for c in columns) + " |")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for r in rows:
            tds = "".join(
                f'<td class="num">{html.escape(cell(r, c))}</td>'
                if numeric[c]
                else f"<td>{_inline_html(cell(r, c))}</td>"
                for c in columns
            )
            body.append(f"<tr>{tds}</tr>")
        self._blocks.append(
            _Block("\n".join(md) + "\n", f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        )

    def figure(self, fig: Any, name: str, caption: str = "", close: bool = True) -> str:
        """Save a matplotlib figure as ``<slug(name)>.png`` (``_2``, ``_3`` if taken) and place it here.

        The file name depends only on ``name``, so reruns produce the same names. The figure is
        closed afterwards (``close=False`` keeps it) so long reports do not pile up memory.
        Returns the file name, relative to the report directory.
        """
        stem = self._unique(slug(name), self._names)
        fname = stem + ".png"
        vector = None
        try:
            fig.savefig(self.tmp_dir / fname, dpi=self.dpi)
            if self.pdf:
                vector = stem + ".pdf"
                self._names.add(vector)
                fig.savefig(self.tmp_dir / vector)
        finally:
            if close:
                import matplotlib.pyplot as plt

                plt.close(fig)
        self._place(fname, caption, vector)
        return fname

    def image(self, path: Path, name: str | None = None, caption: str = "") -> str:
        """Copy an existing PNG into the report (for plots made elsewhere)."""
        fname = self._unique(slug(name or Path(path).stem), self._names) + ".png"
        shutil.copyfile(path, self.tmp_dir / fname)
        self._place(fname, caption)
        return fname

    def attach(self, name: str, content: str | bytes, text: str | None = None) -> str:
        """Write an extra file (CSV, JSON, ...) into the report directory and link it."""
        fname = slug(name)
        if fname in self._names:
            raise ValueError(f"report file name {fname!r} used twice")
        self._names.add(fname)
        if isinstance(content, bytes):
            (self.tmp_dir / fname).write_bytes(content)
        else:
            (self.tmp_dir / fname).write_text(content, encoding="utf-8")
        label = text or fname
        self._blocks.append(
            _Block(f"[{label}]({fname})\n", f'<p><a href="{html.escape(fname)}">{html.escape(label)}</a></p>')
        )
        return fname

    # -- output ----------------------------------------------------------------------------------
    def write(self) -> Path:
        """Write ``report.md`` and ``index.html`` and move the directory into place. Returns it."""
        if self._done:
            raise RuntimeError("report already written or discarded")
        try:
            (self.tmp_dir / "report.md").write_text(self.markdown(), encoding="utf-8")
            (self.tmp_dir / "index.html").write_text(self.html(), encoding="utf-8")
            _fsync_dir_files(self.tmp_dir)
            _swap_into_place(self.tmp_dir, self.out_dir)
        except BaseException as e:
            self.discard()
            err = _write_error(self.out_dir, e) if isinstance(e, OSError) else e
            if err is not e:
                raise err from e
            raise
        self._done = True
        log.info("wrote report %s (%d files)", self.out_dir / "report.md", sum(1 for _ in self.out_dir.iterdir()))
        return self.out_dir

    def discard(self) -> None:
        """Drop everything written so far; the previous report, if any, stays."""
        self._done = True
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n".join(b.md for b in self._blocks)

    def html(self) -> str:
        toc = ""
        if self._toc:
            items = []
            for s in self._toc:
                sub = "".join(f'<li><a href="#{c.anchor}">{html.escape(c.title)}</a></li>' for c in s.children)
                sub = f"<ul>{sub}</ul>" if sub else ""
                items.append(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a>{sub}</li>')
            toc = f"<nav><h2>Contents</h2><ul>{''.join(items)}</ul></nav>"
        body = "\n".join(b.html for b in self._blocks)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{html.escape(self.title)}</h1>\n{toc}\n{body}\n</body></html>\n"
        )

    # -- helpers ---------------------------------------------------------------------------------
    def _place(self, fname: str, caption: str, vector: str | None = None) -> None:
        # alt text is plain: no inline markup, no brackets that would end the markdown image
        alt = re.sub(r"[`*]", "", caption).replace("[", "(").replace("]", ")") or fname
        link_md = f" ([PDF]({vector}))" if vector else ""
        link_html = f' <a href="{html.escape(vector)}">PDF</a>' if vector else ""
        self._blocks.append(
            _Block(
                f"![{_md_cell(alt)}]({fname}){link_md}\n",
                f'<figure><a href="{fname}"><img src="{fname}" alt="{html.escape(alt)}" loading="lazy"></a>'
                + (f"<figcaption>{_inline_html(caption)}{link_html}</figcaption>" if caption or vector else "")
                + "</figure>",
            )
        )

    @staticmethod
    def _unique(base: str, taken: set[str]) -> str:
        name, i = base, 1
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name


def _write_error(out_dir: Path, e: BaseException) -> BaseException:
    """The classified error (exit 20 disk full, 14 read-only/forbidden) for a failed write, or ``e``."""
    from ..errors import classify_write_error

    return classify_write_error(out_dir, e) or e


def _fsync_dir_files(d: Path) -> None:
    for p in d.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final``, replacing an existing report directory.

    POSIX cannot rename a directory over a non-empty one, so the old report is first renamed aside
    and deleted afterwards; a kill between the two renames leaves the old report under a
    ``.crbatch-old`` name (removed by the next run) and no half-written one.
    """
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a report directory")
    old = None
    if final.exists():
        old = tmp.with_name(tmp.name[: -len(TMP_MARK)] + OLD_MARK)
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        if old is not None:  # put the previous report back
            os.rename(old, final)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale(final: Path) -> None:
    """Remove temporary/old directories of ``final`` left by dead processes on this host."""
    host = socket.gethostname()
    prefix = f".{final.name}."
    for p in final.parent.glob(f".{final.name}.*.crbatch-*"):
        if not p.is_dir() or not p.name.endswith((TMP_MARK, OLD_MARK)):
            continue
        parts = p.name[len(prefix) :].rsplit(".", 3)  # host may contain dots: split from the right
        if len(parts) != 4 or parts[0] != host:
            continue
        try:
            pid = int(parts[1])
        except ValueError:
            continue
        if not schema.pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
