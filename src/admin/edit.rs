//! Adding and removing backends through the admin API (SPEC §5). An edit changes a copy
//! of the running configuration and swaps in a snapshot built from it, the way a reload
//! does; the next reload of the file undoes it. Backends that stay keep their counters,
//! health, drains and idle connections; one added starts its slow start.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;

use super::text;
use crate::config::{BackendConfig, BackendUrl, MAX_WEIGHT};
use crate::state::State;

/// The body of `POST /upstreams/{name}/backends`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    url: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    backup: bool,
}

/// `POST /upstreams/{name}/backends`: 201 once the backend is in rotation.
pub fn add(state: &State, name: &str, body: &[u8]) -> Response<Full<Bytes>> {
    // A discovered upstream refuses any add, well-formed or not.
    let config = state.shared.config.load();
    if let Some(refused) = config
        .upstreams
        .iter()
        .find(|u| u.name == name)
        .and_then(discovered)
    {
        return refused;
    }
    drop(config);
    let new: NewBackend = match serde_json::from_slice(body) {
        Ok(n) => n,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}\n")),
    };
    let url = match BackendUrl::parse(&new.url) {
        Ok(u) => u,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let weight = match new.weight {
        None => 1,
        Some(w) if (1..=i64::from(MAX_WEIGHT)).contains(&w) => w as u32,
        Some(w) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("weight {w} is out of range; expected 1 to {MAX_WEIGHT}\n"),
            );
        }
    };
    let id = url.id();
    let _edit = state.edit();
    let mut config = (**state.shared.config.load()).clone();
    let Some(upstream) = config.upstreams.iter_mut().find(|u| u.name == name) else {
        return no_upstream(name);
    };
    if let Some(refused) = discovered(upstream) {
        return refused;
    }
    if upstream.backends.iter().any(|b| b.url.id() == id) {
        return text(
            StatusCode::CONFLICT,
            format!("upstream \"{name}\" already has backend {id}\n"),
        );
    }
    upstream.backends.push(BackendConfig {
        url,
        weight,
        backup: new.backup,
    });
    // Only the edited upstream: a problem elsewhere is not this call's.
    if let Err(e) = crate::state::check_upstream(upstream) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{}\n", crate::proxy::error::chain(&e)),
        );
    }
    state.apply_edit(config);
    tracing::info!(
        upstream = name,
        backend = %id,
        weight,
        backup = new.backup,
        "backend added by admin"
    );
    text(StatusCode::CREATED, format!("added: {id}\n"))
}

/// `DELETE /upstreams/{name}/backends/{host:port}`: 200 once the backend is out of
/// rotation; requests already sent to it finish on their own. The last backend may go
/// too: the upstream then answers 503.
pub fn remove(state: &State, name: &str, id: &str) -> Response<Full<Bytes>> {
    let _edit = state.edit();
    let mut config = (**state.shared.config.load()).clone();
    let Some(upstream) = config.upstreams.iter_mut().find(|u| u.name == name) else {
        return no_upstream(name);
    };
    if let Some(refused) = discovered(upstream) {
        return refused;
    }
    let Some(at) = upstream.backends.iter().position(|b| b.url.id() == id) else {
        let ids: Vec<String> = upstream.backends.iter().map(|b| b.url.id()).collect();
        return super::no_backend(name, id, ids.iter().map(String::as_str));
    };
    upstream.backends.remove(at);
    // Requests routed before the swap hold the old snapshot, where the backend is still
    // listed; draining it keeps their retries off it too.
    if let Some(b) = state
        .shared
        .snapshot
        .load()
        .upstream(name)
        .and_then(|u| u.all.iter().find(|b| &*b.id == id))
    {
        b.stats.set_draining(true);
    }
    state.apply_edit(config);
    tracing::info!(upstream = name, backend = id, "backend removed by admin");
    text(StatusCode::OK, format!("removed: {id}\n"))
}

fn no_upstream(name: &str) -> Response<Full<Bytes>> {
    text(
        StatusCode::NOT_FOUND,
        format!("no upstream named \"{name}\"\n"),
    )
}

/// SPEC §6: a discovered upstream's backends come from its source; adding or removing
/// one by hand is a conflict (drain and enable work).
fn discovered(upstream: &crate::config::UpstreamConfig) -> Option<Response<Full<Bytes>>> {
    let d = upstream.discovery.as_ref()?;
    Some(text(
        StatusCode::CONFLICT,
        format!(
            "upstream \"{}\" takes its backends from {} discovery; change them there (drain and enable work here)\n",
            upstream.name,
            d.source.kind()
        ),
    ))
}
