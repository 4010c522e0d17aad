//! Admission control: whether a shard takes a request, or answers it at once (HTTP 503 with
//! Retry-After, ISO 8583 DE39 91) because it would not be served in time.
//!
//! Pure and deterministic: the caller passes the time (microseconds on any monotonic clock)
//! and the shard's queue delay; `crate::shard` measures both. Time, not queue length, decides:
//!
//! - **Queue delay.** How long a task that became ready waits for the shard's executor,
//!   sampled by the shard's 20 ms tick, as how late its timer fired (`observe_delay`).
//!   Everything a shard does waits in that one queue, so it is what an answer, shed or not,
//!   waits for.
//! - **An adaptive concurrency limit** (AIMD, as TCP, Netflix's concurrency-limits and Envoy's
//!   adaptive concurrency filter) on the requests admitted and not yet answered. It shrinks
//!   by a tenth (at most once per `decrease_every`) while the queue stands (below) or while
//!   answers are slow: no admitted request was answered within `latency_target` for a whole
//!   `interval` (a slow disk, which the executor's delay does not show; one slow fsync is a
//!   burst, as one late tick is). It grows by one per limit's worth of requests served in
//!   time while it is the constraint, or while it is below `initial_limit`: a limit shrunk
//!   by an overload that has passed returns to where it started even when the load no
//!   longer reaches it (else brief stalls ratchet it down for good: BENCHMARKS.md,
//!   2026-12-05). Past it, new work is shed: a shed answer costs a fraction of a served
//!   one, so the shard keeps answering everything that arrives, and what it serves stays
//!   fast.
//! - **Queue time (CoDel, as in Facebook's "Fail at Scale").** A request admitted but not
//!   yet started (ISO 8583 frames read together wait for their turn) is shed when its turn
//!   comes if it waited longer than `interval`, or longer than `target` while the queue is
//!   standing: the delay has not been below `target` for a whole `interval` (`timely`).
//! - **A hard cap** (`max_in_flight`) on everything in flight, follow-ups included.
//!
//! The limit and the cap apply where a request is read, before it queues anywhere, so a
//! request shed for them waits for nothing.
//!
//! Follow-ups (reversals, advices, captures, voids and refunds: they finish or undo work
//! already admitted, and an acquirer must get its reversals through) are subject to the hard
//! cap only.

/// Settings, from `[admission]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Off: only the hard cap applies (for comparing with and without, in benchmarks).
    pub adaptive: bool,
    /// Queue delay the shard aims to stay under (µs).
    pub target_micros: u64,
    /// How long the delay may stay above `target` before the queue counts as standing, and
    /// the most a request may have waited at all (µs).
    pub interval_micros: u64,
    /// Time from admission to answer above which the limit shrinks (µs).
    pub latency_target_micros: u64,
    /// The least time between two decreases of the limit (µs): one late burst shrinks it
    /// once.
    pub decrease_every_micros: u64,
    pub initial_limit: u32,
    pub min_limit: u32,
    /// Requests in flight on the shard, follow-ups included, never more than this.
    pub max_in_flight: u32,
}

impl AdmissionConfig {
    /// The defaults of `[admission]` (configs/corepay.toml says why each).
    pub const DEFAULT: AdmissionConfig = AdmissionConfig {
        adaptive: true,
        target_micros: 5_000,
        interval_micros: 100_000,
        latency_target_micros: 20_000,
        decrease_every_micros: 5_000,
        initial_limit: 256,
        min_limit: 32,
        max_in_flight: 8192,
    };
}

/// What a request is to admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// New work: a payment, a read, a provisioning call.
    New,
    /// Finishes or undoes admitted work: capture, void, refund, reversal, advice.
    FollowUp,
}

/// Why a request was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It waited longer than the queue-time rule allows.
    QueueTime = 0,
    /// The shard has as much in flight as its limit (or the hard cap).
    Concurrency = 1,
}

/// Proof of admission; give it back to `done` when the request is answered.
#[derive(Debug)]
#[must_use = "an admitted request must be given back to Admission::done"]
pub struct Ticket {
    admitted_at: u64,
    priority: Priority,
}

