"""Ray job entrypoint: the whole mtkd pipeline for one experiment config.

    python jobs/pipeline.py --config jobs/configs/quickstart.yaml [--from STAGE] [--to STAGE]
        [--force] [key.path=value ...]
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/quickstart.yaml

Finished stages are skipped, so re-submitting after a failure resumes. Inside a Ray job
mtkd joins the job's cluster; run directly, it starts a local Ray.
"""

import sys
from pathlib import Path

# The mtkd next to this script (an uploaded --working-dir) wins over an installed one.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtkd.jobs.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:], stage_required=False))
