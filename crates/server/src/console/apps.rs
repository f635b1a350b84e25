//! The apps page: each app's runtime, active version, public URL and last hour (a sparkline of
//! invocations and errors, p50/p99 duration, cold-start share); the form that creates one.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::Response;
use ignite_api as api;
use maud::{Markup, html};

use super::charts::{self, Summary};
use super::{Post, Signed, error_page, field, html, layout, see_other};
use crate::State;
use crate::error::ApiResult;
use crate::routes::{apps, executions};
use crate::store::{self, Execution};

const HOUR_MS: i64 = 3_600_000;

pub async fn list(AxState(state): AxState<Arc<State>>, signed: Signed) -> Response {
    match render(&state, &signed, None, None).await {
        Ok(page) => html(StatusCode::OK, page),
        Err(e) => error_page(Some(&signed), &e),
    }
}

/// The last hour's executions of the org (the API's listing: stored and still in flight).
pub async fn last_hour(state: &State, org: &str, app: Option<&str>) -> ApiResult<Vec<Execution>> {
    let q = api::ListExecutionsParams {
        app: app.map(str::to_string),
        since: Some(store::now_ms() - HOUR_MS),
        ..Default::default()
    };
    executions::recent_executions(state, org, &q, 10_000).await
}

async fn render(
    state: &State,
    signed: &Signed,
    problem: Option<&str>,
    form: Option<&api::CreateApp>,
) -> ApiResult<Markup> {
    let list = store::list_apps(&state.db, &signed.org).await?;
    let recent = last_hour(state, &signed.org, None).await?;
    let now = store::now_ms();
    let rows: Vec<(api::App, Summary, Vec<Summary>)> = list
        .iter()
        .map(|a| {
            let mine: Vec<Execution> = recent.iter().filter(|e| e.app == a.name).cloned().collect();
            (
                apps::app_view(state, a, None, None),
                Summary::of(&mine),
                charts::buckets(&mine, now - HOUR_MS, now, 12),
            )
        })
        .collect();
    Ok(layout::page(
        Some(signed),
        "Apps",
        html! {
            h1 { "Apps" }
            @if rows.is_empty() {
                p { "No apps yet: create one below, or with " code { "dodil ignite app create" } "." }
            } @else {
                div.scroll {
                    table #apps {
                        caption { "Your org's apps; the numbers are the last hour's." }
                        thead { tr {
                            th scope="col" { "App" } th scope="col" { "Runtime" }
                            th scope="col" { "Active" } th scope="col" { "Public URL" }
                            th scope="col" { "Invocations / errors" }
                            th scope="col" { "p50 / p99" } th scope="col" { "Cold starts" }
                        } }
                        tbody {
                            @for (app, sum, spark) in &rows {
                                tr data-app=(app.name) {
                                    th scope="row" {
                                        a href={"/console/apps/" (app.org) "/" (app.name)} { (app.name) }
                                    }
                                    td { (app.runtime) }
                                    td.active-version {
                                        @match app.active_version {
                                            Some(v) => { "v" (v) }
                                            None => { span.muted { "not published" } }
                                        }
                                    }
                                    td { @for url in &app.public_urls { a href=(url) { (url) } } }
                                    td.spark-cell {
                                        (charts::sparkline(spark))
                                        span.counts { (sum.count) " / " (sum.errors) }
                                    }
                                    td { (layout::ms(sum.p50)) " / " (layout::ms(sum.p99)) }
                                    td { @match sum.cold_share() {
                                        Some(share) => { (format!("{share:.0} %")) }
                                        None => { "–" }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
            section.card aria-labelledby="create-title" {
                h2 #create-title { "Create an app" }
                @if let Some(p) = problem { p.notice.bad role="alert" #create-error { (p) } }
                form method="post" action="/console/apps" {
                    (layout::csrf(signed))
                    div.fields {
                        div {
                            label for="name" { "Name" }
                            input #name name="name" required maxlength="63"
                                pattern="[a-z0-9]([a-z0-9-]*[a-z0-9])?"
                                value=(form.map_or("", |f| f.name.as_str()));
                        }
                        div {
                            label for="runtime" { "Runtime" }
                            select #runtime name="runtime" {
                                @for r in crate::runtime::RUNTIMES {
                                    option value=(r) selected[form.is_some_and(|f| f.runtime == *r)] { (r) }
                                }
                            }
                        }
                        div.wide {
                            label for="description" { "Description" }
                            input #description name="description"
                                value=(form.map_or("", |f| f.description.as_str()));
                        }
                    }
                    button type="submit" { "Create app" }
                }
            }
        },
    ))
}

/// Creates an app through the API's own function; its refusal is shown above the form.
pub async fn create(AxState(state): AxState<Arc<State>>, post: Post) -> Response {
    let body = api::CreateApp {
        name: field(&post.form, "name").to_string(),
        runtime: field(&post.form, "runtime").to_string(),
        description: field(&post.form, "description").to_string(),
    };
    match apps::create(&state, &post.signed.org, &body).await {
        Ok(app) => see_other(&format!("/console/apps/{}/{}", app.org, app.name)),
        Err(e) => match render(&state, &post.signed, Some(&e.message), Some(&body)).await {
            Ok(page) => html(e.status, page),
            Err(e) => error_page(Some(&post.signed), &e),
        },
    }
}
