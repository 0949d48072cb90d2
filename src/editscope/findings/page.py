"""``findings.html`` and ``findings.json``: per claim, its rule, the verdicts and the numbers behind them.

The page is self-contained (no scripts, no external files) apart from the post-training figure it
draws next to it and the link to the editing runs' report (``report/report.html``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure

from editscope.findings.evidence import EditEvidence, PosttrainEvidence
from editscope.findings.provenance import PartRecord, mixed
from editscope.findings.rules import CLAIMS, Verdict, trend_step
from editscope.findings.run import Findings
from editscope.report.style import FigureStyle, plot_series, run_color, style_context
from editscope.storage import atomic_write_text

PAGE, DATA, FIGURE = "findings.html", "findings.json", "posttrain_norms.png"

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left}"
    ".holds{background:#e3f4e3}.does-not-hold{background:#f8dcdc}.inconclusive{background:#f1f1f1}"
    ".rule{color:#555;font-size:.95em}img{max-width:100%}"
)


def _e(value: object) -> str:
    return html.escape(str(value))


def _verdict_rows(verdicts: Sequence[Verdict]) -> str:
    rows = "".join(
        f'<tr class="{_e(v.verdict.replace(" ", "-"))}"><td>{_e(v.subject)}</td><td><b>{_e(v.verdict)}</b></td><td>{_e(v.reason)}</td></tr>'
        for v in verdicts
    )
    return f"<table><tr><th>subject</th><th>verdict</th><th>measured</th></tr>{rows}</table>"


def _posttrain_table(evidence: Sequence[PosttrainEvidence]) -> str:
    rows = []
    for e in evidence:
        trend = trend_step(e)
        kinds = ", ".join(f"{k} {a}/{n}" for k, (a, n) in e.by_kind.items())
        rows.append(
            f"<tr><td>{_e(e.mode)}</td><td>{e.steps[-1]}</td><td>{e.mean_rel_change[-1]:+.3g}</td>"
            f"<td>{_e(f'{e.decay_alone[-1]:+.3g}' if e.decay_alone is not None else 'n/a (decays the adapter)')}</td><td>{e.delta_sq[-1]:.3g}</td>"
            f"<td>{e.cross[-1]:+.3g}</td><td>{_e(trend if trend is not None else 'not within the run')}</td><td>{_e(kinds)}</td></tr>"
        )
    header = ("<tr><th>mode</th><th>steps</th><th>mean relative norm change</th><th>of which weight decay alone</th><th>Σ‖ΔW‖²</th>"
              "<th>Σ 2⟨W0,ΔW⟩</th><th>trend from step</th><th>ended above start, per matrix type</th></tr>")  # fmt: skip
    note = ("<p>Weight decay alone: the change AdamW's decoupled weight decay makes by itself, Π(1 − η<sub>t</sub>λ) − 1 over "
            "the scheduled learning rates; the rest of the change is the gradient updates'. Where the two are close, the "
            "run measured its weight decay more than the claim.</p>")  # fmt: skip
    return f"<table>{header}{''.join(rows)}</table>{note}"


def _layer_table(edits: Sequence[EditEvidence], share: float) -> str:
    """Claim 3 layer by layer: each editor's residual-norm change at its last checkpoint per layer read (a layer that
    fell by the rule is marked)."""
    from editscope.findings.rules import fell

    runs = [e for e in edits if e.resid_by_layer]
    layers = sorted({i for e in runs for i in e.resid_by_layer})
    if not layers:
        return ""
    rows = []
    for e in runs:
        cells = []
        for i in layers:
            series = e.resid_by_layer.get(i)
            css = " class='holds'" if series and fell(series, share) else ""
            cells.append(f"<td{css}>{series[-1]:+.2f}</td>" if series else "<td>-</td>")
        rows.append(f"<tr><td>{_e(e.name)}</td><td>{e.edits[-1]}</td>{''.join(cells)}</tr>")
    header = "<tr><th>run</th><th>edits</th>" + "".join(f"<th>{i}</th>" for i in layers) + "</tr>"
    return ("<p>Residual-stream norm change against the unedited model at the last checkpoint, percent, by layer "
            "(green: fell by the rule).</p>" f"<table>{header}{''.join(rows)}</table>")


def compared(findings: Findings, claim: int) -> list[dict[str, object]]:
    """Each verdict of ``claim`` beside the earlier findings' verdict on the same subject (``--against``)."""
    if not findings.against:
        return []
    before = {(v["claim"], v["subject"]): v for v in findings.against["verdicts"]}
    runs_here = {e.name: e.edits[-1] for e in findings.edits}
    rows = []
    for v in findings.verdicts:
        if v.claim != claim or (claim, v.subject) not in before:
            continue
        old = before[(claim, v.subject)]
        rows.append({
            "claim": claim, "subject": v.subject, "edits_before": findings.against["edits"].get(v.subject),
            "verdict_before": old["verdict"], "measured_before": old["reason"], "edits_here": runs_here.get(v.subject),
            "verdict_here": v.verdict, "measured_here": v.reason, "changed": old["verdict"] != v.verdict,
        })  # fmt: skip
    return rows


