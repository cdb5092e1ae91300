"""Stage ``report`` and ``mtkd report``: report.json, report.md, scores.png under report/."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from mtkd.config import ReportConfig
from mtkd.experiment import REPORT_DIR, REPORT_RECORD, StageContext, lineage_of
from mtkd.raycluster import Placement
from mtkd.records import ReportRecord, digest, files_fingerprint
from mtkd.report.collect import collect
from mtkd.report.render import render_markdown, render_plot
from mtkd.storage import Storage

log = logging.getLogger("mtkd")


def write_report(store: Storage, settings: ReportConfig | None = None,
                 measure: bool = True, placement: Placement | None = None) -> dict[str, Any]:
    """Collect and render the report of the experiment at ``store`` (``settings``:
    report.*, default values when None; ``measure``: time inference, where ``placement``
    says: None, this process), then write its record (:class:`mtkd.records.ReportRecord`)
    last."""
    settings = settings or ReportConfig()
    report = collect(store, settings.speed_examples, measure=measure,
                     precision=settings.precision,
                     bootstrap_samples=settings.bootstrap_samples,
                     bootstrap_seed=settings.bootstrap_seed, placement=placement)
    files: dict[str, bytes] = {}
    if settings.plot:
        files["scores.png"] = render_plot(report)
        report["artifacts"]["plot"] = store.uri_of(f"{REPORT_DIR}/scores.png")
    report["artifacts"]["report"] = store.uri_of(f"{REPORT_DIR}/report.md")
    files["report.json"] = (json.dumps(report, indent=2) + "\n").encode()
    files["report.md"] = render_markdown(report).encode()
    store.delete(REPORT_RECORD)  # the old record never describes new files
    for name, data in files.items():
        store.write_atomic(f"{REPORT_DIR}/{name}", data)
    values = {f"report.{k}": v for k, v in dataclasses.asdict(settings).items()}
    record = ReportRecord(
        lineage=lineage_of("report", values, inputs=report["lineage"],
                           instance={"speed": measure}),
        content=files_fingerprint({name: digest(data) for name, data in files.items()}))
    store.write_json_atomic(REPORT_RECORD, record.to_json())
    return report


def run_report(ctx: StageContext) -> dict[str, Any]:
    config = ctx.config
    # the speed measurement runs where a student worker would: its resources, on Ray
    report = write_report(ctx.store, config.report,
                          placement=Placement.student(config, "report"))
    log.info("[report] %s", ctx.store.uri_of("report/report.md"))
    return {"artifacts": [f"{REPORT_DIR}/{name}" for name in
                          ("report.json", "report.md", "scores.png", "record.json")],
            "average": {k: (report[k] or {}).get("average")
                        for k in ("ensemble", "student", "baseline")}}
