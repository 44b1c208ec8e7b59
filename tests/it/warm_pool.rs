//! `WarmPool`: environments started ahead of need, handed out at once, refilled in the
//! background; a spare that died while waiting is removed, not handed out.

use std::time::{Duration, Instant};

use rayfine::{LoadOptions, Mode, WarmPool};
use serde_json::json;

use super::util::EnvCopy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_hands_out_started_environments_refills_and_skips_dead_spares() {
    let env_dir = EnvCopy::of("counter");
    let options = LoadOptions::folder(env_dir.path()).mode(Mode::Process).env_var("COUNTER_NAME", "warm");
    let pool = WarmPool::start(options.clone(), 2).await.unwrap();
    assert_eq!((pool.ready(), pool.size()), (2, 2));
    let first_spare = pool.spares()[0].id().to_string();

    // Taken: the oldest spare, already started, and now the caller's.
    let taken = pool.acquire().await.unwrap();
    assert_eq!(taken.id(), first_spare);
    assert_eq!(taken.call("increment", json!({})).await.unwrap(), 1);
    assert_eq!(pool.handed_out(), (1, 0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.ready() < 2 {
        assert!(Instant::now() < deadline, "the pool did not refill to 2: {pool:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every spare killed from outside: none is handed out; the caller gets a live environment.
    let killed: Vec<String> = pool.spares().iter().map(|e| e.id().to_string()).collect();
    for spare in pool.spares() {
        // SAFETY: signals a server this test's pool started.
        unsafe { libc::kill(spare.pid().unwrap() as i32, libc::SIGKILL) };
    }
    let fresh = pool.acquire().await.unwrap();
    assert!(!killed.contains(&fresh.id().to_string()), "a killed spare was handed out");
    assert_eq!(fresh.call("increment", json!({})).await.unwrap(), 1);
    let (warm, cold) = pool.handed_out();
    assert_eq!(warm + cold, 2);

    // Cleanup takes the spares (and those still starting); what was handed out stays the
    // caller's until it cleans up.
    pool.cleanup().await.unwrap();
    assert_eq!(pool.ready(), 0);
    assert!(pool.acquire().await.unwrap_err().to_string().contains("cleaned up"));
    assert_eq!(taken.call("increment", json!({})).await.unwrap(), 2);
    taken.cleanup().await.unwrap();
    fresh.cleanup().await.unwrap();
    env_dir.assert_no_process_left();

    let err = WarmPool::start(options, 0).await.unwrap_err().to_string();
    assert!(err.contains("1 to 1024"), "{err}");
}
