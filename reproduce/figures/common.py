"""What every figure module shares: loading result files, a fixed plotting style, deterministic writers for
figures (PNG/PDF) and tables (Markdown/CSV/LaTeX), and the manifest of what was written from what.

Determinism: the style starts from matplotlib's defaults (no user matplotlibrc), figure sizes and DPI are fixed,
PNG/PDF metadata that carries a date or a version is dropped, and every table is written from sorted rows with
fixed number formats — so two runs on the same result files give byte-identical tables and, with the same
matplotlib/seaborn/FreeType, byte-identical images.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import seaborn as sns

DPI = 150
# PNG: no "Software" chunk (it names the matplotlib version).  PDF: no dates, no producer/creator strings.
PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None}

# The GLUE tasks in the benchmark's usual order; anything else follows alphabetically.
GLUE_ORDER = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
TASK_LABEL = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
              "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
METRIC_LABEL = {"matthews_correlation": "MCC", "accuracy": "acc", "f1": "F1", "combined": "Pearson/Spearman avg",
                "pearson": "Pearson", "spearmanr": "Spearman"}
VARIANT_COLOR = {"dense": "#4c72b0", "dendritic": "#dd8452", "dsn": "#8c8c8c"}


def task_key(task: str) -> tuple[int, str]:
    return (GLUE_ORDER.index(task) if task in GLUE_ORDER else len(GLUE_ORDER), task)


def task_label(task: str) -> str:
    return TASK_LABEL.get(task, task)


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def style() -> None:
    """The one plotting style: matplotlib defaults + seaborn whitegrid, fixed fonts and sizes."""
    matplotlib.rcdefaults()
    sns.set_theme(context="paper", style="whitegrid", font="DejaVu Sans", rc={
        "figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "standard", "pdf.fonttype": 42, "ps.fonttype": 42,
        "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7,
        "figure.titlesize": 10, "svg.hashsalt": "dendritic", "path.simplify": False,
    })


# -- number formatting (one place, so tables agree with each other) ------------------------------------------------
def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not (isinstance(x, float) and math.isnan(x))


def pct(x: Any, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}" if is_num(x) else "–"


def pm(mean: Any, std: Any, scale: float = 100.0, digits: int = 1) -> str:
    if not is_num(mean):
        return "–"
    if not is_num(std):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def num(x: Any, digits: int = 4) -> str:
    """CSV cells: fixed decimals for floats, plain ints, empty for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, (list, tuple)):
        return " ".join(num(v, digits) for v in x)
    return str(x)


def human(n: Any) -> str:
    if not is_num(n):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


# -- tables --------------------------------------------------------------------------------------------------------
def _tex_escape(s: str) -> str:
    out = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        out = out.replace(a, b)
    return out.replace("±", r"$\pm$").replace("–", "--").replace("×", r"$\times$").replace("≥", r"$\geq$") \
        .replace("≈", r"$\approx$").replace("λ", r"$\lambda$").replace("·", r"$\cdot$").replace("−", "-")


