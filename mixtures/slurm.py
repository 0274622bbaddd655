"""What the pipeline and the trainer both ask of Slurm: the job id in ``sbatch``'s answer, and the
jobs still queued for an output directory (found by the tag their names end with)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

# `Submitted batch job 123`, or on a multi-cluster site `Submitted batch job 123 on cluster c1`
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")


class SlurmError(ValueError):
    """Slurm cannot be used as asked (no sbatch, an answer that is not understood)."""


def submitted_job_id(output: str) -> str:
    """The job id in sbatch's answer, with or without `` on cluster C`` after it (datatrove#265 takes
    the answer's last word, which is then the cluster's name). Raises SlurmError on any other answer."""
    found = _SUBMITTED.search(output)
    if not found:
        raise SlurmError(f"sbatch answered {output.strip()!r}: no 'Submitted batch job N' in it")
    return found.group(1)


def job_tag(directory: str | Path) -> str:
    """What the names of the jobs writing ``directory`` end with, to find them in ``squeue``."""
    return hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:8]


def queued_jobs(name_suffix: str, attempts: int = 3, retry_s: float = 2.0) -> list[str]:
    """Ids of the queued or running jobs whose name ends with ``name_suffix``; empty where squeue is
    not installed. A busy controller makes squeue fail now and then ("Socket timed out"), so it is
    asked ``attempts`` times, ``retry_s`` apart, before SlurmError: reading a failure as "nothing
    queued" would let a second build run the same tasks, or a phase start before the one it resumes."""
    for attempt in range(attempts):
        try:
            listed = subprocess.run(
                ["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
            break
        except FileNotFoundError:
            return []
        except (OSError, subprocess.SubprocessError) as err:
            answer = getattr(err, "stderr", None) or str(err)
            if attempt + 1 == attempts:
                raise SlurmError(
                    f"squeue failed {attempts} times ({answer.strip()}): cannot tell which jobs are "
                    "queued; retry when the Slurm controller answers"
                ) from err
            time.sleep(retry_s)
    rows = (line.split(maxsplit=1) for line in listed.splitlines())
    return [job for job, name in rows if name.endswith(name_suffix)]
