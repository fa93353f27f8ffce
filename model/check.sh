#!/usr/bin/env bash
# Check django-marathon's models exhaustively with spin, then show that each
# known bad design, put back into a model, fails with a counterexample.
#
#   bash model/check.sh            # everything, JOBS=min(2, cores) at a time
#   JOBS=1 bash model/check.sh     # one check at a time
#   KEEP=1 bash model/check.sh     # keep the build directory and its trails
#
# Needs spin and gcc. Builds in a temporary directory. Exits non-zero if any
# real check finds an error or does not finish (every search must be
# exhaustive: no bitstate, no hash compaction, no depth or memory cut-off),
# or if any bad design passes. See model/README.rst.
set -u

here=$(cd "$(dirname "$0")" && pwd)
for tool in spin gcc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "check.sh: $tool is not installed (apt-get install spin gcc)" >&2
        exit 2
    fi
done
cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
jobs=${JOBS:-$((cores < 2 ? cores : 2))}
if [ "${BASH_VERSINFO[0]}" -lt 4 ] || { [ "${BASH_VERSINFO[0]}" -eq 4 ] && [ "${BASH_VERSINFO[1]}" -lt 3 ]; }; then
    jobs=1  # no `wait -n`
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/marathon-model.XXXXXX")
if [ -n "${KEEP:-}" ]; then
    echo "check.sh: builds and trails kept in $work"
else
    trap 'rm -rf "$work"' EXIT
fi

# ---- the checks ----
# id | kind (check: must pass; mutant: a bad design, must fail;
#   assumption: an assumption dropped, must fail) | model | spin -D flags |
#   gcc flags | pan flags | title | properties
# Checks search depth-first; the others breadth-first (-DBFS), for the
# shortest counterexample.
specs=(
"P1|check|protocol.pml|-DMAXID=3|-DSAFETY|-m200000|protocol: safety (2 holders, 3 acquisitions; pauses, crashes, lost connections, drift)|two_believe_before_deadline lost_not_reported_before_insert release_changed_other_row heartbeat_changed_other_row"
"P2|check|protocol.pml|-DMAXID=3 -DTIMELY|-DSAFETY|-m200000|protocol: liveness as bounded response (holder 0 live, database answers in time)|live_holder_lost dead_holder_not_stale (and all of P1's)"
"P3|check|protocol.pml|-DMAXID=2 -DWRITES -DFAILOVER -DFENCE_ONLY|-DSAFETY|-m200000|protocol: the guarded resource, with or without a failover that loses the newest row|write_from_older_holder"
"T1|check|threads.pml|-DAPP0=2 -DAPP1=1|-DSAFETY -DCOLLAPSE|-m200000|threads: registry, heartbeat, session, reporter (App0 acquires twice, App1 once)|hold_without_live_heartbeat report_lost_or_thread_left, no deadlock (invalid end states)"
"T2|check|threads.pml|-DFORK -DAPP0=0 -DAPP1=1|-DSAFETY|-m200000|threads: fork while a thread holds the mutex; the child takes a lock of its own|hold_without_live_heartbeat report_lost_or_thread_left, no deadlock, in parent and child"
"T3|check|threads.pml|-DLIVENESS -DFOREVER -DAPP0=1 -DAPP1=1|-DNFAIR=4|-a -f -m200000 -N live|threads: liveness under weak fairness (ltl live)|a held hold is beaten again and again; with no lock held for good, every thread ends"
"Ma|mutant|threads.pml|-DAPP0=2 -DAPP1=1 -DMUTANT_EMPTY_SNAPSHOT|-DSAFETY -DBFS|-m200000|(a) 1.0.0: the snapshot taken after _wait(); the dead thread kept registered|"
"Mb|mutant|protocol.pml|-DMAXID=3 -DMUTANT_TAKER_STALE|-DSAFETY -DBFS|-m200000|(b) staleness judged by the taker's stale_after, not the one stored in the row|"
"Mc|mutant|protocol.pml|-DMAXID=3 -DMUTANT_UNCONDITIONAL_TAKEOVER|-DSAFETY -DBFS|-m200000|(c) takeover by an unconditional delete|"
"Md|mutant|protocol.pml|-DMAXID=3 -DMUTANT_RELEASE_BY_NAME|-DSAFETY -DBFS|-m200000|(d) release by name only|"
"Me|mutant|protocol.pml|-DMAXID=3 -DMUTANT_HOST_CLOCK|-DSAFETY -DBFS|-m200000|(e) staleness by the hosts' clocks (one runs H/2 ahead)|"
"Mf|mutant|protocol.pml|-DMAXID=3 -DMUTANT_LATE_LOSS|-DSAFETY -DBFS|-m200000|(f) loss reported only at stale_after, not stale_after - heartbeat/2|"
"Mg|mutant|protocol.pml|-DMAXID=3 -DMUTANT_CONFIRMED_AFTER_ANSWER|-DSAFETY -DBFS|-m200000|(g) 1.0.0's acquire: confirmed read after the insert's answer|"
"Mh|mutant|threads.pml|-DFORK -DAPP0=0 -DAPP1=1 -DMUTANT_FORK_KEEPS_MUTEX|-DSAFETY -DBFS|-m200000|(h) the child keeps the parent's mutex (no register_at_fork)|"
"A1|assumption|protocol.pml|-DMAXID=2 -DFAILOVER|-DSAFETY -DBFS|-m200000|failover to an asynchronous replica: two holders believe at once|"
"A2|assumption|protocol.pml|-DMAXID=2 -DWRITES -DFAILOVER -DSEQ_BACK -DFENCE_ONLY|-DSAFETY -DBFS|-m200000|failover where the id sequence goes back: the fence no longer protects|"
"A3|assumption|protocol.pml|-DMAXID=3 -DD=2|-DSAFETY -DBFS|-m200000|drift of heartbeat/2: no margin left to report the loss in time|"
"A4|assumption|protocol.pml|-DMAXID=3 -DTIMELY -DSLOW_STRAYS|-DSAFETY -DBFS|-m200000|a statement left behind runs any time later: a dead holder's lock stays fresh|"
)

