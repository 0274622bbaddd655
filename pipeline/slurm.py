"""Submitting a build's stages (or a download) to Slurm: datatrove's executor with the fixes a real
cluster needs, and the checks and messages around a submission.

``ChainedSlurmExecutor`` is datatrove's ``SlurmPipelineExecutor`` with four changes:

- the job id is read from ``Submitted batch job N`` wherever it is in sbatch's answer, so a
  multi-cluster site's ``Submitted batch job N on cluster C`` works (datatrove#265 takes the last
  word; ``mixtures.slurm.submitted_job_id``);
- a stage with more tasks than the cluster's ``MaxArraySize`` is split into several arrays
  (datatrove does that), and the next stage depends on every one of them, not on the last only;
  every job is submitted with ``--kill-on-invalid-dep=yes``, so a job whose dependency failed or
  was cancelled ends instead of pending forever (datatrove#238);
- it records what it submitted (job ids, tasks to run), so the command can say how many tasks a
  rerun resubmits: datatrove skips the tasks whose completion file exists;
- the jobs start with a line that enters the Python environment running the command (the
  project's), unless told another.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from datatrove.executor import SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from mixtures.slurm import SlurmError, queued_jobs, submitted_job_id
from pipeline.build_options import SlurmOptions

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
SUBMITTED_JOBS = "slurm_jobs.json"  # in a stage's logging dir: the arrays of its latest submission


class JobIds:
    """The job id retriever datatrove calls after each sbatch: parses the id and keeps every one.

    An instance, not a function, so it travels inside the pickled executor like datatrove's default.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, output: str) -> str:
        job_id = submitted_job_id(output)
        self.ids.append(job_id)
        return job_id


def cluster_max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (``scontrol show config``); Slurm's default if it cannot be read."""
    try:
        config = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", config, re.MULTILINE)
    return int(found.group(1)) if found else DEFAULT_MAX_ARRAY_SIZE


def environment_line(env: str | None) -> str:
    """The shell line every job runs first: ``env`` as given, else one that puts the Python
    environment running this command first on PATH (its ``activate`` for a venv), so the jobs
    import the same packages whatever PATH the submitting shell had."""
    if env:
        return env
    prefix = Path(sys.prefix)
    activate = prefix / "bin" / "activate"
    if activate.is_file():
        return f"source {activate}"
    return f'export PATH="{Path(sys.executable).parent}:$PATH"'


def ensure_user() -> None:
    """Set ``USER`` when it is empty (containers): datatrove's ``squeue -u $USER`` fails without it,
    and the jobs, started with the submitter's environment, inherit it."""
    if not os.environ.get("USER"):
        os.environ["USER"] = pwd.getpwuid(os.getuid()).pw_name


class ChainedSlurmExecutor(SlurmPipelineExecutor):
    """datatrove's Slurm executor, depending on every array of the stage before; records what it submitted."""

    def __init__(self, *args, **kwargs):
        self.submitted = JobIds()
        kwargs.setdefault("job_id_retriever", self.submitted)
        sbatch_args = {"kill-on-invalid-dep": "yes", **(kwargs.pop("sbatch_args", None) or {})}
        super().__init__(*args, sbatch_args=sbatch_args, **kwargs)
        self.to_run: int | None = None  # tasks submitted, once launched (0: all done before)
        self.depends_on: list[str] = []

    def launch_job(self) -> None:
        depends = self.depends
        if isinstance(depends, ChainedSlurmExecutor):
            if depends.to_run is None:
                depends.launch_job()
            self.depends_on = list(depends.submitted.ids)  # every array and the merge_stats job
            self.depends = None
        self.to_run = len(self.get_incomplete_ranks())
        super().launch_job()
        if self.to_run:  # for `mmbert-data status`: which array element runs which task
            jobs = {"arrays": self.arrays, "max_array_size": self.max_array_size}
            with self.logging_dir.open(SUBMITTED_JOBS, "w") as handle:
                json.dump(jobs, handle)

    @property
    def dependency(self) -> str:
        """All arrays of the stage before must succeed; arrays of one stage run one after another."""
        parts = [f"afterok:{':'.join(self.depends_on)}"] if self.depends_on else []
        if self.job_id and self.job_id != -1 and not self.max_array_launch_parallel:
            parts.append(f"afterany:{self.job_id}")
        return ",".join(parts)

    @property
    def arrays(self) -> list[str]:
        """The ids of this stage's array jobs (without its merge_stats job)."""
        return self.submitted.ids[:-1]


