//! Cost of one `pick` for every policy on pools of 4, 64 and 1024 nodes with
//! weights 1..=4 and random in-flight load, all nodes eligible (`pick/…`),
//! and of the prefix-aware policies routing classified chat requests of 64
//! conversations in turn, so their prefix index is used (`pick_prompt/…`;
//! `pick_hot_prompt/…` with every node holding their system prompt), or a
//! new prompt on every request (`pick_new_prompt/…`).
//!
//! `INFERGATE_BENCH_CPU=1` measures the bench thread's CPU time instead of
//! wall time: on a shared, loaded machine wall time also counts the time
//! the thread waited for a core.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion};
use http::uri::Authority;
use infergate::balance::{build, BalanceOptions, PickContext, Policy, POLICY_NAMES};
use infergate::classify::prefix::{block_hashes, seed_for_model};
use infergate::classify::{ApiFamily, Endpoint, Head, RequestClass};
use infergate::fleet::{InFlight, Node};

fn pool(n: usize) -> (Vec<Arc<Node>>, Vec<InFlight>) {
    let mut rng = fastrand::Rng::with_seed(42);
    let nodes: Vec<Arc<Node>> = (0..n)
        .map(|i| {
            Arc::new(Node::new(
                format!("n{i}"),
                Authority::from_static("127.0.0.1:1"),
                (i % 4) as u32 + 1,
            ))
        })
        .collect();
    let guards = nodes
        .iter()
        .flat_map(|node| {
            let k = rng.usize(0..8);
            (0..k).map(|_| node.begin_request()).collect::<Vec<_>>()
        })
        .collect();
    (nodes, guards)
}

fn bench_pick<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("pick");
    for &n in &[4usize, 64, 1024] {
        let (nodes, _guards) = pool(n);
        for &name in POLICY_NAMES {
            let policy = build(name, &nodes, &BalanceOptions::default()).expect("known policy");
            let eligible = |_: usize| true;
            group.bench_with_input(BenchmarkId::new(name, n), &nodes, |b, nodes| {
                b.iter(|| black_box(policy.pick(black_box(nodes), &eligible, &PickContext::EMPTY)))
            });
        }
    }
    group.finish();
}

/// Chat requests of `n` conversations sharing a system prompt, each with
/// its own few kilobytes of history.
fn conversations(n: usize) -> Vec<RequestClass> {
    let system = "You are a helpful assistant. ".repeat(40);
    (0..n)
        .map(|s| {
            let mut class = RequestClass::from_head(Head {
                family: ApiFamily::OpenAi,
                endpoint: Endpoint::ChatCompletions,
                path_model: None,
                parse_body: true,
                asked_priority: None,
            });
            let text = format!("{system}conversation {s}: {}", "and then ".repeat(300));
            class.prefix = block_hashes(seed_for_model("m"), text.as_bytes(), 256);
            class.prompt_tokens = (text.len() / 4) as u32;
            class
        })
        .collect()
}

fn bench_pick_prompt<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("pick_prompt");
    let requests = conversations(64);
    for &n in &[64usize, 1024] {
        let (nodes, _guards) = pool(n);
        for name in ["prefix_aware", "composite"] {
            let policy = build(name, &nodes, &BalanceOptions::default()).expect("known policy");
            bench_turns(&mut group, name, &*policy, &nodes, &requests);
        }
    }
    group.finish();
}

/// The prefix-aware policies on 1,024 nodes that all hold the
/// conversations' shared system prompt (each node was sent one of the 64
/// conversations first): a sampled pick's likely holders are then drawn
/// from 1,024 holders of the first block.
fn bench_pick_hot_prompt<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("pick_hot_prompt");
    let requests = conversations(64);
    let (nodes, _guards) = pool(1024);
    for name in ["prefix_aware", "composite"] {
        let policy = build(name, &nodes, &BalanceOptions::default()).expect("known policy");
        for home in 0..nodes.len() {
            let ctx = PickContext {
                request: Some(&requests[home % requests.len()]),
                headers: None,
            };
            policy.pick(&nodes, &|i| i == home, &ctx);
        }
        bench_turns(&mut group, name, &*policy, &nodes, &requests);
    }
    group.finish();
}

/// One bench of `policy` picking for `requests` in turn, every node
/// eligible.
fn bench_turns<M: Measurement>(
    group: &mut criterion::BenchmarkGroup<'_, M>,
    name: &str,
    policy: &dyn Policy,
    nodes: &[Arc<Node>],
    requests: &[RequestClass],
) {
    let eligible = |_: usize| true;
    let mut turn = 0;
    group.bench_with_input(BenchmarkId::new(name, nodes.len()), nodes, |b, nodes| {
        b.iter(|| {
            turn = (turn + 1) % requests.len();
            let ctx = PickContext {
                request: Some(&requests[turn]),
                headers: None,
            };
            black_box(policy.pick(black_box(nodes), &eligible, &ctx))
        })
    });
}

/// `prefix_aware` when every request is a prompt no node was
/// sent yet (no shared prefix at all): each pick places a new prompt,
/// counting the recent new prompts each node holds. The chain is made
/// anew per iteration (64 values written: a few ns of the figure).
fn bench_pick_new_prompt<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("pick_new_prompt");
    let mut class = conversations(1).remove(0);
    for &n in &[64usize, 1024] {
        let (nodes, _guards) = pool(n);
        let name = "prefix_aware";
        let policy = build(name, &nodes, &BalanceOptions::default()).expect("known policy");
        let eligible = |_: usize| true;
        let mut prompt = 0u64;
        group.bench_with_input(BenchmarkId::new(name, n), &nodes, |b, nodes| {
            b.iter(|| {
                prompt += 1;
                let mut h = prompt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                for block in class.prefix.iter_mut().take(64) {
                    h = h.rotate_left(17) ^ 0x2545_f491_4f6c_dd1d;
                    *block = h;
                }
                let ctx = PickContext {
                    request: Some(&class),
                    headers: None,
                };
                black_box(policy.pick(black_box(nodes), &eligible, &ctx))
            })
        });
    }
    group.finish();
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
struct ThreadCpu;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn run<M: Measurement>(c: Criterion<M>) {
    let mut c = c
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    bench_pick(&mut c);
    bench_pick_prompt(&mut c);
    bench_pick_hot_prompt(&mut c);
    bench_pick_new_prompt(&mut c);
    c.final_summary();
}

fn main() {
    if std::env::var_os("INFERGATE_BENCH_CPU").is_some() {
        run(Criterion::default().with_measurement(ThreadCpu));
    } else {
        run(Criterion::default());
    }
}
