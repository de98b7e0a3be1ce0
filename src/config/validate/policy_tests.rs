//! Tests of `parse` for traffic policy (SPEC §8): route access lists, redirects, header
//! rules and rate limits, listener PROXY headers, trusted proxies, backend queues.

use std::path::Path;

use super::parse;
use super::tests::{FILE, golden, ok};

#[test]
fn golden_access_lists() {
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n[[route]]\nallow = [\"10.0.0.0/8\", \"10.0.0.300\"]\ndeny = [\"::1\", \"office\"]\nupstream = \"web\"\n",
        &[
            "6:24: route.allow: \"10.0.0.300\" is not an address or network; expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"127.0.0.1\"",
            "7:16: route.deny: \"office\" is not an address or network; expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"127.0.0.1\"",
        ],
    );
    let c = parse(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n[[route]]\nallow = [\"10.1.2.3/8\", \"2001:db8::1\"]\nupstream = \"web\"\n",
        Path::new(FILE),
    )
    .unwrap();
    let allow: Vec<String> = c.routes[0].allow.iter().map(|n| n.to_string()).collect();
    assert_eq!(allow, ["10.0.0.0/8", "2001:db8::1/128"]);
}

#[test]
fn golden_redirects() {
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[route]]\nredirect = { to = \"https://{hots}{uri}\" }\n[[route]]\nredirect = { to = \"https://a/\", status = 303 }\n[[route]]\npath_prefix = \"/x\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n",
        &[
            "4:19: route.redirect.to: \"https://{hots}{uri}\" has an unknown placeholder; use {host}, {uri} or {scheme}",
            "6:42: route.redirect.status: 303 is not one of 301, 302, 307, 308",
            "7:1: missing key \"upstream\" in [[route]]",
        ],
    );
}

#[test]
fn a_config_that_only_redirects_needs_no_upstream() {
    let c = parse(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[route]]\nredirect = { to = \"https://{host}{uri}\", status = 308 }\n",
        Path::new(FILE),
    )
    .unwrap();
    assert!(c.upstreams.is_empty());
    assert_eq!(c.routes[0].redirect.as_ref().unwrap().status, 308);
}

#[test]
fn golden_header_rules() {
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n[[route]]\nupstream = \"web\"\nrequest_headers = { set = { \"Host\" = \"x\" }, remove = [\"Content-Length\", \"bad name\"] }\n",
        &[
            "7:29: route.request_headers: \"Host\" cannot be changed here: it frames or routes the message",
            "7:55: route.request_headers: \"Content-Length\" cannot be changed here: it frames or routes the message",
            "7:73: route.request_headers: \"bad name\" is not a header name",
        ],
    );
}

#[test]
fn golden_rate_limits() {
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n[[route]]\nupstream = \"web\"\nrate_limit = { key = \"cookie:x\", rate = \"10/d\", burst = 0 }\n",
        &["7:22: route.rate_limit.key \"cookie:x\" is not one of client_ip, header:NAME"],
    );
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n[[route]]\nupstream = \"web\"\nrate_limit = { rate = \"10/d\" }\n",
        &[
            "7:23: route.rate_limit.rate \"10/d\" is not a rate; expected e.g. \"100/s\", \"600/m\" or \"1000/h\"",
        ],
    );
}

#[test]
fn listener_proxy_protocol_is_a_bool() {
    let c = ok(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\nproxy_protocol = true\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n",
    );
    assert!(c.listeners[0].proxy_protocol);
    let c = ok(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n",
    );
    assert!(!c.listeners[0].proxy_protocol, "off by default");
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\nproxy_protocol = \"v2\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n",
        &[
            "3:18: listener.proxy_protocol has the wrong type: found string \"v2\", expected a boolean",
        ],
    );
}