# ---- one check: build in its own directory, run pan, summarize ----
run_one() {
    local id=$1 kind=$2 model=$3 dflags=$4 ccflags=$5 panflags=$6
    local dir=$work/$id out=$work/$id.result
    mkdir -p "$dir" && cp "$here/$model" "$dir/"
    local start=$SECONDS
    (
        cd "$dir" || exit 1
        # shellcheck disable=SC2086
        spin $dflags -a "$model" >spin.out 2>&1 || { echo "status=spin-failed"; exit; }
        # shellcheck disable=SC2086
        gcc -O2 -w -DMEMLIM=2048 $ccflags -o pan pan.c >gcc.out 2>&1 || { echo "status=gcc-failed"; exit; }
        # shellcheck disable=SC2086
        ./pan $panflags >pan.out 2>&1
        echo "pan_rc=$?"
        grep -o 'errors: [0-9]*' pan.out | head -1 | sed 's/errors: /errors=/'
        grep -o 'depth reached [0-9]*' pan.out | head -1 | sed 's/depth reached /depth=/'
        sed -n 's/^ *\([0-9.e+]*\) states, stored.*/states=\1/p' pan.out | head -1
        sed -n 's/^pan: elapsed time \([0-9.e+]*\) seconds/time=\1/p' pan.out | head -1
        if grep -qE 'reached -DMEMLIM bound|max search depth too small|Search not completed|out of memory' pan.out; then
            echo "incomplete=yes"
        fi
        first=$(grep -m1 '^pan:1: ' pan.out | sed 's/^pan:1: //; s/  */ /g')
        echo "first=$first"
        if [ -e "$model.trail" ]; then
            # shellcheck disable=SC2086
            spin -t $dflags "$model" >trail.out 2>&1
            steps=$(sed -n 's/^spin: trail ends after \([0-9]*\) steps.*/\1/p' trail.out | head -1)
            echo "steps=${steps:-?}"
            # the story: the model's "@ ..." lines, runs of ticks counted
            story=$(sed -n 's/^[[:space:]]*@ //p' trail.out | awk '
                $0 == "tick" { ticks++; next }
                { if (ticks) { printf "[%d tick%s] ", ticks, (ticks > 1 ? "s" : ""); ticks = 0 }
                  printf "%s; ", $0 }
                END { if (ticks) printf "[%d tick%s]", ticks, (ticks > 1 ? "s" : "") }')
            echo "story=$story"
        fi
    ) >"$out" 2>&1
    echo "wall=$((SECONDS - start))" >>"$out"
}

# ---- run them, JOBS at a time ----
running=0
for spec in "${specs[@]}"; do
    IFS='|' read -r id kind model dflags ccflags panflags title props <<<"$spec"
    if [ "$jobs" -le 1 ]; then
        run_one "$id" "$kind" "$model" "$dflags" "$ccflags" "$panflags"
        continue
    fi
    run_one "$id" "$kind" "$model" "$dflags" "$ccflags" "$panflags" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

# ---- report ----
value() { sed -n "s/^$1=//p" "$2" | head -1; }
bad=0
table=()
echo "spin: $(spin -V 2>&1 | head -1); gcc: $(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion); jobs: $jobs"
for spec in "${specs[@]}"; do
    IFS='|' read -r id kind model dflags ccflags panflags title props <<<"$spec"
    r=$work/$id.result
    errors=$(value errors "$r"); states=$(value states "$r"); depth=$(value depth "$r")
    time=$(value time "$r"); first=$(value first "$r"); steps=$(value steps "$r")
    story=$(value story "$r")
    incomplete=$(value incomplete "$r"); status=$(value status "$r")
    echo
    echo "== $id  $title"
    echo "   $model  spin $dflags  |  gcc $ccflags  |  pan $panflags"
    [ -n "$props" ] && echo "   properties: $props"
    echo "   states stored: ${states:-?}   depth reached: ${depth:-?}   time: ${time:-?} s   errors: ${errors:-?}"
    if [ -n "$status" ]; then
        verdict="BROKEN ($status)"; bad=1
    elif [ "$kind" = check ]; then
        if [ "${errors:-x}" = 0 ] && [ -z "$incomplete" ]; then
            verdict="ok"
        else
            verdict="FAILED"; bad=1
            [ -n "$incomplete" ] && verdict="FAILED (search incomplete)"
            [ -n "$first" ] && echo "   counterexample: $first (trail: ${steps:-?} steps)"
            [ -n "$story" ] && echo "   trail: $story"
        fi
    else
        if [ -n "${errors:-}" ] && [ "$errors" -ge 1 ] 2>/dev/null; then
            verdict="fails, as it must"
            echo "   counterexample: $first; trail replayed: ${steps:-?} steps"
            [ -n "$story" ] && echo "   trail: $story"
        else
            verdict="PASSED, but must fail"; bad=1
        fi
    fi
    echo "   -> $verdict"
    table+=("$(printf '%-3s %-10s %12s %8s %8s  %s' "$id" "$kind" "${states:-?}" "${depth:-?}" "${time:-?}" "$verdict")")
done

echo
echo "Summary"
printf '%-3s %-10s %12s %8s %8s  %s\n' id kind states depth "time(s)" result
for line in "${table[@]}"; do echo "$line"; done
if [ "$bad" = 0 ]; then
    echo "all checks passed; every bad design and dropped assumption failed"
else
    echo "check.sh: FAILED" >&2
fi
exit "$bad"
