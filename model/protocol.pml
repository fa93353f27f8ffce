/*
 * protocol.pml -- django-marathon's lock protocol between processes.
 *
 * Several holders (processes, NH of them) and one database, all about one
 * lock name, so the table has at most one row. Time is discrete: the Clock
 * process ticks the database's clock, and with it each holder's monotonic
 * clock, which may fall behind the database's by at most D ticks per window
 * (the drift bound; see model/README.rst). Every database statement runs
 * atomically at one instant of the database's clock and commits at once.
 *
 * Between any two of its steps a holder may pause for any time (SIGSTOP, GC,
 * a frozen VM): the Clock ticks on without it. Only holder 0 is never paused,
 * so that "lost is reported in time" can be checked for a running holder.
 * Any holder may crash (a new process with nothing takes its place) and lose
 * its connection (a statement that never runs, or whose answer never comes).
 *
 * Timing, in ticks of a quarter interval: heartbeat H = 4 for everyone;
 * stale_after 10 for holder 0 and 8 for the others (both >= 2*H, as
 * marathon.E003 requires), stored in the row. A hold's loss deadline is
 * confirmed + stale_after - H/2 on its monotonic clock. A row is stale once
 * its age (DB ticks since heartbeat_at) reaches its stale_after: in real time
 * "age > stale_after" may already hold within that tick, so the model lets a
 * taker in one tick early (the safe side).
 *
 * Bounds: NH = 2 holders at once (each may crash and come back as a new
 * process), MAXID acquisitions (row ids); time itself is unbounded (every
 * counter saturates), so every interleaving and every timing within these
 * bounds is explored.
 *
 * Switches (spin -D...):
 *   TIMELY         the liveness run: the database answers every statement of
 *                  holder 0 within the tick, and runs or kills a statement
 *                  left behind before the next tick; holder 0 beats when due,
 *                  never pauses, crashes or loses its connection.
 *   MUTANT_TAKER_STALE, MUTANT_UNCONDITIONAL_TAKEOVER, MUTANT_RELEASE_BY_NAME,
 *   MUTANT_HOST_CLOCK, MUTANT_LATE_LOSS: the known bad designs (b)-(f);
 *   MUTANT_CONFIRMED_AFTER_ANSWER (g): 1.0.0's acquire, which read
 *                  `confirmed` after the insert's answer came back. Each must fail.
 *   FAILOVER       the database may fail over once to a replica that never
 *                  got the newest row (asynchronous replication).
 *   SEQ_BACK       with FAILOVER: the replica's id sequence is behind too.
 *   FENCE_ONLY     check only the guarded resource's property.
 *   SUSPEND        a monotonic clock that stops while the host is suspended
 *                  (no drift bound at all).
 *   D=2            a drift of H/2: all of the margin, none left to notice.
 *   SLOW_STRAYS    with TIMELY: a statement left behind may run any time later.
 */

#ifndef NH
#define NH    2     /* holders: 2 or 3 */
#endif
#ifndef MAXID
#define MAXID 4     /* row ids explored (acquisitions); keeps the model finite */
#endif
#define H     4     /* heartbeat interval, ticks: one tick is a quarter interval */
#define CAP   11    /* ages saturate here: above every stale_after */

#ifdef SUSPEND
#define D CAP       /* the monotonic clock may stop for as long as it likes */
#else
#ifndef D
#define D 1         /* drift bound: at most 1 tick (H/4) behind per window */
#endif
#endif

#define STALE(i) ((i) == 0 -> 10 : 8)   /* the holder's stale_after, stored in its row */
#ifdef MUTANT_LATE_LOSS
#define LOSS(i) STALE(i)                /* (f) lost only at stale_after */
#else
#define LOSS(i) (STALE(i) - H / 2)      /* _Hold.deadline: stale_after - heartbeat/2 */
#endif

#ifdef MUTANT_HOST_CLOCK
#define SKEW(i) ((i) == 1 -> 2 : 0)     /* (e) host 1's wall clock runs 2 ticks (H/2) ahead */
#else
#define SKEW(i) 0
#endif

#ifdef TIMELY
#define FLAKY(i) ((i) != 0)             /* may crash or lose its connection */
#else
#define FLAKY(i) true
#endif

