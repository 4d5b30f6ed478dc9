"""Every figure and table of the artifact, regenerated from the result files only (no training, no benchmarking):

    python -m reproduce.make_figures                                   # reproduce/results -> figures
    python -m reproduce.make_figures --results DIR --out DIR [--only table1_glue pai_glue]

A figure whose result file does not exist yet is skipped with one printed line.  Running twice gives byte-identical
tables (Markdown/CSV/LaTeX) and, with the same matplotlib/seaborn, identical PNG/PDF.  ``<out>/MANIFEST.md`` lists
each file, the result files it came from, and this command.  ``--readme README.md`` also copies Table 1 into the
README between its ``<!-- table1:start -->`` / ``<!-- table1:end -->`` markers (the ``figures`` nox session does).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .figures import FIGURES
from .figures.common import Output, style
from .paths import FIGURES as FIGURES_DIR
from .paths import REPO, RESULTS


def _shown(path: Path) -> str:
    """A path as the command line should show it: relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return path.as_posix()


START, END = "<!-- table1:start -->", "<!-- table1:end -->"


def embed_table1(readme: Path, table: Path) -> bool:
    """Replace the text between the README's Table-1 markers with ``table``; False when either is missing."""
    if not readme.exists() or not table.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{START}\n{table.read_text(encoding='utf-8').rstrip()}\n{END}{tail}", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS), help="results folder")
    parser.add_argument("--out", default=str(FIGURES_DIR), help="output folder")
    parser.add_argument("--only", nargs="*", default=None,
                        help="builder names to run (default: all); MANIFEST.md is then left as it was")
    parser.add_argument("--readme", default=None, help="also copy <out>/table1_glue.md into this README's markers")
    args = parser.parse_args(argv)
    results, out_dir = Path(args.results), Path(args.out)
    command = f"python -m reproduce.make_figures --results {shlex.quote(_shown(results))} --out {shlex.quote(_shown(out_dir))}"
    out = Output(out=out_dir, results=results, command=command)
    style()
    builders = [f for f in FIGURES if args.only is None or f.__name__ in args.only]
    for build in builders:
        style()  # every figure starts from the same rcParams
        build(out)
    if args.only is None:
        print(f"{len(out.entries)} files, {len(out.skipped)} skipped; manifest {out.manifest()}", flush=True)
    else:  # a partial run knows only its own files: the manifest of the whole folder stays as it was
        print(f"{len(out.entries)} files, {len(out.skipped)} skipped; {out_dir / 'MANIFEST.md'} left as it was "
              "(--only; run without it to rewrite the manifest)", flush=True)
    if args.readme:  # only a table this run wrote (a stale one from an earlier run is not copied)
        wrote = any(f == "table1_glue.md" for f, _, _ in out.entries)
        done = wrote and embed_table1(Path(args.readme), out_dir / "table1_glue.md")
        print(f"Table 1 {'copied into' if done else 'NOT copied into (markers or table missing)'} {args.readme}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
