/*
 * threads.pml -- the threads inside one django-marathon process (and a child
 * it forks), around the one process-wide mutex of the _Registry.
 *
 * Application threads App(0) and App(1) acquire and release a lock APP0 and
 * APP1 times (holds 0,1 and 2,3); with FORK, App(1) forks once while it holds
 * a lock, and the child's thread finds the inherited hold not its own and
 * takes a lock of its own (hold 4). The database is abstract here (protocol.pml models it): a beat's
 * answer may come or not (timeout), and any hold in a beat may turn out lost
 * (row gone, or its deadline passed). Time is abstract too: a thread that is
 * not scheduled is a thread that sleeps, so "due", "lingered LINGER" and
 * "deadline passed" are choices the model makes at every point.
 *
 * What runs where, named as in marathon.py:
 *   App          Marathon._acquire() -> _Registry.register(hold);
 *                Marathon.release() -> _release_now() -> _Registry.unregister()
 *   Heartbeat    _Heartbeat.run(): _wait() -> snapshot | end, _beat(snapshot),
 *                _end_session(); the `finally` of run()
 *   Session      _Session.run(): runs each job's UPDATE, answers; ends on None
 *   Reporter     _Reporter.run(): runs the reports (_report_loss: log, signal,
 *                on_lost) queued by _Registry._report(); ends when idle
 *   fork         os.register_at_fork(after_in_child=_forget_parent)
 *
 * Switches (spin -D...):
 *   MUTANT_EMPTY_SNAPSHOT   (a) 1.0.0: _wait() only says "due"; _beat() takes
 *                           the snapshot later, dies on an empty one, and
 *                           register() keeps adding holds to the dead thread.
 *   MUTANT_FORK_KEEPS_MUTEX the child keeps the parent's mutex, which another
 *                           thread may have held at the fork.
 *   FORK                    App(1) may fork (see above).
 *   FOREVER                 an application thread may keep its lock forever
 *                           (for the liveness claims).
 *   LIVENESS                the claim `live` and its ghost `inbeat`.
 */

#define NHOLD 5     /* holds: App a's k-th is 2a+k; the child's is 4 */
#define NT    5     /* heartbeat threads: at most one per register() */
#define NS    2     /* session threads alive at once (stuck ones included) */
#define NR    2     /* reporter threads alive at once */
#define NONE  255
#ifndef APP0
#define APP0  2     /* App(0)'s acquisitions */
#endif
#ifndef APP1
#define APP1  2     /* App(1)'s acquisitions */
#endif
#define BIT(h) (1 << (h))

/* _Hold.state */
#define H_NEW      0
#define H_HELD     1
#define H_RELEASED 2
#define H_LOST     3

/* thread slots */
#define T_FREE  0
#define T_ALIVE 1   /* is_alive(): from start() until run() returns */
#define T_DEAD  2

/* session slots */
#define S_FREE      0
#define S_IDLE      1   /* waits for a job */
#define S_BUSY      2   /* runs a job's UPDATE */
#define S_ANSWERED  3
#define S_ABANDONED 4   /* busy, and told to end: the heartbeat stopped waiting */
#define S_END       5   /* told to end (None queued) */

/* ---- per process (0: the parent, 1: the forked child) ---- */
byte mtx[2];        /* _Registry.mutex: 0 free, else the _pid+1 of its holder */
byte reg[2];        /* _Registry.heartbeats[alias]: a heartbeat slot, or NONE */
byte rep_reg[2];    /* _Registry.reporter: a reporter slot, or NONE */
bool forked;

/* ---- holds ---- */
byte h_state[NHOLD];
byte h_p[NHOLD];    /* the process that acquired it (_Hold.pid) */

/* ---- threads ---- */
byte hb_state[NT];
bool hb_ending[NT]; /* _Heartbeat.ending */
byte hb_holds[NT];  /* _Heartbeat.holds, a set of holds */
byte hb_p[NT];      /* its process */
byte nthreads;
byte ss_state[NS];
byte rp_state[NR];
byte rp_jobs[NR];   /* _Reporter.jobs: a queue, never full (put never blocks) */
byte rp_p[NR];

