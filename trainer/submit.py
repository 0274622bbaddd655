"""``mmbert-train submit``: one phase as a Slurm batch job that resumes itself until it is done.

The script it writes (``RUN/submit.sbatch``, kept beside the run so that ``sbatch`` on it
again continues the run) starts ``torchrun`` on every node through one ``srun`` task per
node, with the rendezvous on the job's first node at a port drawn from the job id (two
jobs on one node never share one), and trains with ``--resume``:

- Slurm sends the batch shell ``SIGUSR1`` ``warning`` seconds before the time limit
  (``--signal=B:USR1@N``); the shell passes it to the job's steps (``scancel --signal``),
  torchrun's agent passes it to its workers (``--signals-to-handle``; without it USR1 ends
  the agent, and its workers with it, unsaved), and the trainer finishes its step,
  checkpoints and exits. torchrun gives its workers 30 s before it kills them. The shell then requeues the job
  (``scontrol requeue``, at most ``max_requeues`` times: ``SLURM_RESTART_COUNT``), and the
  requeued job resumes from that checkpoint.
- A job preempted by the scheduler gets SIGTERM everywhere, which the trainer treats the
  same way; the partition's preemption mode decides whether Slurm requeues it.
- A job cancelled with ``scancel`` is not requeued: submitting again resumes it.

A phase submitted with ``--init RUN`` while a job of RUN is still queued waits for it to end well
(``--dependency=afterok``), so the three phases can be submitted one after another at once.
Every job's name ends with a tag of its run directory, which is how they are found in ``squeue``.

No torch here: ``--dry-run`` prints the script at once.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mixtures.slurm import SlurmError, job_tag, queued_jobs, submitted_job_id
from trainer.launch import PORT_BASE, PORT_SPAN  # the same rendezvous ports as srun's tasks
from trainer.overrides import flag

SCRIPT_NAME = "submit.sbatch"


# After the #SBATCH lines; @NAMES@ are filled in by sbatch_script.
_BODY = """set -u
@ENV@
warned=0
# the time limit is near: every rank checkpoints after its step and exits; the job is requeued below
trap 'warned=1; echo "time limit in sight: checkpointing"; scancel --signal=USR1 "$SLURM_JOB_ID"' USR1
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=$((@PORT@))
@LAUNCH@ &
pid=$!
# `wait` returns early when the trap runs: wait again until the step has ended
while :; do wait "$pid"; status=$?; kill -0 "$pid" 2>/dev/null || break; done
if [ "$status" -ne 0 ] && [ "$warned" = 1 ] && [ "${SLURM_RESTART_COUNT:-0}" -lt @MAX_REQUEUES@ ]; then
    echo "requeueing job $SLURM_JOB_ID to continue the run"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