/* holder states */
#define IDLE      0
#define INSERTING 1   /* `confirmed` read; the insert-or-read statement is on its way */
#define DELETING  2   /* the takeover DELETE is on its way */
#define HOLDING   3   /* acquired: registered, beaten, until release, loss or crash */
#define INSERTED  4   /* MUTANT_CONFIRMED_AFTER_ANSWER: the row is in, the answer not yet read */

/* the heartbeat's statement */
#define NONE 0
#define SENT 1        /* handed to the session; runs at the database at some later instant */
#define OK   2        /* it ran and matched our row */
#define GONE 3        /* it ran and our row was not there */
#define ERR  4        /* it never ran, or its answer was lost */

/* ---- the database: the row of the one name ---- */
byte rid;            /* 0: no row; else its id, the fence */
byte rtok;           /* its token (a holder's acquisition number: unique) */
byte rage;           /* DB now - heartbeat_at, saturated at CAP */
byte rstale;         /* the stale_after its holder stored in it */
byte rskew;          /* MUTANT_HOST_CLOCK: the skew of the clock that wrote heartbeat_at */
byte seq;            /* the id sequence: the last id handed out */
bool failed_over;    /* FAILOVER: it happened (once) */

/* ---- the guarded resource: accepts a write with fence >= the largest seen ---- */
byte maxfence;
byte maxgen;         /* ghost: acquisition number of the writer of maxfence */

/* ---- ghosts ---- */
byte gen;            /* acquisitions in true order; also each holder's token */
byte orphan;         /* ticks the row has had no running holder (TIMELY) */

/* ---- the holders ---- */
byte st[NH];
byte fence[NH];      /* its row's id */
byte tok[NH];        /* its token; also its acquisition number (ghost) */
bool lost[NH];       /* set once by the registry (here: by the holder's heartbeat) */
byte c[NH];          /* DB ticks since its `confirmed` instant, saturated at LATEST(i) */
byte beat[NH];       /* its heartbeat statement: NONE, SENT, OK, GONE, ERR */
byte s[NH];          /* DB ticks since that statement was sent */
bool retry[NH];      /* the last beat failed: the next one is due at once (interval/4) */
byte stray_id[NH];   /* an UPDATE left behind (timeout, crash) that may still run */
byte stray_tok[NH];

/* ---- properties: each flag is set where its property is broken ---- */
/* Two processes believe they hold the name at once only after the older one's
 * loss deadline has passed on its own monotonic clock. */
bool two_believe_before_deadline;
/* A running (never paused) holder's `lost` is set before anyone can insert. */
bool lost_not_reported_before_insert;
/* The guarded resource never accepts a write from a holder older than one it has seen. */
bool write_from_older_holder;
/* No release and no heartbeat ever changes another holder's row. */
bool release_changed_other_row;
bool heartbeat_changed_other_row;
/* Liveness, TIMELY: a live holder whose database answers in time never loses its lock. */
bool live_holder_lost;
/* Liveness, TIMELY: a row nobody beats any more (its holder crashed, lost it,
 * or never heard it was inserted) is stale, so the next acquire takes it over,
 * stale_after after its holder stopped. */
bool dead_holder_not_stale;

/* Drift: a monotonic clock that falls behind the database's by up to D ticks
 * over a window reaches the deadline LOSS(i) somewhere between LOSS(i) and
 * LOSS(i) + D ticks of the database's clock after `confirmed`. The holder may
 * act on its deadline anywhere in there, and is taken to believe it holds the
 * lock (worst case) until LATEST(i). */
#define LATEST(i) (LOSS(i) + D)

/* A holder believes it holds the name while `held` says so and its deadline has not passed. */
#define FRESH(j) (st[j] == HOLDING && !lost[j] && c[j] < LATEST(j))
#if NH == 3
#define FRESH2 FRESH(2)
#define STRAY2 (stray_id[2] != 0)
#define OWNED2 OWNED(2)
#else
#define FRESH2 0
#define STRAY2 false
#define OWNED2 false
#endif

inline check_exclusive() {
#ifndef FENCE_ONLY
    if
    :: (FRESH(0) + FRESH(1) + FRESH2) > 1 -> two_believe_before_deadline = true
    :: else
    fi;
    assert(!two_believe_before_deadline)
#else
    skip
#endif
}