/* ---- ghosts ---- */
byte inbeat;        /* holds in a job handed to a session and not yet judged */
byte queued;        /* reports queued */
byte done;          /* reports run */

/* ---- properties: each flag is set where its property is broken ---- */
/* A registered, unreleased, unlost hold is in the holds of its process's
 * registered heartbeat thread, which is alive and not ending. */
bool hold_without_live_heartbeat;
/* When every thread has ended: every report was run, no hold is left held. */
bool report_lost_or_thread_left;

/* A critical section under the registry's mutex: CS_BEGIN(p) ...; UNLOCK(p) }
 * is one step: all it touches is guarded by the mutex, or commutes with it.
 * WAIT_BEGIN(p), the heartbeat's _wait(), takes the mutex in a step of its
 * own with FORK, so that a fork can happen while the heartbeat holds it. */
#define LOCK(p)   atomic { mtx[p] == 0 -> mtx[p] = _pid + 1 }
#define UNLOCK(p) mtx[p] = 0
#define CS_BEGIN(p) atomic { mtx[p] == 0 -> mtx[p] = _pid + 1;
#ifdef FORK
#define WAIT_BEGIN(p) LOCK(p); atomic {
#else
#define WAIT_BEGIN(p) CS_BEGIN(p)
#endif

inline check_hold(h) {
    if
    :: h_state[h] == H_HELD ->
       if
       :: reg[h_p[h]] == NONE -> hold_without_live_heartbeat = true
       :: reg[h_p[h]] != NONE &&
          (hb_state[reg[h_p[h]]] != T_ALIVE || hb_ending[reg[h_p[h]]] ||
           (hb_holds[reg[h_p[h]]] & BIT(h)) == 0) -> hold_without_live_heartbeat = true
       :: else
       fi
    :: else
    fi
}

inline check_registry() {
    check_hold(0); check_hold(1); check_hold(2); check_hold(3); check_hold(4);
    assert(!hold_without_live_heartbeat)
}

/* _Registry._start_heartbeat(): under the mutex; adopts the holds of one that died */
inline start_heartbeat(p, prev) {
    printf("@ heartbeat %d started\n", nthreads);
    hb_p[nthreads] = p;
    hb_state[nthreads] = T_ALIVE;           /* start(): its slot's process begins run() */
#ifndef MUTANT_EMPTY_SNAPSHOT
    if
    :: prev != NONE && !hb_ending[prev] ->
       hb_holds[nthreads] = hb_holds[prev]; hb_holds[prev] = 0
    :: else
    fi;
#endif
    reg[p] = nthreads;
    nthreads++
}

/* _Registry.register(hold): under the mutex */
inline register(h, p, t) {
    t = reg[p];
#ifdef MUTANT_EMPTY_SNAPSHOT
    if   /* 1.0.0: a thread is trusted because it was started (it only compared pids) */
    :: t == NONE -> start_heartbeat(p, t)
    :: else
    fi;
#else
    if
    :: t == NONE || hb_state[t] != T_ALIVE || hb_ending[t] -> start_heartbeat(p, t)
    :: else
    fi;
#endif
    hb_holds[reg[p]] = hb_holds[reg[p]] | BIT(h);
    h_state[h] = H_HELD; h_p[h] = p;
    printf("@ hold %d registered with heartbeat %d\n", h, reg[p]);
    t = 0
}

/* _Registry._forget(hold): out of its process's registered heartbeat */
inline forget(h, p) {
    if
    :: reg[p] != NONE -> hb_holds[reg[p]] = hb_holds[reg[p]] & ~BIT(h)
    :: else
    fi
}

