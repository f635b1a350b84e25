//! Executions: a filtered table (app, status, cold or warm, time range, slower than) under a
//! chart of duration and cold-start p50/p99 over the range; one execution's page with its
//! metrics, where its cold start's time went (queue, fetch, template, spawn or fork, init) as a
//! bar, and its logs. Records come through the API's own listing and lookup.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use ignite_api as api;
use maud::html;

use super::charts::{self, Summary};
use super::{Signed, error_page, html, layout};
use crate::State;
use crate::routes::executions;
use crate::store;

/// The time ranges offered, as (query value, label, milliseconds).
const RANGES: [(&str, &str, i64); 5] = [
    ("15m", "last 15 minutes", 15 * 60_000),
    ("1h", "last hour", 3_600_000),
    ("6h", "last 6 hours", 6 * 3_600_000),
    ("24h", "last 24 hours", 24 * 3_600_000),
    ("7d", "last 7 days", 7 * 24 * 3_600_000),
];
const STATUSES: [&str; 5] = ["succeeded", "failed", "timeout", "crashed", "running"];
/// Rows shown; the chart sums up every match.
const ROWS: usize = 200;

pub async fn list(
    AxState(state): AxState<Arc<State>>,
    signed: Signed,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let app = get("app");
    let status = get("status").filter(|s| STATUSES.contains(s));
    let start = get("start").filter(|s| *s == "cold" || *s == "warm");
    let range = RANGES
        .iter()
        .find(|r| Some(r.0) == get("range"))
        .unwrap_or(&RANGES[1]);
    let slow = get("slow").and_then(|v| v.parse::<f64>().ok());
    let now = store::now_ms();
    let from = now - range.2;
    let params = api::ListExecutionsParams {
        app: app.map(str::to_string),
        status: status.map(str::to_string),
        since: Some(from),
        limit: None,
    };
    let found = match executions::recent_executions(&state, &signed.org, &params, 10_000).await {
        Ok(f) => f,
        Err(e) => return error_page(Some(&signed), &e),
    };
    let apps = store::list_apps(&state.db, &signed.org)
        .await
        .unwrap_or_default();
    let matching: Vec<store::Execution> = found
        .into_iter()
        .filter(|e| match start {
            Some("cold") => charts::is_cold(e),
            Some(_) => !charts::is_cold(e),
            None => true,
        })
        .filter(|e| slow.is_none_or(|s| e.duration_ms.is_some_and(|d| d >= s)))
        .collect();
    let sum = Summary::of(&matching);
    let buckets = charts::buckets(&matching, from, now, 24);
    let preset = |extra: &str| {
        let mut url = format!("/console/executions?range={}", range.0);
        if let Some(a) = app {
            url.push_str(&format!("&app={a}"));
        }
        url + extra
    };
    let page = layout::page(
        Some(&signed),
        "Executions",
        html! {
            h1 { "Executions" }
            nav.presets aria-label="Presets" {
                a href=(preset("")) { "All" }
                a href=(preset("&start=cold")) { "Cold" }
                a href=(preset("&slow=100")) { "Slow (≥ 100 ms)" }
                a href=(preset("&status=failed")) { "Failed" }
            }
            form.card.filters method="get" action="/console/executions" {
                div.fields {
                    div { label for="f-app" { "App" }
                        select #f-app name="app" {
                            option value="" { "any" }
                            @for a in &apps { option value=(a.name) selected[app == Some(a.name.as_str())] { (a.name) } }
                        } }
                    div { label for="f-status" { "Status" }
                        select #f-status name="status" {
                            option value="" { "any" }
                            @for s in STATUSES { option value=(s) selected[status == Some(s)] { (s) } }
                        } }
                    div { label for="f-start" { "Start" }
                        select #f-start name="start" {
                            option value="" { "cold or warm" }
                            option value="cold" selected[start == Some("cold")] { "cold" }
                            option value="warm" selected[start == Some("warm")] { "warm" }
                        } }
                    div { label for="f-range" { "Time range" }
                        select #f-range name="range" {
                            @for r in &RANGES { option value=(r.0) selected[r.0 == range.0] { (r.1) } }
                        } }
                    div { label for="f-slow" { "Slower than (ms)" }
                        input #f-slow name="slow" inputmode="decimal" value=(get("slow").unwrap_or("")); }
                }
                button type="submit" { "Filter" }
            }
            p #summary { (sum.count) " executions, " (sum.errors) " errors · duration p50 "
                (layout::ms(sum.p50)) ", p99 " (layout::ms(sum.p99)) " · cold start p50 "
                (layout::ms(sum.cold_p50)) ", p99 " (layout::ms(sum.cold_p99)) }
            (charts::latency_chart(&buckets, from, now))
            div.scroll { table #executions {
                thead { tr {
                    th scope="col" { "Execution" } th scope="col" { "App" } th scope="col" { "Version" }
                    th scope="col" { "Status" } th scope="col" { "Start" } th scope="col" { "Cold start" }
                    th scope="col" { "Duration" } th scope="col" { "Started (UTC)" }
                } }
                tbody { @for e in matching.iter().take(ROWS) {
                    tr {
                        th scope="row" { a href={"/console/executions/" (e.id)} { code { (e.id) } } }
                        td { (e.app) } td { "v" (e.version) } td { (layout::status(&e.status)) }
                        td { @if charts::is_cold(e) { (e.start_kind.as_deref().unwrap_or("cold")) } @else { "warm" } }
                        td { (layout::ms(e.cold_start_ms.filter(|c| *c > 0.0))) }
                        td { (layout::ms(e.duration_ms)) }
                        td { (layout::utc(e.started_at)) }
                    }
                } }
            } }
            @if matching.len() > ROWS { p.hint { "The newest " (ROWS) " of " (matching.len()) " are listed." } }
        },
    );
    html(StatusCode::OK, page)
}

