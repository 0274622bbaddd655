"""What the pipeline and the trainer both read from Slurm: the job id in ``sbatch``'s answer."""

from __future__ import annotations

import re

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
