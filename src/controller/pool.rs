//! The evaluation worker pool: CEL evaluation runs on its own OS threads, off the async
//! runtime, so that the metric loop keeps serving watch events, other metrics and status
//! writes while one metric's expressions run. A slow or hostile metric occupies one worker
//! for at most its time budget; it delays no other metric while another worker is free.
//!
//! The loop submits jobs through a bounded queue (FIFO: jobs start in submission order) and
//! receives their results on a channel. A job names the metrics it evaluates; a metric with
//! a job in flight is refused until its result has been received ([`Pool::finished`]). Each
//! job runs under `catch_unwind`: a panic becomes the job's result, never the worker's end.

use std::collections::HashSet;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::metrics;

/// The stack of each worker: the engine's evaluation stack, which its static limits (32
/// levels of brackets and conditionals, 64 AST levels, 4096 bytes) are measured against
/// (see `engine::expression`). Address space only: pages are committed when touched.
pub const STACK_SIZE: usize = crate::engine::expression::EVALUATION_STACK;

/// The default number of workers: the available parallelism, at most this many.
pub const MAX_DEFAULT_WORKERS: usize = 4;

/// The default number of workers: available parallelism capped at [`MAX_DEFAULT_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, MAX_DEFAULT_WORKERS)
}

type Work<R> = Box<dyn FnOnce() -> R + Send>;

struct Job<K, R> {
    keys: Vec<K>,
    work: Work<R>,
}

/// A finished job.
pub struct Done<K, R> {
    /// The keys the job was submitted with.
    pub keys: Vec<K>,
    /// The job's result, or the message of its panic.
    pub result: Result<R, String>,
    /// How long the job ran (not counting its wait in the queue).
    pub ran: Duration,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// One of its keys has a job in flight.
    InFlight,
    /// The queue is full: try again once a job has finished.
    QueueFull,
}

/// The worker pool. Owned by one task (the metric loop); results come back on the receiver
/// returned by [`Pool::new`].
pub struct Pool<K, R> {
    jobs: std_mpsc::SyncSender<Job<K, R>>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    in_flight: HashSet<K>,
}

impl<K, R> Pool<K, R>
where
    K: Eq + Hash + Clone + Send + 'static,
    R: Send + 'static,
{
    /// Starts `workers` threads (at least one) with a queue of `capacity` jobs (at least one).
    pub fn new(workers: usize, capacity: usize) -> (Self, mpsc::UnboundedReceiver<Done<K, R>>) {
        Self::with_stack(workers, capacity, STACK_SIZE)
    }

    fn with_stack(
        workers: usize,
        capacity: usize,
        stack: usize,
    ) -> (Self, mpsc::UnboundedReceiver<Done<K, R>>) {
        let (workers, capacity) = (workers.max(1), capacity.max(1));
        let (jobs, queue) = std_mpsc::sync_channel::<Job<K, R>>(capacity);
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..workers {
            let (queue, done_tx, queued) = (queue.clone(), done_tx.clone(), queued.clone());
            std::thread::Builder::new()
                .name(format!("secmetrics-eval-{i}"))
                .stack_size(stack)
                .spawn(move || work(&queue, &done_tx, &queued))
                .expect("starting an evaluation worker thread");
        }
        metrics::EVALUATION_WORKERS.set(workers as i64);
        (Pool { jobs, queued, capacity, in_flight: HashSet::new() }, done)
    }

    /// Queues `work` for the metrics `keys`, unless one of them has a job in flight or the
    /// queue is full. On success every key is in flight until [`Pool::finished`].
    pub fn submit(&mut self, keys: Vec<K>, work: impl FnOnce() -> R + Send + 'static) -> Result<(), Refused> {
        if keys.iter().any(|k| self.in_flight.contains(k)) {
            return Err(Refused::InFlight);
        }
        if !self.has_room() {
            return Err(Refused::QueueFull);
        }
        // Only this owner adds to the queue and workers only take from it: room seen above
        // is still there.
        self.queued.fetch_add(1, Ordering::SeqCst);
        metrics::EVALUATION_QUEUE_DEPTH.inc();
        if self.jobs.try_send(Job { keys: keys.clone(), work: Box::new(work) }).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            metrics::EVALUATION_QUEUE_DEPTH.dec();
            return Err(Refused::QueueFull);
        }
        self.in_flight.extend(keys);
        Ok(())
    }

    /// Whether another job fits in the queue now.
    pub fn has_room(&self) -> bool {
        self.queued.load(Ordering::SeqCst) < self.capacity
    }

    /// Whether `key` has a job in flight.
    pub fn is_in_flight(&self, key: &K) -> bool {
        self.in_flight.contains(key)
    }

    /// Marks a received job's keys as no longer in flight.
    pub fn finished(&mut self, done: &Done<K, R>) {
        for k in &done.keys {
            self.in_flight.remove(k);
        }
    }
}