/* _Registry._report(job): under the mutex; starts a reporter if none is alive */
inline report(p, r) {
    r = rep_reg[p];
    if
    :: r == NONE || rp_state[r] != T_ALIVE ->
       if
       :: rp_state[0] == T_FREE -> r = 0
       :: else ->
          rp_state[1] == T_FREE -> r = 1    /* or waits for an ending one (model slots) */
       fi;
       rp_p[r] = p; rp_jobs[r] = 0;
       rp_state[r] = T_ALIVE;               /* start() */
       rep_reg[p] = r
    :: else
    fi;
    rp_jobs[r]++; queued++;
    r = 0
}

/* _Registry.lose(hold): under the mutex; once, and never for a hold released meanwhile */
inline lose(h, p, r) {
    if
    :: h_state[h] == H_HELD ->
       h_state[h] = H_LOST;
       printf("@ hold %d lost\n", h);
       forget(h, p);
       report(p, r)
    :: else
    fi
}

/* Marathon.release() -> _release_now() -> _Registry.unregister(hold, RELEASED) */
inline release(h, p) {
    CS_BEGIN(p)
        if
        :: h_state[h] == H_HELD -> h_state[h] = H_RELEASED; forget(h, p);
           printf("@ hold %d released\n", h)
           /* then DELETE WHERE id = fence AND token = token, on the caller's connection */
        :: else   /* lost: its release sends nothing */
        fi;
        check_registry();
        UNLOCK(p)
    }
}

/* _Heartbeat._end_session(): None to the session; it ends after its current job */
inline end_session(ss) {
    if
    :: ss != NONE ->
       atomic {
           if
           :: ss_state[ss] == S_IDLE -> ss_state[ss] = S_END
           :: ss_state[ss] == S_BUSY -> ss_state[ss] = S_ABANDONED
           :: ss_state[ss] == S_ANSWERED -> ss_state[ss] = S_END
           fi;
           ss = NONE
       }
    :: else
    fi
}

/* Thread slots: each is a process that waits to be started; a session or
 * reporter slot hosts a new thread once its last one has ended. */
proctype Session(byte x) {
end:
    do
    :: atomic { ss_state[x] == S_BUSY -> ss_state[x] = S_ANSWERED }      /* _refresh() returns; answer.put() */
    :: atomic { ss_state[x] == S_ABANDONED -> ss_state[x] = S_END }      /* a stuck query returns at last */
    :: atomic { ss_state[x] == S_END -> ss_state[x] = S_FREE }           /* close(); run() returns */
    od
}

/* the holds of the snapshot to lose: any of them (row gone, deadline passed) */
inline pick_losses() {
    i = 0;
    do
    :: i < NHOLD ->
       if
       :: (snap & BIT(i)) != 0 -> if :: lz = lz | BIT(i) :: skip fi
       :: else
       fi;
       i++
    :: else -> i = 0; break
    od
}

/* _Registry.lose() of each of them, in turn, under the mutex */
inline lose_picked() {
    if :: (lz & BIT(0)) != 0 -> lose(0, p, r) :: else fi;
    if :: (lz & BIT(1)) != 0 -> lose(1, p, r) :: else fi;
    if :: (lz & BIT(2)) != 0 -> lose(2, p, r) :: else fi;
    if :: (lz & BIT(3)) != 0 -> lose(3, p, r) :: else fi;
    if :: (lz & BIT(4)) != 0 -> lose(4, p, r) :: else fi;
    lz = 0;
    check_registry()
}

