"""Ray jobs: the client that submits and follows a job (:mod:`mtkd.jobs.client`: ``mtkd
submit/status/logs``, ``mtkd cluster validate``) and the entry that runs inside it
(:mod:`mtkd.jobs.entry`: ``jobs/pipeline.py``, ``jobs/stage.py``).

Both import only the standard library at import time (the CLI builds its parser from the
client); Ray is imported when a command runs.
"""