"""


class SubmitError(SlurmError):
    """The job cannot be written or submitted; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    """What the Slurm job asks for, each a flag of ``mmbert-train submit``."""

    nodes: int = flag("Nodes to train on (one torchrun per node).", 1)
    gpus_per_node: int = flag("GPUs per node; 0 trains on the nodes' CPUs.", 0)
    procs_per_node: int | None = flag("Ranks per node (default: --gpus-per-node, or 1 on CPUs).")
    cpus_per_task: int | None = flag("CPUs per node for the ranks and their data loaders (--cpus-per-task).")
    mem: str | None = flag("Memory per node, as sbatch takes it (e.g. 200G).")
    time: str | None = flag("Time limit of one job, as sbatch takes it (e.g. 2-00:00:00 or 4:00:00).")
    partition: str | None = flag("Slurm partition.")
    account: str | None = flag("Slurm account to charge.")
    qos: str | None = flag("Slurm quality of service.")
    warning: int = flag("Seconds before the time limit to checkpoint and requeue the job.", 300)
    max_requeues: int = flag("Requeue the job at most this many times after its time limit.", 20)
    env: str | None = flag(
        "A shell line the job runs first, e.g. 'source .venv/bin/activate' or 'conda activate mmbert' "
        "(default: this installation's bin directory first on PATH)."
    )
    sbatch_args: tuple[str, ...] = flag("Another sbatch argument, e.g. --exclusive (repeatable).", ())

    def check(self) -> None:
        """Raise SubmitError on a request Slurm would refuse or that cannot train."""
        for name in ("nodes", "warning", "max_requeues", "gpus_per_node"):
            least = 1 if name == "nodes" else 0
            if getattr(self, name) < least:
                raise SubmitError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(self, name)}")
        for name in ("procs_per_node", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SubmitError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    @property
    def ranks_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1


def sbatch_script(
    options: SubmitOptions, phase: str, run: Path, train_args: Sequence[str], after: Sequence[str] = ()
) -> str:
    """The batch script of one phase's run in directory ``run``; ``train_args`` are mmbert-train's
    flags (``--manifest`` and the rest, all paths absolute), to which ``--output RUN --resume`` is added.
    The job starts once the jobs ``after`` have ended well (``afterok``), if any are given."""
    options.check()
    run = run.resolve()
    directives = [
        f"--job-name=mmbert-{phase}-{job_tag(run)}",
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",  # one torchrun per node; it starts the node's ranks
        *([f"--gpus-per-node={options.gpus_per_node}"] if options.gpus_per_node else []),
        *([f"--cpus-per-task={options.cpus_per_task}"] if options.cpus_per_task else []),
        *([f"--mem={options.mem}"] if options.mem else []),
        *([f"--time={options.time}"] if options.time else []),
        *([f"--partition={options.partition}"] if options.partition else []),
        *([f"--account={options.account}"] if options.account else []),
        *([f"--qos={options.qos}"] if options.qos else []),
        f"--signal=B:USR1@{options.warning}",
        "--requeue",
        "--open-mode=append",  # a requeued job adds to the same log
        f"--output={run}/slurm-%j.out",
        f"--chdir={Path.cwd()}",
        # a job whose phase before failed or was cancelled ends (DependencyNeverSatisfied), never pending
        *([f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"] if after else []),
        *options.sbatch_args,
    ]
    env = options.env or f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"
    train = shlex.join(["mmbert-train", *train_args, "--output", str(run), "--resume"])
    torchrun = (
        f'torchrun --nnodes="$SLURM_NNODES" --nproc-per-node={options.ranks_per_node} '
        '--rdzv-backend=c10d --rdzv-endpoint="$head:$port" --rdzv-id="$SLURM_JOB_ID" '
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --no-python"
    )
    header = [
        "#!/bin/bash",
        f"# mmbert-train submit: phase {phase} into {run}. `sbatch` this file again to continue the run.",
        *(f"#SBATCH {shlex.quote(directive)}" for directive in directives),
    ]
    body = (
        _BODY.replace("@ENV@", env)
        .replace("@LAUNCH@", f"srun --kill-on-bad-exit=1 {torchrun} {train}")
        .replace("@PORT@", f"{PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}")
        .replace("@MAX_REQUEUES@", str(options.max_requeues))
    )
    return "\n".join(header) + "\n" + body


def jobs_of(run: Path) -> list[str]:
    """The queued or running jobs training ``run`` (their names end with its tag)."""
    return queued_jobs(job_tag(run))


def check_not_queued(run: Path) -> None:
    """Raise SubmitError while a job of ``run`` is queued: a second one would only wait for its lock."""
    queued = jobs_of(run)
    if queued:
        raise SubmitError(
            f"{run}: job {', '.join(queued)} of this run is still queued or running; it continues the run "
            "(scancel it first to submit it anew)"
        )


def submit(script: Path) -> str:
    """Submit ``script`` with sbatch; return its job id. Raises SubmitError naming sbatch's complaint."""
    if shutil.which("sbatch") is None:
        raise SubmitError(
            f"sbatch is not on PATH: run this on a Slurm login node, or `sbatch {script}` there"
        )
    done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        complaint = (done.stderr or done.stdout).strip().splitlines()
        raise SubmitError(
            f"sbatch {script} failed: {complaint[-1] if complaint else f'exit {done.returncode}'}"
        )
    return submitted_job_id(done.stdout)