def _against_table(findings: Findings, claim: int) -> str:
    rows = compared(findings, claim)
    if not rows or findings.against is None:
        return ""
    against = findings.against
    body = "".join(
        f"<tr><td>{_e(r['subject'])}</td><td>{_e(r['edits_before'] or '')}</td><td>{_e(r['verdict_before'])}</td><td>{_e(r['measured_before'])}</td>"
        f"<td>{_e(r['edits_here'] or '')}</td><td>{_e(r['verdict_here'])}</td><td>{_e(r['measured_here'])}</td>"
        f"<td><b>{'changed' if r['changed'] else 'same'}</b></td></tr>"
        for r in rows
    )
    return (f"<p>Beside the <b>{_e(against['budget'])}</b> budget's verdicts ({_e(against['folder'])}):</p>"
            f"<table><tr><th>subject</th><th>edits</th><th>verdict there</th><th>measured there</th><th>edits</th><th>verdict here</th>"
            f"<th>measured here</th><th>at scale</th></tr>{body}</table>")


def _minutes(seconds: float | None) -> str:
    return "unrecorded" if seconds is None else f"{seconds / 60:.1f}"


def _measured_on(records: Sequence[PartRecord]) -> str:
    """Each part's machine, precision, threads and time, and a warning where the parts differ in those."""
    if not records:
        return ""
    rows = "".join(
        f"<tr><td>{_e(r.part)}</td><td>{_e(r.machine)}</td><td>{_e(r.precision)}</td><td>{_e(r.threads if r.threads is not None else 'unrecorded')}</td>"
        f"<td>{_e(r.torch)}</td><td>{_minutes(r.wall_s)}</td></tr>"
        for r in records
    )
    total = sum(r.wall_s for r in records if r.wall_s is not None)
    header = "<tr><th>part</th><th>machine</th><th>precision (auto)</th><th>torch threads</th><th>torch</th><th>wall time (min)</th></tr>"
    differs = mixed(records)
    warning = (f"<p><b>The parts differ in {_e(', '.join(differs))}</b>: their numbers were measured apart; "
               "a verdict that rests on a small margin may not carry across.</p>") if differs else ""  # fmt: skip
    return (f"<h2 id='measured-on'>Measured on</h2><p>As each part's folder recorded it when the part began; wall time is the part's own, "
            f"resumes included ({total / 60:.1f} min summed over the parts, those that ran side by side each in full; the editors' "
            f"statistics and the screening are not in it).</p>{warning}"
            f"<table>{header}{rows}</table>")  # fmt: skip