#[test]
fn golden_backend_limits_and_queues() {
    let c = ok(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\nmax_inflight_per_backend = 50\nqueue = { max = 20, timeout = \"2s\" }\n",
    );
    let u = &c.upstreams[0];
    assert_eq!(u.max_inflight_per_backend, 50);
    assert_eq!((u.queue.max, u.queue.timeout.as_millis()), (20, 2000));
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\nqueue = { max = -1, timeout = \"0s\", maxx = 1 }\n",
        &[
            "5:9: upstream \"web\": queue needs max_inflight_per_backend (requests queue only when every backend is at it)",
            "5:17: upstream \"web\": queue.max: -1 is out of range; expected 0 to 1000000",
            "5:31: upstream \"web\": queue.timeout: \"0s\" must be greater than zero",
            "5:37: unknown key \"maxx\" in upstream.web.queue; expected max or timeout",
        ],
    );
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\nmax_inflight_per_backend = -3\nqueue = { max = -1, timeout = \"0s\" }\n",
        &[
            "5:28: upstream \"web\": max_inflight_per_backend: -3 is too small; expected at least 0",
            "6:17: upstream \"web\": queue.max: -1 is out of range; expected 0 to 1000000",
            "6:31: upstream \"web\": queue.timeout: \"0s\" must be greater than zero",
        ],
    );
}

#[test]
fn golden_shared_rate_limits() {
    let c = ok(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n[[route]]\nupstream = \"web\"\nrate_limit = { rate = \"10/s\", shared = \"redis://10.0.0.5:6379/2\" }\n",
    );
    let shared = c.routes[0].rate_limit.as_ref().unwrap().shared.as_deref();
    assert_eq!(shared, Some("redis://10.0.0.5:6379/2"));
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n[[route]]\nupstream = \"web\"\nrate_limit = { rate = \"10/s\", shared = \"http://10.0.0.5\" }\n[[route]]\nupstream = \"web\"\nrate_limit = { rate = \"10/s\", shared = \"rediss://10.0.0.5\" }\n",
        &[
            "7:40: route.rate_limit.shared: \"http://10.0.0.5\" is not a Redis URL; expected e.g. \"redis://127.0.0.1:6379\" or \"redis://:password@10.0.0.5:6379/2\"",
            "10:40: route.rate_limit.shared: \"rediss://10.0.0.5\" uses TLS (rediss://), which is not supported; use redis:// on a trusted network",
        ],
    );
}

#[test]
fn golden_upstream_proxy_protocol() {
    use crate::config::ProxyVersion;
    let c = ok(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\nproxy_protocol = \"v2\"\n",
    );
    assert_eq!(c.upstreams[0].proxy_protocol, Some(ProxyVersion::V2));
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\nproxy_protocol = \"v3\"\n[upstream.grpc]\nbackends = [{ url = \"127.0.0.1:10\" }]\nprotocol = \"h2c\"\nproxy_protocol = \"v1\"\n",
        &[
            "3:11: 2 upstreams are defined (web, grpc) but there is no [[route]]; add [[route]] sections saying which requests go to which upstream",
            "5:18: upstream \"web\": proxy_protocol \"v3\" is not one of off, v1, v2",
            "9:18: upstream \"grpc\": proxy_protocol needs protocol = \"http1\": an HTTP/2 backend connection is shared by many clients, and a PROXY header names one",
        ],
    );
}

#[test]
fn golden_debug_from() {
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.1:9901\"\ndebug_from = [\"127.0.0.1\", \"laptop\"]\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n",
        &[
            "5:28: admin.debug_from: \"laptop\" is not an address or network; expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"127.0.0.1\"",
        ],
    );
    let c = parse(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.1:9901\"\ndebug_from = [\"127.0.0.1\", \"10.9.0.0/16\"]\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9\" }]\n",
        Path::new(FILE),
    )
    .unwrap();
    let nets: Vec<String> = c
        .admin
        .unwrap()
        .debug_from
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["127.0.0.1/32", "10.9.0.0/16"]);
}