/* At an insert by holder i: holder 0, which is never paused, knows it lost. */
inline check_reported(i) {
#ifndef FENCE_ONLY
    if
    :: i != 0 && st[0] == HOLDING && !lost[0] -> lost_not_reported_before_insert = true
    :: else
    fi;
    assert(!lost_not_reported_before_insert)
#else
    skip
#endif
}

/* A takeover judges the holder row: stale by the database's clock and the row's own stale_after. */
#if defined(MUTANT_TAKER_STALE)
#define JUDGED_STALE(i) (rage >= STALE(i))                  /* (b) by the taker's setting */
#elif defined(MUTANT_HOST_CLOCK)
#define JUDGED_STALE(i) (rage + SKEW(i) >= rstale + rskew)  /* (e) the taker's clock minus the writer's */
#else
#define JUDGED_STALE(i) (rage >= rstale)
#endif

/* _DELETE_STALE: DELETE ... WHERE id = t AND age > the row's stale_after */
#if defined(MUTANT_UNCONDITIONAL_TAKEOVER)
#define TAKEOVER_MATCHES(i, t) (rid == t)                   /* (c) no staleness condition */
#else
#define TAKEOVER_MATCHES(i, t) (rid == t && JUDGED_STALE(i))
#endif

/* The heartbeat's UPDATE ... SET heartbeat_at = DB now WHERE id = f AND token = k. */
inline run_update(i, f, k, matched) {
    if
    :: rid != 0 && rid == f && rtok == k ->
       if   /* the row it changes carries the token of the acquisition that sent it */
       :: !(rid == f && rtok == k) -> heartbeat_changed_other_row = true
       :: else
       fi;
       assert(!heartbeat_changed_other_row);
       rage = 0; rskew = SKEW(i); matched = true
    :: else -> matched = false
    fi
}

/* _Registry.lose(): set `lost` once; leave any UPDATE on its way behind. */
inline lose(i) {
    lost[i] = true; c[i] = 0; retry[i] = false;   /* its clock no longer matters */
    if
    :: beat[i] == SENT -> stray_id[i] = fence[i]; stray_tok[i] = tok[i]
    :: else
    fi;
    beat[i] = NONE; s[i] = 0
}

/* The holder is gone (crash) or done (release): a new process state, nothing held. */
inline forget(i) {
    if
    :: beat[i] == SENT -> stray_id[i] = fence[i]; stray_tok[i] = tok[i]
    :: else
    fi;
    st[i] = IDLE; fence[i] = 0; tok[i] = 0; lost[i] = false;
    c[i] = 0; beat[i] = NONE; s[i] = 0; retry[i] = false
}

/* The guarded resource: a write carries the writer's fence. */
inline resource_write(i) {
    printf("@ h%d writes with fence %d (largest seen %d)\n", i, fence[i], maxfence);
    if
    :: fence[i] >= maxfence ->
       if
       :: tok[i] < maxgen -> write_from_older_holder = true
       :: else
       fi;
       assert(!write_from_older_holder);
       maxfence = fence[i]; maxgen = tok[i]
    :: else -> skip   /* refused: an older fence */
    fi
}

/* Marathon._release_now(): DELETE WHERE id = fence AND token = token. */
inline release_delete(i) {
#ifdef MUTANT_RELEASE_BY_NAME
    if   /* (d) DELETE WHERE name = ... */
    :: rid != 0 ->
       if
       :: !(rid == fence[i] && rtok == tok[i]) -> release_changed_other_row = true
       :: else
       fi;
       assert(!release_changed_other_row);
       rid = 0
    :: else
    fi
#else
    if
    :: rid != 0 && rid == fence[i] && rtok == tok[i] -> rid = 0
    :: else
    fi
#endif
}