proctype Heartbeat(byte t) {
    byte p, snap, lz, ss = NONE, i, r;
    bool idle, lingered;
end:
    hb_state[t] == T_ALIVE;                 /* started */
    p = hb_p[t];

wait:   /* _wait(): (idle: _end_session() first) then, under the mutex, a snapshot or the end */
    WAIT_BEGIN(p)
        if
        :: idle -> end_session(ss)
        :: else
        fi;
        if
        :: hb_holds[t] != 0 ->
#ifndef MUTANT_EMPTY_SNAPSHOT
           snap = hb_holds[t];              /* the snapshot, under the mutex: never empty */
#endif
           printf("@ heartbeat %d: a beat is due\n", t);
           idle = false; lingered = false; UNLOCK(p)
        :: else ->
           idle = true;
           if
           :: !lingered -> UNLOCK(p); goto sleep
           :: hb_ending[t] = true;          /* lingered LINGER with no hold: leave the registry */
              printf("@ heartbeat %d ends\n", t);
              if
              :: reg[p] == t -> reg[p] = NONE
              :: else
              fi;
              UNLOCK(p); goto finish
           fi
        fi
    };
    goto beat;

sleep:  /* wake.wait(until - now): register() wakes it, or LINGER runs out */
    if
    :: hb_holds[t] != 0 -> goto wait
    :: lingered = true; goto wait
    fi;

beat:
#ifdef MUTANT_EMPTY_SNAPSHOT
    /* 1.0.0's _beat(): the snapshot, later, under the mutex again */
    CS_BEGIN(p) snap = hb_holds[t]; UNLOCK(p) };
    if
    :: snap == 0 ->                         /* min() of an empty list raises: the thread dies */
       printf("@ heartbeat %d: empty snapshot, it dies\n", t); goto died
    :: else
    fi;
#endif

    /* _beat(snapshot): the job to this thread's _Session (a new one if it has none) */
    atomic {
        (ss != NONE || ss_state[0] == S_FREE || ss_state[1] == S_FREE) ->   /* (model slots) */
        if
        :: ss == NONE && ss_state[0] == S_FREE -> ss = 0
        :: ss == NONE && ss_state[0] != S_FREE -> ss = 1
        :: else
        fi;
        ss_state[ss] = S_BUSY;
#ifdef LIVENESS
        inbeat = inbeat | snap
#endif
    };
    /* its answer, or none by the snapshot's first deadline (then the session
       is left behind); then each hold: confirmed, or lost */
    atomic {
        mtx[p] == 0 ->          /* the losses are taken under the mutex, in this same step */
        if
        :: ss_state[ss] == S_ANSWERED -> ss_state[ss] = S_IDLE
        :: end_session(ss)
        fi;
        pick_losses();
        if
        :: lz != 0 -> mtx[p] = _pid + 1; lose_picked(); UNLOCK(p)
        :: else
        fi;
#ifdef LIVENESS
        inbeat = inbeat & ~snap;
#endif
        snap = 0
    };
    /* (A failed beat also queues a warning with registry.report(): the same
       path as a loss report; left out to keep the queues finite.) */
    goto wait;

#ifdef MUTANT_EMPTY_SNAPSHOT
died:
    end_session(ss);      /* 1.0.0's finally; the dead thread stays registered */
    hb_state[t] = T_DEAD;
    goto dead;
#endif

finish:   /* run()'s finally: _end_session(); a thread that died with holds hands them on */
    CS_BEGIN(p)
        end_session(ss);
#ifndef MUTANT_EMPTY_SNAPSHOT
        if
        :: hb_holds[t] != 0 && reg[p] == t -> start_heartbeat(p, t)
        :: else
        fi;
#endif
        hb_state[t] = T_DEAD;               /* run() returns */
        UNLOCK(p)
    };
dead:
    skip
}

proctype Reporter(byte r) {
    byte p;
end:
    do
    :: rp_state[r] == T_ALIVE ->            /* started */
       p = rp_p[r];
       do
       :: atomic { rp_jobs[r] > 0 -> rp_jobs[r]--; done++ }
          /* job(): _report_loss: log, lock_lost, on_lost(marathon) */
          ;
          if   /* on_lost may call release(): unregister() says no */
          :: CS_BEGIN(p) UNLOCK(p) }
          :: skip
          fi
       :: rp_jobs[r] == 0 ->                /* jobs.get(timeout=LINGER) ran out */
          CS_BEGIN(p)
              if
              :: rp_jobs[r] == 0 ->
                 rep_reg[p] = NONE;         /* registry.reporter = None (it is this one) */
                 rp_state[r] = T_FREE;      /* run() returns */
                 UNLOCK(p); p = 0; break
              :: else -> UNLOCK(p)
              fi
          }
       od
    od
}