/// One shard's admission state.
#[derive(Debug)]
pub struct Admission {
    cfg: AdmissionConfig,
    in_flight: u32,
    limit: f64,
    last_decrease: Option<u64>,
    /// The latest queue-delay sample, and when one was last below target (None: no sample
    /// yet).
    delay: u64,
    below_at: Option<u64>,
    /// When an admitted request was last answered within `latency_target` (None: none yet).
    on_time_at: Option<u64>,
    /// Requests refused, per `Refusal` (queue time, concurrency).
    refused: [u64; 2],
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Admission {
        assert!(cfg.min_limit >= 1 && cfg.min_limit <= cfg.initial_limit);
        assert!(cfg.initial_limit <= cfg.max_in_flight);
        assert!(cfg.target_micros > 0 && cfg.target_micros <= cfg.interval_micros);
        Admission {
            cfg,
            in_flight: 0,
            limit: f64::from(cfg.initial_limit),
            last_decrease: None,
            delay: 0,
            below_at: None,
            on_time_at: None,
            refused: [0; 2],
        }
    }

    /// A queue-delay sample taken at `now`.
    pub fn observe_delay(&mut self, now: u64, delay: u64) {
        self.delay = delay;
        if delay < self.cfg.target_micros || self.below_at.is_none() {
            self.below_at = Some(now);
        }
        // A burst (a page fault, a VM's stolen milliseconds) is absorbed: only a standing
        // queue shrinks the limit.
        if self.standing(now) {
            self.decrease(now);
        }
    }

    /// True when the delay has not been below target for a whole interval.
    pub fn standing(&self, now: u64) -> bool {
        self.below_at
            .is_some_and(|at| now.saturating_sub(at) >= self.cfg.interval_micros)
    }

    /// Takes a request as it is read, or says why not (counted).
    pub fn admit(&mut self, now: u64, priority: Priority) -> Result<Ticket, Refusal> {
        let over_limit = priority == Priority::New
            && self.cfg.adaptive
            && f64::from(self.in_flight) >= self.limit;
        if self.in_flight >= self.cfg.max_in_flight || over_limit {
            self.refused[Refusal::Concurrency as usize] += 1;
            return Err(Refusal::Concurrency);
        }
        self.in_flight += 1;
        Ok(Ticket {
            admitted_at: now,
            priority,
        })
    }

    /// The queue-time rule, when an admitted request's work is about to begin after it waited
    /// `waited` µs for its turn: the ticket back, or `None` (counted, its place given back)
    /// when it waited too long and is to be shed instead.
    pub fn timely(&mut self, now: u64, waited: u64, ticket: Ticket) -> Option<Ticket> {
        if ticket.priority == Priority::FollowUp || !self.cfg.adaptive {
            return Some(ticket);
        }
        let allowed = if self.standing(now) {
            self.cfg.target_micros
        } else {
            self.cfg.interval_micros
        };
        if waited <= allowed {
            return Some(ticket);
        }
        assert!(self.in_flight > 0, "a ticket came back twice");
        self.in_flight -= 1;
        self.refused[Refusal::QueueTime as usize] += 1;
        None
    }