proctype Holder(byte i) {
    byte t;          /* the holder row's id, judged stale by the taker */
    bool matched;
end:
    do
    /* ---- Marathon._acquire(): `sent` (confirmed) is read before the statement is sent ---- */
    :: atomic { st[i] == IDLE && seq < MAXID -> st[i] = INSERTING; c[i] = 0;
                printf("@ h%d sends an insert\n", i) }

    /* _insert_or_read_holder(): one statement at the database */
    :: atomic { st[i] == INSERTING ->
        if
        :: rid == 0 && seq < MAXID ->       /* the insert wins: heartbeat_at = DB now, our stale_after */
           seq++; gen++;
           rid = seq; rtok = gen; rage = 0; rstale = STALE(i); rskew = SKEW(i);
           fence[i] = rid; tok[i] = gen; orphan = 0;
           printf("@ h%d inserts row %d\n", i, rid);
           check_reported(i);
           if
#ifdef MUTANT_CONFIRMED_AFTER_ANSWER
           :: st[i] = INSERTED              /* (g) its answer is read at some later instant */
#else
           :: st[i] = HOLDING; lost[i] = false; beat[i] = NONE;
              check_exclusive()             /* then _Registry.register(hold) */
#endif
           :: FLAKY(i) -> forget(i);        /* the answer is lost: the row is left behind */
              printf("@ h%d never gets the answer\n", i)
           fi
        :: rid == 0 && seq >= MAXID -> st[i] = IDLE   /* end of the explored ids */
        :: rid != 0 ->                      /* taken: the holder row (id, age, stale_after) */
           if
           :: JUDGED_STALE(i) -> t = rid; st[i] = DELETING;
              printf("@ h%d finds row %d stale (age %d)\n", i, rid, rage)
           :: else -> st[i] = IDLE          /* AlreadyRunning, or sleep and try again */
           fi
        :: FLAKY(i) -> st[i] = IDLE         /* the statement never ran: connection lost */
        fi }

    /* _take_or_take_over(): the conditional DELETE of the stale holder row, then the insert again */
    :: atomic { st[i] == DELETING ->
        if
        :: TAKEOVER_MATCHES(i, t) -> rid = 0;
           printf("@ h%d deletes row %d (age %d)\n", i, t, rage)
        :: else -> skip                     /* refreshed or gone meanwhile: nothing deleted */
        fi;
        t = 0;
        if
        :: st[i] = INSERTING                /* same round: `sent` was read before the first statement */
        :: FLAKY(i) -> st[i] = IDLE         /* its answer is lost */
        fi }

#ifdef MUTANT_CONFIRMED_AFTER_ANSWER
    :: atomic { st[i] == INSERTED ->         /* (g) 1.0.0: confirmed = time.monotonic() only now */
        c[i] = 0; st[i] = HOLDING; lost[i] = false; beat[i] = NONE;
        printf("@ h%d reads the answer: confirmed now\n", i);
        check_exclusive() }
#endif

    /* ---- holding: the application ---- */
    /* writes to the guarded resource, held or not as it believes */
#ifdef WRITES
    :: atomic { st[i] == HOLDING -> resource_write(i) }
#endif

    /* Marathon.release(): unregister; a lost hold sends nothing */
    :: atomic { st[i] == HOLDING ->
        printf("@ h%d releases\n", i);
        if
        :: !lost[i] -> release_delete(i)
        :: !lost[i] && FLAKY(i) -> skip     /* the DELETE never runs: the row goes stale */
        :: lost[i] -> skip
        fi;
        forget(i) }

    /* ---- holding: the heartbeat (_Heartbeat._beat) ---- */
    /* the UPDATE is handed to the session; `sent` is read first */
    /* _Heartbeat._wait(): due interval after the last confirmed send, or at once after a failure */
    :: atomic { st[i] == HOLDING && !lost[i] && beat[i] == NONE && (c[i] >= H || retry[i]) ->
                beat[i] = SENT; s[i] = 0; retry[i] = false;
                printf("@ h%d sends a beat\n", i) }

    /* _Session._refresh(): the database runs it */
    :: atomic { beat[i] == SENT ->
        run_update(i, fence[i], tok[i], matched);
        if
        :: matched -> beat[i] = OK; printf("@ h%d's beat refreshes row %d\n", i, rid)
        :: else -> beat[i] = GONE; s[i] = 0
        fi;
        if
        :: FLAKY(i) -> beat[i] = ERR; s[i] = 0   /* ...but the answer is lost */
        :: skip
        fi;
        matched = false }
    :: atomic { beat[i] == SENT && FLAKY(i) -> beat[i] = ERR; s[i] = 0 }   /* it never runs */

    /* the answer: confirmed = the time the beat was sent */
    :: atomic { beat[i] == OK -> c[i] = s[i]; beat[i] = NONE; s[i] = 0;
                printf("@ h%d confirmed\n", i);
                check_exclusive() }
    :: atomic { beat[i] == GONE ->          /* its row was deleted or taken over */
        printf("@ h%d lost: its row is gone\n", i);
#ifdef TIMELY
        if :: i == 0 -> live_holder_lost = true :: else fi;
        assert(!live_holder_lost);
#endif
        lose(i) }
    :: atomic { beat[i] == ERR -> beat[i] = NONE; s[i] = 0; retry[i] = true }   /* retried: interval/4 */

    /* the deadline passed before a beat confirmed it: stop waiting, mark lost */
    :: atomic { st[i] == HOLDING && !lost[i] && c[i] >= LOSS(i) ->
        printf("@ h%d lost: its deadline passed\n", i);
#ifdef TIMELY
        if :: i == 0 -> live_holder_lost = true :: else fi;
        assert(!live_holder_lost);
#endif
        lose(i) }

    /* ---- crash: SIGKILL, OOM, power; a new process takes its place ---- */
    :: atomic { FLAKY(i) && st[i] != IDLE -> forget(i); printf("@ h%d crashes\n", i) }
    od
}

