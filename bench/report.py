"""Rows to numbers to text: median, p95 (nearest rank), ratio to the group's sandboxd row,
an aligned table with a footer of machine facts, and the same as JSON."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

SCALE = {"ms": 1e3, "MiB": 1 / 2**20}      # samples (seconds, bytes) -> shown unit
STATUS_WIDTH = 60                            # longer reasons go to the notes below


@dataclass
class Row:
    case: str
    runtime: str
    unit: str
    reference: bool = False
    samples: list[float] = field(default_factory=list)      # in ``unit``
    status: str = ""                  # why there are no samples ("not installed", ...)
    ratio: float | None = None

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def p95(self) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def scaled(samples: list[float], unit: str) -> list[float]:
    return [s * SCALE[unit] for s in samples]


def add_ratios(rows: list[Row]) -> None:
    """ratio = median / median of the reference row of the same case."""
    refs = {r.case: r for r in rows if r.reference and r.samples}
    for row in rows:
        ref = refs.get(row.case)
        if ref is not None and row.samples and ref.median:
            row.ratio = row.median / ref.median


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


def table(rows: list[Row], footer: list[str]) -> str:
    notes: dict[str, int] = {}          # reason -> its note number (shared by rows)
    cells = []
    last_case = None
    for row in rows:
        name = row.case if row.case != last_case else ""
        last_case = row.case
        if row.samples:
            cells.append([name, row.runtime, str(row.n), _number(row.median, row.unit),
                          _number(row.p95, row.unit),
                          "-" if row.ratio is None else f"{row.ratio:.2f}x"])
            continue
        status = " ".join(row.status.split())       # logs in a reason: one line
        if len(status) > STATUS_WIDTH:
            number = notes.setdefault(status, len(notes) + 1)
            status = f"{status[:STATUS_WIDTH - 8].rstrip()}... [{number}]"
        cells.append([name, row.runtime, "-", status])
    header = ["case", "runtime", "n", "median", "p95", "vs sandboxd"]
    widths = [max([len(header[i])] + [len(c[i]) for c in cells if i < 2 or len(c) > 4])
              for i in range(len(header))]
    right = {2, 3, 4, 5}

    def line(values: list[str]) -> str:
        if len(values) == 4:            # a status spans the number columns
            return "  ".join([values[0].ljust(widths[0]), values[1].ljust(widths[1]),
                              values[2].rjust(widths[2]), values[3]]).rstrip()
        return "  ".join(v.rjust(widths[i]) if i in right else v.ljust(widths[i])
                         for i, v in enumerate(values)).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    for i, c in enumerate(cells):
        if i and c[0]:
            out.append("")
        out.append(line(c))
    out.append("")
    out += [f"[{n}] {reason}" for reason, n in notes.items()]
    out += ([""] if notes else []) + footer
    return "\n".join(out)


def to_json(rows: list[Row], machine: dict, settings: dict, notes: dict) -> dict:
    return {
        "machine": machine,
        "settings": settings,
        "notes": notes,
        "rows": [{"case": r.case, "runtime": r.runtime, "unit": r.unit, "n": r.n,
                  "median": r.median, "p95": r.p95, "ratio_vs_sandboxd": r.ratio,
                  "reference": r.reference, "status": r.status, "samples": r.samples}
                 for r in rows],
    }
