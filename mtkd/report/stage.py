"""Stage ``report`` and ``mtkd report``: report.json, report.md, scores.png under report/."""

from __future__ import annotations

import logging
from typing import Any

from mtkd.experiment import StageContext
from mtkd.report.collect import collect
from mtkd.report.render import render_markdown, render_plot
from mtkd.storage import Storage

log = logging.getLogger("mtkd")


def write_report(store: Storage, speed_examples: int = 256, plot: bool = True,
                 measure: bool = True, precision: str = "auto") -> dict[str, Any]:
    """Collect and render the report of the experiment at ``store`` (``precision``: of
    the speed measurement, report.precision)."""
    report = collect(store, speed_examples, measure=measure, precision=precision)
    if plot:
        store.write_atomic("report/scores.png", render_plot(report))
        report["artifacts"]["plot"] = store.uri_of("report/scores.png")
    report["artifacts"]["report"] = store.uri_of("report/report.md")
    store.write_json_atomic("report/report.json", report)
    store.write_atomic("report/report.md", render_markdown(report).encode())
    return report


def run_report(ctx: StageContext) -> dict[str, Any]:
    config = ctx.config
    report = write_report(ctx.store, config.report.speed_examples, config.report.plot,
                          precision=config.report.precision)
    log.info("[report] %s", ctx.store.uri_of("report/report.md"))
    return {"artifacts": ["report/report.json", "report/report.md", "report/scores.png"],
            "average": {k: (report[k] or {}).get("average")
                        for k in ("ensemble", "student", "baseline")}}