def sbatch_directives(arguments: tuple[str, ...]) -> dict[str, str]:
    """``--sbatch-arg`` values (``--exclusive``, ``--constraint=cpu``) as datatrove's ``sbatch_args``
    (``{"exclusive": "", "constraint": "cpu"}``, written as ``#SBATCH --KEY[=VALUE]``)."""
    return dict(argument.removeprefix("--").partition("=")[::2] for argument in arguments)


def slurm_executor(
    pipeline: list[PipelineStep],
    slurm: SlurmOptions,
    *,
    tasks: int,
    workers: int | None,
    logging_dir: Path,
    job_name: str,
    max_array_size: int,
    depends: ChainedSlurmExecutor | None = None,
) -> ChainedSlurmExecutor:
    """One stage as Slurm array jobs: ``tasks`` tasks, at most ``workers`` running at once (the array's
    ``%`` limit; None: no limit), asking for what ``slurm`` says."""
    return ChainedSlurmExecutor(
        pipeline,
        tasks=tasks,
        logging_dir=str(logging_dir),
        depends=depends,
        time=slurm.time,
        partition=slurm.partition,
        cpus_per_task=slurm.cpus_per_task,
        mem_per_cpu_gb=slurm.mem_per_cpu_gb,
        qos=slurm.qos,
        sbatch_args={
            **({"account": slurm.account} if slurm.account else {}),
            **sbatch_directives(slurm.sbatch_args),
        },
        workers=workers or -1,
        job_name=job_name,
        env_command=environment_line(slurm.env),
        max_array_size=max_array_size,
    )


def check_can_submit(tag: str, where: Path, what: str) -> None:
    """Raise SlurmError unless sbatch is here and no job of ``what`` (``"build"``) into ``where`` (its
    jobs' names end with ``tag``) is still queued: a second submission would run the same tasks twice."""
    if shutil.which("sbatch") is None:
        raise SlurmError("--executor slurm: sbatch is not on PATH; run this where Slurm is installed")
    ensure_user()
    queued = queued_jobs(tag)
    if queued:
        raise SlurmError(
            f"{where}: jobs {', '.join(queued)} of this {what} are still queued; "
            "wait for them (squeue) or scancel them, then rerun"
        )


def submit_chain(chain: Mapping[str, ChainedSlurmExecutor]) -> None:
    """Submit every stage (the last one submits those it depends on first). An sbatch that fails (its
    message is on stderr already) is one line naming the jobs it had submitted before, still queued."""
    try:
        list(chain.values())[-1].run()
    except subprocess.CalledProcessError as err:
        before = [job for executor in chain.values() for job in executor.submitted.ids]
        queued = f"; jobs {', '.join(before)} were submitted before it: scancel them" if before else ""
        raise SlurmError(
            f"sbatch failed (exit {err.returncode}, its message is above): check --partition, --qos, "
            f"--account, --slurm-time, --mem-per-cpu-gb and --sbatch-arg{queued}"
        ) from None


def submitted_line(name: str, executor: ChainedSlurmExecutor) -> str:
    """``stage write: 2 of 4 tasks submitted as job 17 (2 done before)``, or that it was done before."""
    tasks, to_run = executor.tasks, executor.to_run or 0
    if not to_run:
        return f"stage {name}: done before ({tasks} task{'s' if tasks != 1 else ''})"
    arrays = executor.arrays
    jobs = f"job{'s' if len(arrays) != 1 else ''} {', '.join(arrays)}"
    before = f" ({tasks - to_run} done before)" if to_run < tasks else ""
    merge = f", then job {executor.submitted.ids[-1]} merges their stats"
    counted = f"{to_run} of {tasks} task{'s' if tasks != 1 else ''}"
    return f"stage {name}: {counted} submitted as {jobs}{before}{merge}"
