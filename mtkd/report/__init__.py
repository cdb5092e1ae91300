"""Stage 4: the report (report.json, report.md, PNG plot) of an experiment."""
