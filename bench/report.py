"""Rows of results and the plain-text table they make."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.settings import MB, MiB

HEADER = ("measurement", "proxy", "reference", "ratio / target", "result")


@dataclass(frozen=True)
class Row:
    measurement: str
    proxy: str
    reference: str
    target: str
    # None: informational, no target.
    passed: bool | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def result(self) -> str:
        return {True: "PASS", False: "FAIL", None: "-"}[self.passed]


def mbps(size: int, seconds: float) -> float:
    return size / MB / seconds


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def throughput_row(
    measurement: str,
    proxy_mbps: Sequence[float],
    reference_mbps: Sequence[float],
    *,
    min_ratio: float | None,
    reference_name: str,
    notes: Sequence[str] = (),
) -> Row:
    """Median MB/s of each side, and the ratio: the median of each round's own
    proxy/reference ratio. A round's two transfers run back to back, so a shared
    machine whose speed drifts over the run moves both alike, which the ratio of the
    two medians (different rounds) does not allow for; a note gives that one too.
    Passes when the ratio >= ``min_ratio`` (``None``: no target, the row informs)."""
    proxy, reference = statistics.median(proxy_mbps), statistics.median(reference_mbps)
    paired = [p / r for p, r in zip(proxy_mbps, reference_mbps, strict=True)]
    ratio = statistics.median(paired)
    paired_note = (
        f"{measurement}: ratio per round {_list([f'{v:.2f}' for v in paired])}; "
        f"ratio of the medians {proxy / reference:.2f}"
    )
    return compared_row(
        measurement,
        f"{proxy:.1f} MB/s",
        f"{reference:.1f} MB/s",
        f"{ratio:.2f}" + ("" if min_ratio is None else f" (>= {min_ratio:.2f})"),
        None if min_ratio is None else ratio >= min_ratio,
        reference_name=reference_name,
        unit="MB/s",
        proxy_rounds=[f"{v:.1f}" for v in proxy_mbps],
        reference_rounds=[f"{v:.1f}" for v in reference_mbps],
        notes=[paired_note, *notes],
    )


def compared_row(
    measurement: str,
    proxy: str,
    reference: str,
    target: str,
    passed: bool | None,
    *,
    reference_name: str,
    unit: str,
    proxy_rounds: Sequence[str],
    reference_rounds: Sequence[str],
    notes: Sequence[str] = (),
) -> Row:
    """A row of the proxy against a reference, its first note naming the reference and
    giving each side's figures per round (in ``unit``), then ``notes``."""
    return Row(
        measurement,
        proxy,
        reference,
        target,
        passed,
        notes=(
            f"{measurement}: reference = {reference_name}; per round {unit}, "
            f"proxy {_list(proxy_rounds)}, reference {_list(reference_rounds)}",
            *notes,
        ),
    )


def error_row(measurement: str, error: BaseException) -> Row:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return Row(measurement, "error", "-", "-", False, notes=(f"{measurement}: {message}",))


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(values) + "]"


def render(rows: Sequence[Row], title: str = "") -> str:
    cells = [HEADER, *((r.measurement, r.proxy, r.reference, r.target, r.result) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [title, ""] if title else []
    out.append(line(cells[0]))
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(line(c) for c in cells[1:])
    notes = [note for r in rows for note in r.notes]
    if notes:
        out.append("")
        out.extend(f"- {note}" for note in notes)
    out.append("")
    out.append(summary(rows))
    return "\n".join(out)


def summary(rows: Sequence[Row]) -> str:
    judged = [r for r in rows if r.passed is not None]
    failed = [r.measurement for r in judged if not r.passed]
    passed = [r.measurement for r in judged if r.passed]
    text = f"Targets: {len(passed)} of {len(judged)} passed"
    if passed:
        text += f" (passed: {', '.join(passed)})"
    if failed:
        text += f"; FAILED: {', '.join(failed)}"
    return text + "."
