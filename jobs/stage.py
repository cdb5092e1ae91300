"""Ray job entrypoint: one stage of the mtkd pipeline (prepare, teachers, soft, student,
report); the stages before it must have finished.

    python jobs/stage.py --config jobs/configs/quickstart.yaml --stage teachers [--force]
        [key.path=value ...]
    ray job submit --working-dir . -- python jobs/stage.py --stage teachers \\
        --config jobs/configs/quickstart.yaml teachers.size=4
"""

import sys
from pathlib import Path

# The mtkd next to this script (an uploaded --working-dir) wins over an installed one.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtkd.jobs.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:], stage_required=True))