/* the forked child's one thread: the thread that called fork() */
proctype ChildApp(byte inherited) {
    byte t;
    /* the inherited hold: _Hold.mine() is False, so held is False and
       release() returns False before it touches the registry */
    assert(h_p[inherited] == 0);
    /* a lock of its own, in the child's registry */
    CS_BEGIN(1) register(4, 1, t); check_registry(); UNLOCK(1) };
    release(4, 1)
}

proctype App(byte a; byte n) {   /* n acquisitions, one after the other */
    byte k, h, t;
    do
    :: k < n ->
       h = 2 * a + k;
       /* Marathon._acquire(): the statements (see protocol.pml), then: */
       CS_BEGIN(0) register(h, 0, t); check_registry(); UNLOCK(0) };
#ifdef FOREVER
       if
       :: skip
       :: goto forever
       fi;
#endif
#ifdef FORK
       /* fork(), from this thread, while another may hold the mutex */
       if
       :: a == 1 && !forked ->
          atomic {
              forked = true;
              printf("@ fork (mutex held by pid %d)\n", mtx[0] - 1);
#ifdef MUTANT_FORK_KEEPS_MUTEX
              mtx[1] = mtx[0];              /* a copy: held by a thread the child has not */
#else
              mtx[1] = 0;                   /* _forget_parent(): a new registry and mutex */
#endif
              reg[1] = NONE; rep_reg[1] = NONE;
              run ChildApp(h)
          }
       :: skip
       fi;
#endif
       release(h, 0);
       k++
    :: else -> break
    od;
#ifdef FOREVER
    goto over;
forever:
end_forever:
    false;
over:
#endif
    skip
}

#define QUIET (hb_state[0] != T_ALIVE && hb_state[1] != T_ALIVE && hb_state[2] != T_ALIVE && \
               hb_state[3] != T_ALIVE && hb_state[4] != T_ALIVE && \
               ss_state[0] == S_FREE && ss_state[1] == S_FREE && \
               rp_state[0] == T_FREE && rp_state[1] == T_FREE)
#define NOHELD (h_state[0] != H_HELD && h_state[1] != H_HELD && h_state[2] != H_HELD && \
                h_state[3] != H_HELD && h_state[4] != H_HELD)

init {
    atomic {
        reg[0] = NONE; reg[1] = NONE; rep_reg[0] = NONE; rep_reg[1] = NONE;
        run Heartbeat(0); run Heartbeat(1); run Heartbeat(2); run Heartbeat(3); run Heartbeat(4);
        run Session(0); run Session(1);
        run Reporter(0); run Reporter(1);
        run App(0, APP0); run App(1, APP1)
    };
    /* the applications' threads have ended, and every other thread has
       stopped for good: nothing left held, every report run, no thread alive */
end:
    timeout ->
    if
    :: !(QUIET && NOHELD && queued == done) -> report_lost_or_thread_left = true
    :: else
    fi;
    assert(!report_lost_or_thread_left)
}

#ifdef LIVENESS
/* A held hold (registered, unreleased, unlost) is beaten again and again:
 * the first hold of each application thread (0 and 2). When no lock is held
 * any more for good, the heartbeat, session and reporter threads all end. */
#define PEND(h) (h_state[h] == H_HELD)
#define BEAT(h) ((inbeat & BIT(h)) != 0)
ltl live {
    [] (PEND(0) -> <> (BEAT(0) || !PEND(0))) &&
    [] (PEND(2) -> <> (BEAT(2) || !PEND(2))) &&
    ((<> [] NOHELD) -> (<> [] QUIET))
}
#endif