def markdown_table(header: list[str], rows: list[list[str]], caption: list[str]) -> str:
    lines = [f"**{caption[0]}**", ""] + [f"- {c}" for c in caption[1:]] + ([""] if len(caption) > 1 else [])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def latex_table(header: list[str], rows: list[list[str]], caption: list[str], label: str,
                rules_before: Iterable[int] = ()) -> str:
    rules = set(rules_before)
    cols = "l" + "r" * (len(header) - 1)
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\caption{" + _tex_escape(" ".join(caption)) + "}", r"\label{" + label + "}",
           r"\begin{tabular}{" + cols + "}", r"\toprule", " & ".join(_tex_escape(h) for h in header) + r" \\",
           r"\midrule"]
    for i, row in enumerate(rows):
        if i in rules:
            out.append(r"\midrule")
        out.append(" & ".join(_tex_escape(c) for c in row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([c if isinstance(c, str) else num(c) for c in row])
    return buf.getvalue()


# -- the output folder and its manifest ----------------------------------------------------------------------------
@dataclass
class Output:
    """Writes figures and tables under ``out`` and remembers, for MANIFEST.md, which result files each came from."""

    out: Path
    results: Path
    command: str
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (file, sources, description)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)

    def rel(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.results.resolve()).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def _record(self, name: str, sources: list[Path], description: str) -> None:
        self.entries.append((name, ", ".join(sorted(self.rel(s) for s in sources)), description))

    def figure(self, fig: plt.Figure, stem: str, sources: list[Path], description: str,
               formats: tuple[str, ...] = ("png", "pdf")) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            path = self.out / f"{stem}.{fmt}"
            meta = PNG_METADATA if fmt == "png" else PDF_METADATA
            fig.savefig(path, format=fmt, dpi=DPI, metadata=meta)
            self._record(path.name, sources, description)
        plt.close(fig)
        print(f"wrote {', '.join(f'{stem}.{f}' for f in formats)}", flush=True)

    def table(self, stem: str, header: list[str], rows: list[list[str]], caption: list[str], sources: list[Path],
              description: str, csv_header: list[str] | None = None, csv_rows: list[list[Any]] | None = None,
              formats: tuple[str, ...] = ("md", "csv"), rules_before: Iterable[int] = ()) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        texts = {"md": lambda: markdown_table(header, rows, caption),
                 "csv": lambda: csv_text(csv_header or header, csv_rows if csv_rows is not None else rows),
                 "tex": lambda: latex_table(header, rows, caption, f"tab:{stem}", rules_before)}
        for fmt in formats:
            path = self.out / f"{stem}.{fmt}"
            path.write_text(texts[fmt](), encoding="utf-8")
            self._record(path.name, sources, description)
        print(f"wrote {', '.join(f'{stem}.{f}' for f in formats)}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))
        print(f"skipped {what}: {why}", flush=True)

    def manifest(self) -> Path:
        lines = ["# Figures and tables", "",
                 ("Every file below is a pure function of the result files named beside it (paths relative to the "
                  "results folder); none involves training or benchmarking."), "",
                 f"Regenerate: `{self.command}`", "", "| file | source | what it shows |", "|---|---|---|"]
        lines += [f"| `{f}` | {s} | {d} |" for f, s, d in sorted(self.entries)]
        if self.skipped:
            lines += ["", "## Not generated (missing inputs)", ""]
            lines += [f"- {w}: {y}" for w, y in sorted(self.skipped)]
        path = self.out / "MANIFEST.md"
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def require(out: Output, what: str, *paths: Path) -> bool:
    """True when every path exists; otherwise one printed line and the figure is skipped."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        out.skip(what, "missing " + ", ".join(out.rel(p) for p in missing))
        return False
    return True


Figure = Callable[[Output], None]


# -- shared by the GLUE and ablation figures ----------------------------------------------------------------------
RUN_NAME = re.compile(r"^(dense|dendritic|dsn)-seed(\d+)$")
VARIANTS = ("dense", "dendritic", "dsn")


def run_files(glue: Path, variants: tuple[str, ...] = VARIANTS) -> list[Path]:
    return [f for f in sorted(glue.glob("*/*.json")) if (m := RUN_NAME.match(f.stem)) and m.group(1) in variants]


def setting_text(values: list) -> str:
    vals = sorted({str(v) for v in values if v is not None})
    return "/".join(vals) if vals else "?"


def max_length(glue: Path) -> str:
    """The fine-tuning max length of the GLUE runs (resolved_config.max_length), "?" when no run file exists."""
    return setting_text([load_json(f).get("resolved_config", {}).get("max_length") for f in run_files(glue)[:50]])


def grid_tasks(data: dict) -> list[str]:
    """The ablation grid's tasks (recorded by the runner; the plan's ``wide`` extra tasks are the wide table's).
    Older summaries without the record: the tasks where at least two ablated variants ran."""
    if isinstance(data.get("grid_tasks"), list):
        return sorted(data["grid_tasks"], key=task_key)
    ablated = [v for v, e in data.items() if v not in ("dense", "full") and isinstance(e, dict)]
    return sorted({t for v in ablated for t in data[v] if sum(t in data[u] for u in ablated) >= 2}, key=task_key)