    /// Requests refused for `why` since start.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize]
    }

    /// An admitted request was answered at `now`.
    pub fn done(&mut self, now: u64, ticket: Ticket) {
        assert!(self.in_flight > 0, "a ticket came back twice");
        let was_limited = f64::from(self.in_flight) >= self.limit - 1.0;
        self.in_flight -= 1;
        let took = now.saturating_sub(ticket.admitted_at);
        if took > self.cfg.latency_target_micros {
            // Slow for a whole interval, not one slow fsync: the first answers ever count
            // from the first admission.
            let since = self.on_time_at.unwrap_or(ticket.admitted_at);
            if now.saturating_sub(since) >= self.cfg.interval_micros {
                self.decrease(now);
            }
            return;
        }
        self.on_time_at = Some(now);
        let start = f64::from(self.cfg.initial_limit);
        if (was_limited || self.limit < start) && self.delay <= self.cfg.target_micros {
            // Past where it started only while it is the constraint.
            let cap = if was_limited {
                self.cfg.max_in_flight
            } else {
                self.cfg.initial_limit
            };
            self.limit = (self.limit + 1.0 / self.limit).min(f64::from(cap));
        }
    }

    fn decrease(&mut self, now: u64) {
        let due = self
            .last_decrease
            .is_none_or(|at| now.saturating_sub(at) >= self.cfg.decrease_every_micros);
        if due {
            self.limit = (self.limit * 0.9).max(f64::from(self.cfg.min_limit));
            self.last_decrease = Some(now);
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The concurrency limit new work is admitted under now.
    pub fn limit(&self) -> u32 {
        self.limit.ceil() as u32
    }

    /// The latest queue-delay sample (µs).
    pub fn queue_delay(&self) -> u64 {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdmissionConfig {
        AdmissionConfig {
            initial_limit: 16,
            min_limit: 4,
            max_in_flight: 32,
            ..AdmissionConfig::DEFAULT
        }
    }

    #[test]
    fn admission_takes_everything_that_fits_and_counts_it_back() {
        let mut a = Admission::new(cfg());
        let tickets: Vec<Ticket> = (0..16)
            .map(|i| a.admit(i, Priority::New).expect("within the limit"))
            .collect();
        assert_eq!(a.in_flight(), 16);
        assert_eq!(
            a.admit(20, Priority::New).unwrap_err(),
            Refusal::Concurrency
        );
        assert_eq!(a.refused(Refusal::Concurrency), 1);
        for t in tickets {
            a.done(100, t);
        }
        assert_eq!(a.in_flight(), 0);
        assert!(a.admit(200, Priority::New).is_ok());
    }

    #[test]
    fn admission_follow_ups_pass_the_limit_and_queue_time_but_not_the_hard_cap() {
        let mut a = Admission::new(cfg());
        let mut held = Vec::new();
        for i in 0..16 {
            held.push(a.admit(i, Priority::New).unwrap());
        }
        for i in 0..16 {
            held.push(
                a.admit(i, Priority::FollowUp)
                    .expect("follow-ups pass the limit"),
            );
        }
        assert_eq!(a.in_flight(), 32);
        assert_eq!(
            a.admit(50, Priority::FollowUp).unwrap_err(),
            Refusal::Concurrency
        );
        let mut b = Admission::new(cfg());
        let f = b.admit(0, Priority::FollowUp).unwrap();
        assert!(
            b.timely(0, 10_000_000, f).is_some(),
            "a follow-up is never late"
        );
        let n = b.admit(0, Priority::New).unwrap();
        assert!(
            b.timely(0, 10_000_000, n).is_none(),
            "new work that waited 10 s is"
        );
        assert_eq!(b.in_flight(), 1, "the late one gave its place back");
        assert_eq!(b.refused(Refusal::QueueTime), 1);
        drop(held);
    }

    #[test]
    fn admission_queue_time_is_strict_only_while_the_queue_stands() {
        let mut a = Admission::new(cfg());
        let target = cfg().target_micros;
        let interval = cfg().interval_micros;
        // A burst: the delay went above target only just now; a request that waited a few
        // targets is still served.
        a.observe_delay(0, 0);
        a.observe_delay(1_000, target * 3);
        assert!(!a.standing(1_000));
        let t = a.admit(1_000, Priority::New).unwrap();
        let t = a.timely(1_000, target * 3, t).expect("a burst is absorbed");
        a.done(1_100, t);
        // Above target for a whole interval: the queue stands; only short waits pass.
        for now in (2_000..=interval + 2_000).step_by(1_000) {
            a.observe_delay(now, target * 3);
        }
        let now = interval + 2_000;
        assert!(a.standing(now));
        let t = a.admit(now, Priority::New).unwrap();
        assert!(a.timely(now, target * 3, t).is_none());
        let t = a.admit(now, Priority::New).unwrap();
        let t = a.timely(now, target / 2, t).expect("a short wait passes");
        a.done(now, t);
        // One sample below target ends it.
        a.observe_delay(now + 1_000, target / 2);
        assert!(!a.standing(now + 1_000));
        // Never more than the interval, standing or not.
        let t = a.admit(now + 1_000, Priority::New).unwrap();
        assert!(a.timely(now + 1_000, interval + 1, t).is_none());
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.refused(Refusal::QueueTime), 2);
    }

    #[test]
    fn admission_limit_shrinks_on_a_standing_queue_and_slow_answers_and_grows_back_when_used() {
        let c = cfg();
        let mut a = Admission::new(c);
        assert_eq!(a.limit(), 16);
        // A burst above target does not shrink it; a standing queue does, at most once per
        // decrease_every.
        a.observe_delay(0, 0);
        a.observe_delay(1_000, c.target_micros * 5);
        a.observe_delay(2_000, c.target_micros * 5);
        assert_eq!(a.limit(), 16);
        let stands = c.interval_micros + 1_000;
        a.observe_delay(stands, c.target_micros + 1);
        a.observe_delay(stands + 1, c.target_micros + 1);
        assert_eq!(a.limit(), 15); // 14.4
        for i in 1..=40u64 {
            a.observe_delay(stands + i * c.decrease_every_micros, c.target_micros * 5);
        }
        assert_eq!(a.limit(), c.min_limit, "never below min_limit");
        // Slow answers shrink it too, with the executor on time, once no answer has been
        // on time for a whole interval; one slow answer (a slow fsync) does not.
        let mut b = Admission::new(c);
        b.observe_delay(0, 0);
        let t = b.admit(0, Priority::New).unwrap();
        b.done(100, t);
        let t = b.admit(200, Priority::New).unwrap();
        b.done(200 + c.latency_target_micros + 1, t);
        assert_eq!(b.limit(), 16, "one slow answer is a burst");
        let mut now = 200;
        while now < 100 + c.interval_micros {
            let t = b.admit(now, Priority::New).unwrap();
            now += c.latency_target_micros + 1;
            b.done(now, t);
        }
        assert!(b.limit() < 16, "slow for a whole interval");
        // Used to the full and answering in time, it grows back by about one per limit's
        // worth of answers.
        let start = a.limit();
        let mut now = 1_000_000;
        a.observe_delay(now, 0);
        for _ in 0..200 {
            let mut tickets = Vec::new();
            while let Ok(t) = a.admit(now, Priority::New) {
                tickets.push(t);
            }
            now += 100;
            for t in tickets {
                a.done(now, t);
            }
        }
        assert!(a.limit() > start + 10, "grew from {start} to {}", a.limit());
        assert!(a.limit() <= c.max_in_flight);
    }

    /// The 10 M soak of 2026-12-05 (3,000/s, 128 connections, at half a core) shed 0.6% of
    /// its requests: each slow fsync shrank the limit, and the limit grew back only while it
    /// was the constraint, which at half load it never was, so brief stalls ratcheted it
    /// down to `min_limit`, and then every stall's arrivals overflowed it.
    #[test]
    fn admission_brief_disk_stalls_at_half_load_shed_nothing_and_leave_the_limit_where_it_was() {
        let c = AdmissionConfig {
            initial_limit: 256,
            min_limit: 32,
            max_in_flight: 8192,
            ..AdmissionConfig::DEFAULT
        };
        let mut a = Admission::new(c);
        // 3,000 arrivals a second; group commits of 1 ms, and every 2 s one of 40 ms. A
        // request is answered when the first commit that starts after its admission ends.
        let arrival_every = 333;
        let mut now = 0u64;
        let mut next_arrival = 0u64;
        let mut batch: Vec<Ticket> = Vec::new();
        let mut commits = 0u64;
        while now < 600_000_000 {
            let took = if commits % 2_000 == 1_999 {
                40_000
            } else {
                1_000
            };
            let end = now + took;
            let mut arrived = Vec::new();
            while next_arrival < end {
                if next_arrival % 20_000 < arrival_every {
                    a.observe_delay(next_arrival, 100);
                }
                arrived.push(
                    a.admit(next_arrival, Priority::New)
                        .expect("half load fits"),
                );
                next_arrival += arrival_every;
            }
            for t in batch.drain(..) {
                a.done(end, t);
            }
            batch = arrived;
            now = end;
            commits += 1;
        }
        assert_eq!(a.refused(Refusal::Concurrency), 0);
        assert_eq!(a.limit(), 256, "the limit returned to where it started");
    }

    #[test]
    fn admission_limit_does_not_grow_when_it_is_not_the_constraint() {
        let mut a = Admission::new(cfg());
        a.observe_delay(0, 0);
        for now in 0..10_000 {
            let t = a.admit(now, Priority::New).unwrap();
            a.done(now + 50, t);
        }
        assert_eq!(a.limit(), 16);
    }

    #[test]
    fn admission_without_adaptation_applies_only_the_hard_cap() {
        let mut a = Admission::new(AdmissionConfig {
            adaptive: false,
            ..cfg()
        });
        for now in 0..1000 {
            a.observe_delay(now * 1_000, 1_000_000);
        }
        let held: Vec<Ticket> = (0..32)
            .map(|_| {
                let t = a.admit(2_000_000, Priority::New).expect("under the cap");
                a.timely(2_000_000, 10_000_000, t)
                    .expect("no queue-time rule")
            })
            .collect();
        assert_eq!(a.admit(0, Priority::New).unwrap_err(), Refusal::Concurrency);
        drop(held);
    }

    #[test]
    #[should_panic(expected = "twice")]
    fn admission_catches_a_ticket_returned_twice() {
        let mut a = Admission::new(cfg());
        a.done(
            0,
            Ticket {
                admitted_at: 0,
                priority: Priority::New,
            },
        );
    }
}
