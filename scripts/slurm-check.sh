#!/usr/bin/env bash
# The Slurm exporter against a real Slurm: a one-node cluster on this machine (Debian's
# slurm-wlm + munge), the demo experiment cut to 2 losses x 2 seeds x 1 epoch on flex,
# submitted with the exported submit.sh; then the metrics must be bit-identical (all but the
# wall-clock columns) to the same grid run with a plain `lossbench run`, and the report job
# must have written the report. The daemons are stopped at the end, whatever happens.
#
# Usage: scripts/slurm-check.sh LOSSBENCH_BINARY   (needs root: installs packages, starts daemons)
set -euo pipefail
cd "$(dirname "$0")/.."
lossbench=$(readlink -f "${1:?usage: scripts/slurm-check.sh LOSSBENCH_BINARY}")

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

work=$(mktemp -d /tmp/lossbench-slurm.XXXXXX)
chmod 755 "$work"
host=$(hostname -s)
conf=/etc/slurm/slurm.conf
backup=""
if [ -e "$conf" ]; then backup="$work/slurm.conf.orig"; cp "$conf" "$backup"; fi

stop() {
  scontrol shutdown >/dev/null 2>&1 || true
  pkill -x slurmd >/dev/null 2>&1 || true
  pkill -x slurmctld >/dev/null 2>&1 || true
  pkill -x munged >/dev/null 2>&1 || true
  for _ in $(seq 1 20); do
    running=0
    for d in slurmctld slurmd slurmstepd slurmscriptd munged; do
      pgrep -x "$d" >/dev/null && running=1
    done
    [ "$running" = 0 ] && break
    sleep 0.5
  done
  if [ -n "$backup" ]; then cp "$backup" "$conf"; else rm -f "$conf"; fi
}
trap stop EXIT

mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat >"$conf" <<EOF
ClusterName=lossbench-check
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

chown -R munge:munge /run/munge /etc/munge 2>/dev/null || true
runuser -u munge -- munged --force
slurmctld
slurmd
for _ in $(seq 1 60); do
  state=$(sinfo -h -o %t 2>/dev/null | head -n1 || true)
  [ "$state" = "idle" ] && break
  sleep 1
done
[ "$state" = "idle" ] || { echo "slurm node did not come up (state '$state')"; cat "$work"/*.log; exit 1; }

# The demo cut to 2 losses x 2 seeds; 1 epoch each through --epochs.
exp="$work/slurm-check.toml"
python3 - "$exp" "$work/data" <<'PY'
import re, sys
text = open("experiments/demo.toml").read()
head, _, _ = text.partition("[[losses]]")
head = head.replace('name = "demo"', 'name = "slurm-check"')
head = re.sub(r'dir = "[^"]*"', f'dir = "{sys.argv[2]}"', head)
head += '[[losses]]\nname = "softmax"\n\n[[losses]]\nname = "arcface"\nparams = { s = 16.0, m = 0.3 }\n'
open(sys.argv[1], "w").write(head)
PY

"$lossbench" export slurm "$exp" --results "$work/cluster" --out "$work/jobs" --report-out "$work/report" \
  --gpus-per-run 0 --cpus-per-run 1 --backend flex --parallel 2 --epochs 1 --lossbench "$lossbench"
submitted=$(bash "$work/jobs/submit.sh")
echo "$submitted"
for _ in $(seq 1 600); do
  [ -z "$(squeue -h 2>/dev/null)" ] && break
  sleep 1
done
[ -z "$(squeue -h)" ] || { echo "jobs still queued after 10 minutes"; squeue; exit 1; }

"$lossbench" run "$exp" --results "$work/plain" --backend flex --epochs 1 >/dev/null
python3 - "$work" <<'PY'
import csv, pathlib, sys
work = pathlib.Path(sys.argv[1])
clock = {"epoch_seconds", "images_per_second"}
runs = sorted(p.relative_to(work / "plain") for p in (work / "plain").glob("slurm-check/*/seed-*"))
assert len(runs) == 4, runs
for run in runs:
    rows = {}
    for side in ("plain", "cluster"):
        with open(work / side / run / "metrics.csv") as f:
            rows[side] = [{k: v for k, v in r.items() if k not in clock} for r in csv.DictReader(f)]
    assert rows["plain"] == rows["cluster"], f"{run}: {rows}"
    print(f"{run}: identical")
PY
test -s "$work/report/index.html" \
  || { echo "the report job wrote no report"; ls "$work/jobs/logs"; cat "$work"/jobs/logs/*; exit 1; }
echo "slurm check passed: 4 array tasks and the report job ran; metrics identical to a plain run"