/* ---- the database: runs (or kills) statements left behind ---- */
inline run_stray(j) {
    if
    :: run_update(j, stray_id[j], stray_tok[j], m);
       printf("@ a beat h%d left behind runs\n", j)
    :: skip                                 /* killed, or it never arrived */
    fi;
    stray_id[j] = 0; stray_tok[j] = 0; m = false
}

active proctype Database() {
    bool m;
end:
    do
    :: atomic { stray_id[0] != 0 -> run_stray(0) }
    :: atomic { stray_id[1] != 0 -> run_stray(1) }
#if NH == 3
    :: atomic { stray_id[2] != 0 -> run_stray(2) }
#endif
#ifdef FAILOVER
    /* failover to a replica that never got the newest row */
    :: atomic { !failed_over && rid != 0 ->
        failed_over = true;
        printf("@ failover: row %d is lost\n", rid);
#ifdef SEQ_BACK
        if :: rid == seq -> seq-- :: else fi;   /* nor the id it used */
#endif
        rid = 0 }
#endif
    od
}

/* ---- time ---- */

/* the row's age matters only up to its stale_after (the judging of MUTANT_TAKER_STALE too) */
#ifdef MUTANT_HOST_CLOCK
#define SATURATE CAP
#else
#define SATURATE rstale
#endif

/* what must happen before the clock may tick */
#define MUSTMARK(i) (st[i] == HOLDING && !lost[i] && c[i] >= LATEST(i))
#ifdef TIMELY
#define DUE0 (st[0] == HOLDING && !lost[0] && beat[0] == NONE && c[0] >= H + D)
#ifdef SLOW_STRAYS
#define STRAYS false    /* a statement left behind may run any time later */
#else
#define STRAYS (stray_id[0] != 0 || stray_id[1] != 0 || STRAY2)
#endif
#define URGENT (MUSTMARK(0) || DUE0 || beat[0] != NONE || st[0] == INSERTING || st[0] == DELETING || STRAYS)
#else
#define URGENT MUSTMARK(0)
#endif

/* the row has no running holder: nobody beats it */
#define OWNED(j) (st[j] == HOLDING && !lost[j] && fence[j] == rid && tok[j] == rtok)
#define ORPHAN (rid != 0 && !OWNED(0) && !OWNED(1) && !OWNED2)

/* one tick of the database's clock, as holder i counts it */
inline tick_holder(i) {
    if
    :: (st[i] == INSERTING || st[i] == HOLDING || st[i] == INSERTED) && c[i] < LATEST(i) -> c[i]++
    :: else
    fi;
    if
    :: beat[i] != NONE && s[i] < LATEST(i) -> s[i]++
    :: else
    fi
}

active proctype Clock() {
end:
    do
    :: atomic { !URGENT ->
        printf("@ tick\n");
        if :: rid != 0 && rage < SATURATE -> rage++ :: else fi;
        tick_holder(0); tick_holder(1);
#if NH == 3
        tick_holder(2);
#endif
#ifdef TIMELY
        if
        :: ORPHAN && orphan < CAP -> orphan++
        :: ORPHAN && orphan >= CAP
        :: else -> orphan = 0
        fi;
        if
        :: orphan >= rstale && rage < rstale -> dead_holder_not_stale = true
        :: else
        fi;
        assert(!dead_holder_not_stale)
#endif
    }
    od
}

init {
    atomic {
        run Holder(0); run Holder(1);
#if NH == 3
        run Holder(2)
#endif
    }
}