pub async fn page(
    AxState(state): AxState<Arc<State>>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    let e = match executions::find_execution(&state, &signed.org, &id).await {
        Ok(e) => e,
        Err(e) => return error_page(Some(&signed), &e),
    };
    let view = executions::execution_view(&e);
    let m = &view.metrics;
    let spawn_label = match e.start_kind.as_deref() {
        Some("fork") => "fork",
        Some("component") => "instantiate",
        _ => "spawn",
    };
    let phases: Vec<(&str, &str, f64)> = match &m.cold_start_phases {
        Some(p) => vec![
            ("queue", "queue", m.queue_ms.unwrap_or(0.0)),
            ("fetch", "fetch", p.fetch_ms),
            ("template", "template", p.template_ms),
            (spawn_label, "spawn", p.spawn_ms),
            ("init", "init", p.init_ms),
        ],
        None => vec![],
    };
    let total: f64 = phases.iter().map(|p| p.2).sum();
    let page = layout::page(
        Some(&signed),
        &format!("Execution {id}"),
        html! {
            h1 { "Execution " code { (view.id) } }
            dl.facts {
                div { dt { "App" } dd { a href={"/console/apps/" (e.org) "/" (e.app)} { (view.app_id) } " v" (view.version) } }
                div { dt { "Status" } dd #status { (layout::status(&view.status)) } }
                div { dt { "Response" } dd { (view.response_status.map_or("–".into(), |s| s.to_string())) } }
                div { dt { "Trigger" } dd { (view.trigger) } }
                div { dt { "Started (UTC)" } dd { (layout::utc(view.started_at)) } }
                div { dt { "Duration" } dd #duration { (layout::ms(m.duration_ms)) } }
                div { dt { "Billed" } dd { (m.billed_duration_ms.map_or("–".into(), |b| format!("{b} ms"))) } }
                div { dt { "Cold start" } dd #cold-start { (layout::ms(m.cold_start_ms)) } }
                div { dt { "Queued" } dd { (layout::ms(m.queue_ms)) } }
            }
            @if let Some(err) = &view.error { p.notice.bad role="alert" { (err) } }
            section.card aria-labelledby="phases-title" {
                h2 #phases-title { "Cold start" }
                @if phases.is_empty() {
                    p #phases-none { "A warm call: an instance was ready, nothing was started." }
                } @else {
                    div.phases #phases role="img" aria-label={"cold start phases, " (layout::ms(Some(total))) " in all"} {
                        @for (label, class, v) in &phases {
                            @if *v > 0.0 {
                                span.(class) style={"flex-grow:" (format!("{:.4}", v.max(total / 200.0)))}
                                    title={(label) " " (layout::ms(Some(*v)))} {}
                            }
                        }
                    }
                    table.phase-table { tbody {
                        @for (label, class, v) in &phases {
                            tr data-phase=(label) { th scope="row" { span.swatch.(class) {} " " (label) } td { (layout::ms(Some(*v))) } }
                        }
                        tr { th scope="row" { "in all" } td { (layout::ms(Some(total))) } }
                    } }
                }
            }
            section.card aria-labelledby="logs-title" {
                h2 #logs-title { "Logs" }
                @if view.logs.is_empty() { p.muted { "No log lines." } }
                @else { pre #logs tabindex="0" { @for l in &view.logs { (l) "\n" } } }
            }
        },
    );
    html(StatusCode::OK, page)
}
