# steal.sh, sourced by the benchmark scripts (the shell side of steal.h): the hypervisor's
# steal from /proc/stat. cpu_steal prints "STEAL TOTAL" jiffies of all CPUs; steal_pct
# READING0 READING1 the share of the time between two readings that the hypervisor gave
# to other guests (wall-clock figures taken while much of it was stolen say little about
# the code).
cpu_steal() { awk '/^cpu /{t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t}' /proc/stat 2> /dev/null || true; }
steal_pct() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
    if (y[2] > x[2]) printf "hypervisor steal %.0f%% of the CPUs'"'"' time", 100 * (y[1] - x[1]) / (y[2] - x[2]);
    else printf "steal unknown" }'
}
