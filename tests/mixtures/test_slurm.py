"""sbatch's answer, as the pipeline and the trainer both read it."""

import pytest

from mixtures.slurm import SlurmError, submitted_job_id


def test_job_id_of_a_plain_and_a_multi_cluster_answer():
    assert submitted_job_id("Submitted batch job 42\n") == "42"
    assert submitted_job_id("Submitted batch job 42 on cluster c2\n") == "42"  # datatrove#265
    with pytest.raises(SlurmError, match="no 'Submitted batch job N'"):
        submitted_job_id("sbatch: error: Batch job submission failed")
