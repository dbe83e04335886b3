"""A real single-node SLURM cluster on loopback for the tests: munged, slurmctld and slurmd.

Everything lives in one fresh temp dir (config, munge key and socket, state, spool, logs, pid files)
on free ports, so it never touches a system SLURM; the daemons run in the foreground as our children
and are stopped by PID. Needs root (slurmd launches jobs) and Debian's `slurm-wlm` and `munge`
(scripts/install-slurm.sh). `start_cluster()` raises ClusterUnavailable with the reason otherwise.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
PARTITION = "debug"
NODE = "localhost"
CRED_EXPIRE_S = 5  # also how long a requeued job waits before it may start again (SLURM's default 120)


class ClusterUnavailable(RuntimeError):
    """Why the test cluster cannot run here."""


def _free_ports(count: int) -> list[int]:
    """Distinct ports free on loopback right now (all held open while choosing, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return total_kb // 1024


def slurm_conf(root: Path, munge_socket: Path, ctld_port: int, slurmd_port: int, cpus: int, memory_mb: int) -> str:
    return f"""\
ClusterName=dndtest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire={CRED_EXPIRE_S}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups needed: plain process tracking, no task binding, nothing accounted.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_interval=1
MpiDefault=none
ReturnToService=2
# Fast signals: SIGKILL 2 s after SIGTERM; finished jobs stay listed by squeue for 5 minutes.
KillWait=2
MinJobAge=300
InactiveLimit=0
# The node's configured CPUs and memory are used as given (memory is not enforced here).
SlurmdParameters=config_overrides
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """What client commands (sbatch, squeue, submitit) need to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env})
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def jobs(self) -> dict[str, tuple[str, str]]:
        """Every job SLURM lists (finished ones for MinJobAge): job id → (name, state)."""
        out = self.command("squeue", "--noheader", "--array", "--states=all", "--format=%i|%j|%T").stdout
        return {i: (name, state) for i, name, state in (line.split("|") for line in out.splitlines() if line)}

    def next_job_id(self) -> int:
        """SLURM's next job id: the difference between two readings counts the job ids handed out."""
        for line in self.command("scontrol", "show", "config").stdout.splitlines():
            if line.startswith("NEXT_JOB_ID"):
                return int(line.split("=")[1])
        raise RuntimeError("scontrol show config printed no NEXT_JOB_ID")

    def node_state(self) -> str:
        return self.command("sinfo", "--noheader", "--Node", f"--nodes={NODE}", "--format=%t", check=False).stdout.strip()

    def wait_until(self, condition, timeout_s: float, what: str, every_s: float = 0.2) -> None:
        """Poll `condition`; give up on the timeout or as soon as a daemon has died."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
            time.sleep(every_s)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.root / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"({name} absent)"

    def cancel_all(self, timeout_s: float = 30) -> None:
        """Cancel every job and wait until none is alive, so no job process outlives the cluster."""
        live = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED")
        ids = [i for i, (_, state) in self.jobs().items() if state in live]
        if ids:
            self.command("scancel", *sorted({i.split("_")[0] for i in ids}), check=False)
        self.wait_until(
            lambda: not any(state in live for _, state in self.jobs().values()), timeout_s, "cancelled jobs to end"
        )

    def stop(self) -> None:
        """Stop the daemons by PID (slurmd, slurmctld, munged) and remove the temp dir."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            try:
                self.cancel_all()
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired):
                pass  # the daemons go anyway
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def _check_prerequisites() -> None:
    missing = [command for command in REQUIRED_COMMANDS if shutil.which(command) is None]
    if missing:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed (scripts/install-slurm.sh installs slurm-wlm and munge)")
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster's slurmd must run as root")
    try:
        pwd.getpwnam("munge")
    except KeyError as err:
        raise ClusterUnavailable("no 'munge' user (the munge package creates it)") from err


def _start(cluster: SlurmCluster, name: str, command: list[str], **popen) -> subprocess.Popen:
    log = open(cluster.root / f"{name}.out", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    log.close()
    cluster.processes[name] = process
    return process


def _start_munge(cluster: SlurmCluster) -> Path:
    """munged as the munge user, with its own key and socket in the cluster's temp dir."""
    munge = pwd.getpwnam("munge")
    directory = cluster.root / "munge"
    directory.mkdir()
    directory.chmod(0o711)  # munged wants everybody to reach the socket, nobody to list the key
    key = directory / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for path in (directory, key):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    socket_path = directory / "munge.socket"
    _start(
        cluster, "munged",
        ["munged", "--foreground", f"--socket={socket_path}", f"--key-file={key}", f"--pid-file={directory}/munged.pid",
         f"--log-file={directory}/munged.log", f"--seed-file={directory}/munged.seed", "--num-threads=2"],
        user=munge.pw_uid, group=munge.pw_gid,
    )
    cluster.wait_until(socket_path.exists, 10, "munged's socket")
    return socket_path


def start_cluster(cpus: int = 2, ready_timeout_s: float = 60) -> SlurmCluster:
    """Start the cluster and wait until its node is idle; ClusterUnavailable (cluster stopped) if it cannot."""
    _check_prerequisites()
    root = Path(tempfile.mkdtemp(prefix="dnd-slurm-"))
    root.chmod(0o755)  # the munge user must reach its socket below
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    cluster = SlurmCluster(root=root, conf=conf)
    env = {**os.environ, **cluster.env}
    try:
        munge_socket = _start_munge(cluster)
        ctld_port, slurmd_port = _free_ports(2)
        conf.write_text(slurm_conf(root, munge_socket, ctld_port, slurmd_port, cpus, max(_node_memory_mb(), 16000)))
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)], env=env)
        cluster.wait_until(
            lambda: cluster.command("scontrol", "ping", check=False).stdout.find("UP") >= 0, ready_timeout_s, "slurmctld"
        )
        _start(cluster, "slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(conf)], env=env)
        cluster.wait_until(lambda: cluster.node_state() == "idle", ready_timeout_s, "the node to be idle")
    except (TimeoutError, OSError, RuntimeError, subprocess.SubprocessError) as err:
        dead = {name: p.returncode for name, p in cluster.processes.items() if p.poll() is not None}
        reason = (
            f"{err} (exited: {dead or 'none'}; node state {cluster.node_state() if conf.exists() else '?'!r})\n"
            f"slurmctld.log:\n{cluster.log_tail('slurmctld.log')}\nslurmd.log:\n{cluster.log_tail('slurmd.log')}\n"
            f"munged.out:\n{cluster.log_tail('munged.out')}"
        )
        cluster.stop()
        raise ClusterUnavailable(reason) from err
    return cluster