/// A worker: takes jobs until the pool is dropped (and its queue drained).
fn work<K, R>(
    queue: &Mutex<std_mpsc::Receiver<Job<K, R>>>,
    done: &mpsc::UnboundedSender<Done<K, R>>,
    queued: &AtomicUsize,
) {
    loop {
        // A job panics outside the lock, so the lock is never poisoned; be safe anyway.
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(Job { keys, work }) = next else { return };
        queued.fetch_sub(1, Ordering::SeqCst);
        metrics::EVALUATION_QUEUE_DEPTH.dec();
        metrics::EVALUATION_BUSY_WORKERS.inc();
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(work)).map_err(|payload| panic_message(&*payload));
        let ran = started.elapsed();
        metrics::EVALUATION_BUSY_WORKERS.dec();
        metrics::EVALUATION_JOB_DURATION.observe(ran.as_secs_f64());
        if result.is_err() {
            metrics::EVALUATION_PANICS.inc();
        }
        // The receiver is gone only when the controller stopped: nothing left to report to.
        let _ = done.send(Done { keys, result, ran });
    }
}

/// Longest panic message kept (a hostile expression chooses its own).
const MAX_PANIC_MESSAGE: usize = 512;

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    };
    crate::api::conditions::truncate(text, MAX_PANIC_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestPool = Pool<&'static str, &'static str>;

    async fn next(
        rx: &mut mpsc::UnboundedReceiver<Done<&'static str, &'static str>>,
    ) -> Done<&'static str, &'static str> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a result in time")
            .expect("open")
    }

    /// A job that runs until `budget` has elapsed (as a budget-stopped evaluation does).
    fn busy(budget: Duration, out: &'static str) -> impl FnOnce() -> &'static str + Send {
        move || {
            let end = Instant::now() + budget;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
            out
        }
    }

    #[tokio::test]
    async fn jobs_start_in_submission_order() {
        let (mut pool, mut rx) = TestPool::new(1, 8);
        for k in ["a", "b", "c", "d"] {
            pool.submit(vec![k], move || k).unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            let d = next(&mut rx).await;
            pool.finished(&d);
            order.push(d.result.unwrap());
        }
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    #[tokio::test]
    async fn a_key_in_flight_is_refused_until_its_result_is_received() {
        let (mut pool, mut rx) = TestPool::new(2, 8);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        pool.submit(vec!["m1", "m2"], move || {
            wait.recv().ok();
            "group"
        })
        .unwrap();
        assert_eq!(pool.submit(vec!["m2"], || "again"), Err(Refused::InFlight));
        assert!(pool.is_in_flight(&"m1"));
        pool.submit(vec!["other"], || "other").unwrap();
        release.send(()).unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let d = next(&mut rx).await;
            // Still in flight until the loop has received (and handled) the result.
            assert!(d.keys.iter().all(|k| pool.is_in_flight(k)));
            pool.finished(&d);
            got.push(d.result.unwrap());
        }
        got.sort();
        assert_eq!(got, ["group", "other"]);
        assert!(!pool.is_in_flight(&"m2"));
        pool.submit(vec!["m2"], || "again").unwrap();
        assert_eq!(next(&mut rx).await.result.unwrap(), "again");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_has_room_again_once_a_job_is_taken() {
        let (mut pool, mut rx) = TestPool::new(1, 1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        pool.submit(vec!["running"], move || {
            started_tx.send(()).unwrap();
            wait.recv().ok();
            "running"
        })
        .unwrap();
        started.recv().unwrap();
        pool.submit(vec!["queued"], || "queued").unwrap();
        assert!(!pool.has_room());
        assert_eq!(pool.submit(vec!["third"], || "third"), Err(Refused::QueueFull));
        assert!(!pool.is_in_flight(&"third"), "a refused job is not in flight");
        release.send(()).unwrap();
        assert_eq!(next(&mut rx).await.result.unwrap(), "running");
        assert_eq!(next(&mut rx).await.result.unwrap(), "queued");
        assert!(pool.has_room());
    }

    #[tokio::test]
    async fn a_panic_is_the_jobs_result_and_the_worker_survives() {
        let (mut pool, mut rx) = TestPool::new(1, 4);
        pool.submit(vec!["bad"], || panic!("hostile {}", "x".repeat(10_000))).unwrap();
        pool.submit(vec!["good"], || "fine").unwrap();
        let bad = next(&mut rx).await;
        let message = bad.result.unwrap_err();
        assert!(message.starts_with("hostile xxx") && message.len() <= MAX_PANIC_MESSAGE, "{message}");
        assert_eq!(bad.keys, ["bad"]);
        // The single worker is still there.
        assert_eq!(next(&mut rx).await.result.unwrap(), "fine");
        pool.submit(vec!["literal"], || panic!("plain")).unwrap();
        assert_eq!(next(&mut rx).await.result.unwrap_err(), "plain");
    }

    #[tokio::test]
    async fn a_slow_job_does_not_delay_a_fast_one_with_two_workers() {
        let (mut pool, mut rx) = TestPool::new(2, 4);
        let slow = Duration::from_secs(3);
        let start = Instant::now();
        pool.submit(vec!["slow"], busy(slow, "slow")).unwrap();
        pool.submit(vec!["fast"], || "fast").unwrap();
        let first = next(&mut rx).await;
        assert_eq!(first.result.unwrap(), "fast");
        assert!(start.elapsed() < slow / 2, "the fast job waited {:?}", start.elapsed());
        assert_eq!(next(&mut rx).await.result.unwrap(), "slow");
    }

    #[tokio::test]
    async fn with_one_worker_a_fast_job_waits_at_most_the_slow_ones_budget() {
        let (mut pool, mut rx) = TestPool::new(1, 4);
        let budget = Duration::from_millis(500);
        let start = Instant::now();
        pool.submit(vec!["slow"], busy(budget, "slow")).unwrap();
        pool.submit(vec!["fast"], || "fast").unwrap();
        assert_eq!(next(&mut rx).await.result.unwrap(), "slow");
        let fast = next(&mut rx).await;
        assert_eq!(fast.result.unwrap(), "fast");
        let waited = start.elapsed();
        assert!(waited >= budget && waited < budget + Duration::from_millis(400), "{waited:?}");
    }

    #[test]
    fn default_workers_is_between_one_and_four() {
        assert!((1..=MAX_DEFAULT_WORKERS).contains(&default_workers()));
    }
}

#[cfg(test)]
mod stack_tests {
    use super::*;
    use crate::engine::{CompiledSource, Kind, ObjectIndex, Pass, Visibility};

    /// The deepest expressions the static limits (1000 nodes) allow.
    fn deepest() -> Vec<String> {
        vec![
            format!("{}true", "!".repeat(996)),
            format!("{}object.metadata.name == 'p'{}", "(".repeat(330), ")".repeat(330)),
            format!("{}1{} > 0", "1 + (".repeat(330), ")".repeat(330)),
            vec!["object.metadata.name == 'p'"; 160].join(" && "),
        ]
    }

    fn on_thread<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(stack).spawn(f).unwrap().join().unwrap()
    }

    /// Compiles the deepest expressions on a thread of `compile_stack` bytes and evaluates
    /// them on one of `evaluate_stack` bytes.
    fn deep(compile_stack: usize, evaluate_stack: usize) {
        let compiled: Vec<CompiledSource> = on_thread(compile_stack, || {
            deepest()
                .into_iter()
                .filter_map(|passes| {
                    let spec = serde_json::from_value(serde_json::json!({
                        "displayName": "m", "description": "d", "type": "Technical", "category": "Other",
                        "owner": {"team": "t", "responsibility": "ApplicationProvider"},
                        "source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": passes}},
                        "objective": {"operator": ">=", "target": 100},
                    }))
                    .unwrap();
                    crate::engine::compile(&spec).map_err(|e| eprintln!("rejected: {e}")).ok()
                })
                .collect()
        });
        on_thread(evaluate_stack, move || {
            let mut idx = ObjectIndex::default();
            idx.apply(&Kind::new("v1", "Namespace"), serde_json::json!({"metadata": {"name": "t"}}));
            idx.apply(
                &Kind::new("v1", "Pod"),
                serde_json::json!({"metadata": {"name": "p", "namespace": "t"}}),
            );
            let pass = Pass::new(chrono::Utc::now());
            for c in compiled {
                let CompiledSource::Kubernetes(k) = c else { unreachable!() };
                k.evaluate_all(&pass, &idx, &Visibility::Cluster).unwrap();
            }
        });
    }

    #[test]
    fn deepest_allowed_expression_fits_the_worker_stack() {
        deep(STACK_SIZE, STACK_SIZE);
    }

    #[test]
    fn compile_runs_on_a_big_stack() {
        // Compiled from a small thread: the engine parses on a stack of its own.
        for passes in deepest() {
            let spec = serde_json::from_value(serde_json::json!({
                "displayName": "m", "description": "d", "type": "Technical", "category": "Other",
                "owner": {"team": "t", "responsibility": "ApplicationProvider"},
                "source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": passes}},
                "objective": {"operator": ">=", "target": 100},
            }))
            .unwrap();
            let _ = on_thread(256 << 10, move || crate::engine::compile(&spec).map(|_| ()));
        }
    }

    #[test]
    #[ignore = "measures: SECMETRICS_STACK_PROBE=<compile bytes>,<evaluate bytes> aborts on overflow"]
    fn stack_probe() {
        let probe = std::env::var("SECMETRICS_STACK_PROBE").unwrap();
        let (c, e) = probe.split_once(',').unwrap();
        deep(c.parse().unwrap(), e.parse().unwrap());
    }
}
