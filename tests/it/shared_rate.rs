//! Rate limits a fleet shares through Redis (SPEC §8 `rate_limit.shared`): two sluice
//! instances on one real Redis enforce one limit together; with Redis refusing or
//! frozen each instance limits on its own, counts the fallback, and never answers 5xx.

use http_body_util::Full;

use crate::support::redis::Redis;
use crate::support::*;

async fn instance(be: &TestBackend, shared: &str, burst: u32) -> Sluice {
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath_prefix = \"/api\"\nupstream = \"web\"\n\
         rate_limit = {{ key = \"header:x-api-key\", rate = \"1/h\", burst = {burst}, shared = \"{shared}\" }}\n\
         [[route]]\nupstream = \"web\"\n\
         rate_limit = {{ rate = \"1/h\", burst = {burst}, shared = \"{shared}\" }}\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await
}

/// The status of a GET of `path` through `lb` with `x-api-key: key`.
async fn call(lb: &Sluice, path: &str, key: &str) -> (u16, Option<String>) {
    let req = http::Request::get(path)
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap();
    let (s, h, _) = lb.send(req).await;
    let retry = h.get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (s.as_u16(), retry)
}

const FALLBACKS: &str = "sluice_rate_limit_fallbacks_total{upstream=\"web\"}";

#[tokio::test]
async fn two_instances_on_one_redis_enforce_one_limit() {
    let redis = Redis::start().await;
    let be = TestBackend::replying("ok").await;
    let (a, b) = (
        instance(&be, &redis.url(), 4).await,
        instance(&be, &redis.url(), 4).await,
    );
    for lb in [&a, &b, &a, &b] {
        assert_eq!(call(lb, "/api/x", "alice").await, (200, None));
    }
    for lb in [&a, &b] {
        let (status, retry) = call(lb, "/api/x", "alice").await;
        assert_eq!(status, 429, "four between them");
        let secs: u64 = retry.unwrap().parse().unwrap();
        assert_eq!(secs, 3600, "a token an hour");
    }
    assert_eq!(call(&b, "/api/x", "bob").await.0, 200, "another key");
    // By client address on the other route: its own buckets, the same fleet-wide.
    for lb in [&a, &b, &a, &b] {
        assert_eq!(call(lb, "/", "-").await.0, 200);
    }
    assert_eq!(call(&a, "/", "-").await.0, 429);
    // Readable keys, one per route and key.
    assert_eq!(
        redis
            .command("EXISTS sluice:rl:*/api:h:alice sluice:rl:*/:ip:127.0.0.1")
            .await
            .as_deref(),
        Some(":2")
    );
    assert_eq!(a.metric(FALLBACKS).await, Some(0.0));
    assert_eq!(be.hits(), 9, "nothing over the limit reached the backend");
}

#[tokio::test]
async fn without_redis_each_instance_limits_on_its_own_and_never_fails() {
    let be = TestBackend::replying("ok").await;
    // Nothing listens there: refused at once.
    let gone = format!("redis://{}", dead_addr().await);
    let (a, b) = (instance(&be, &gone, 2).await, instance(&be, &gone, 2).await);
    for lb in [&a, &b] {
        assert_eq!(call(lb, "/api/x", "alice").await.0, 200);
        assert_eq!(call(lb, "/api/x", "alice").await.0, 200);
        assert_eq!(call(lb, "/api/x", "alice").await.0, 429, "per instance");
        assert_eq!(lb.metric(FALLBACKS).await, Some(3.0));
    }

    // A Redis that stops answering (frozen): the same, after at most 100 ms each.
    let redis = Redis::start().await;
    let lb = instance(&be, &redis.url(), 2).await;
    assert_eq!(call(&lb, "/api/x", "carol").await.0, 200);
    redis.pause();
    assert_eq!(call(&lb, "/api/x", "carol").await.0, 200, "its own bucket");
    assert_eq!(call(&lb, "/api/x", "carol").await.0, 200);
    assert_eq!(call(&lb, "/api/x", "carol").await.0, 429);
    assert_eq!(lb.metric(FALLBACKS).await, Some(3.0));
    // Back: Redis is asked again (after a rest of at most a second), for a new key.
    redis.resume();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for n in 0.. {
        let before = lb.metric(FALLBACKS).await;
        let key = format!("dave{n}");
        assert_eq!(
            call(&lb, "/api/x", &key).await.0,
            200,
            "a new key has its burst"
        );
        if lb.metric(FALLBACKS).await == before {
            let exists = format!("EXISTS sluice:rl:*/api:h:{key}");
            assert_eq!(redis.command(&exists).await.as_deref(), Some(":1"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis not used again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