def posttrain_figure(evidence: Sequence[PosttrainEvidence], style: FigureStyle = FigureStyle()) -> Figure:
    """Mean relative norm change of the updated matrices (a), and the two parts of ‖W‖² − ‖W0‖² (b), against steps."""
    with style_context(style):
        figure = Figure(figsize=(2 * 3.4, style.panel_height + 0.8), layout="constrained")
        change, parts = figure.subplots(1, 2)
        for i, e in enumerate(evidence):
            color = run_color(i)
            plot_series(change, list(e.steps), [100 * v for v in e.mean_rel_change], style, color=color, label=e.mode)
            plot_series(parts, list(e.steps), list(e.delta_sq), style, color=color)
            plot_series(parts, list(e.steps), list(e.cross), style, color=color, linestyle="--", marker="s")
        change.set(title="(a) mean relative norm change", xlabel="optimizer steps", ylabel=r"$\Vert W\Vert_F$ change (%)")
        parts.set(title=r"(b) $\Sigma\Vert\Delta W\Vert^2$ (solid), $\Sigma 2\langle W_0,\Delta W\rangle$ (dashed)",
                  xlabel="optimizer steps", ylabel="sum over updated matrices")  # fmt: skip
        parts.set_yscale("symlog", linthresh=max(1e-12, min((abs(v) for e in evidence for v in e.delta_sq[1:] if v), default=1e-6)))
        figure.legend(loc="outside lower center", ncols=max(1, len(evidence)))
    return figure


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def findings_json(findings: Findings) -> dict:
    return _jsonable({
        "model": findings.config.model, "budget": findings.config.budget,
        "claims": {str(n): {"claim": text, "rule": findings.rules.describe(n)} for n, text in CLAIMS.items()},
        "verdicts": [asdict(v) for v in findings.verdicts], "not_run": findings.not_run,
        "posttrain": [{**asdict(e), "trend_from_step": trend_step(e)} for e in findings.posttrain],
        "edits": [asdict(e) for e in findings.edits], "rules": asdict(findings.rules),
        "screened": [asdict(t) for t in findings.screened],
        "measured_on": {"parts": [asdict(p) for p in findings.parts], "differ_in": mixed(findings.parts)},
        "against": {**{k: v for k, v in findings.against.items() if k != "verdicts"},
                    "verdicts": [row for n in CLAIMS for row in compared(findings, n)]} if findings.against else None,
    })  # type: ignore[return-value]  # fmt: skip


def findings_html(findings: Findings) -> str:
    c = findings.config
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>editscope findings: {_e(c.model)}</title>",
        f"<style>{_CSS}</style></head><body><h1>The four findings on {_e(c.model)}</h1>",
        f"<p>Budget <b>{_e(c.budget)}</b>. Each verdict follows the rule stated with its claim, fixed in "
        "<code>editscope.findings.rules</code> before the runs; the editing runs' figures are in "
        "<a href='report/report.html'>their report</a>.</p>",
    ]
    if findings.not_run:
        parts.append("<p>Not run: " + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in findings.not_run.items()) + ".</p>")
    parts.append(_measured_on(findings.parts))
    for number, text in CLAIMS.items():
        verdicts = [v for v in findings.verdicts if v.claim == number]
        parts.append(f"<h2 id='claim-{number}'>Claim {number}</h2><p>{_e(text)}</p>")
        parts.append(f"<p class='rule'>Rule: {_e(findings.rules.describe(number))}</p>")
        if number == 1 and findings.posttrain:
            parts.append(_posttrain_table(findings.posttrain))
            parts.append(f"<img src='{FIGURE}' alt='norm change of the updated matrices against optimizer steps'>")
        if number == 3:
            parts.append(_layer_table(findings.edits, findings.rules.rising_share))
        if number == 4 and findings.screened:
            left_out = ", ".join(f"{t.task} {t.acc_start:.2f} (chance {t.chance:.2f}, n = {t.n_examples})" for t in findings.screened)
            parts.append(f"<p>At chance on the unedited model, so not measured after editing: {_e(left_out)}.</p>")
        parts.append(_verdict_rows(verdicts))
        parts.append(_against_table(findings, number))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_findings(findings: Findings, out: Path) -> Path:
    """``out/findings.html``, ``out/findings.json`` and the post-training figure, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    if findings.posttrain:  # a budget without post-training (scale) has no figure to draw
        figure = posttrain_figure(findings.posttrain)
        tmp = out / f".{FIGURE}.tmp"
        figure.savefig(tmp, format="png", dpi=150)
        tmp.replace(out / FIGURE)
    atomic_write_text(out / DATA, json.dumps(findings_json(findings), indent=2))
    atomic_write_text(out / PAGE, findings_html(findings))
    return out / PAGE
