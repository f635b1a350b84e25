//! An app's page and what it changes: its draft's build (status and the compile log, followed
//! live by the script), versions with publish and rollback (each behind a confirmation page),
//! scaling, environment and internet access — every change through the API's own function,
//! whose refusal the page shows beside the form.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use ignite_api as api;
use maud::{Markup, html};

use super::charts::Summary;
use super::{Post, Signed, error_page, field, html, layout, see_other};
use crate::State;
use crate::error::{ApiError, ApiResult};
use crate::routes::{app_of_caller, apps, drafts, versions};
use crate::store::{self, App};

type AppPath = Path<(String, String)>;

/// Which form a notice belongs to, and what it says.
struct Notice<'a> {
    section: &'a str,
    ok: bool,
    text: String,
}

fn done_text(done: &str) -> Option<&'static str> {
    Some(match done {
        "publish" => "Published: the new version serves traffic now.",
        "rollback" => "Rolled back: that version serves traffic now.",
        "scaling" => "Scaling saved; it takes effect at once.",
        "env" => "Environment saved; it travels with the next published version.",
        "network" => "Internet access changed; running instances are replaced.",
        "compile" => "Compile started; its log follows below.",
        _ => return None,
    })
}

fn section_of(done: &str) -> &'static str {
    match done {
        "publish" | "rollback" => "versions",
        "scaling" => "scaling",
        "env" => "env",
        "network" => "network",
        _ => "draft",
    }
}

pub async fn page(
    AxState(state): AxState<Arc<State>>,
    signed: Signed,
    Path((org, name)): AppPath,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let notice = q.get("done").and_then(|d| {
        done_text(d).map(|t| Notice {
            section: section_of(d),
            ok: true,
            text: t.into(),
        })
    });
    match render(&state, &signed, &org, &name, notice, None).await {
        Ok(p) => html(StatusCode::OK, p),
        Err(e) => error_page(Some(&signed), &e),
    }
}

/// The app page, or the API's error for an app the org does not own.
async fn render(
    state: &State,
    signed: &Signed,
    org: &str,
    name: &str,
    notice: Option<Notice<'_>>,
    scaling_form: Option<&HashMap<String, String>>,
) -> ApiResult<Markup> {
    let app = app_of_caller(state, &signed.org, org, name).await?;
    let view = apps::view(state, &app).await?;
    let versions = store::list_versions(&state.db, org, name).await?;
    let recent = super::apps::last_hour(state, org, Some(name)).await?;
    let sum = Summary::of(&recent);
    let base = format!("/console/apps/{org}/{name}");
    let note = |section: &str| {
        layout::notice(
            notice
                .as_ref()
                .filter(|n| n.section == section)
                .map(|n| (n.ok, n.text.clone()))
                .as_ref(),
        )
    };
    let s = &view.scaling;
    let scaling_value = |key: &str, current: u32| -> String {
        scaling_form
            .and_then(|f| f.get(key).cloned())
            .unwrap_or_else(|| current.to_string())
    };
    let env_text: String = view.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    Ok(layout::page(
        Some(signed),
        &view.id,
        html! {
            h1 { (view.name) " " span.muted { (view.runtime) } }
            @if !view.description.is_empty() { p { (view.description) } }
            dl.facts {
                div { dt { "Active version" } dd #active-version { @match view.active_version {
                    Some(v) => { "v" (v) } None => { "none yet" } } } }
                div { dt { "Public URL" } dd { @for u in &view.public_urls { a href=(u) { (u) } } } }
                div { dt { "Last hour" } dd { (sum.count) " calls, " (sum.errors) " errors" } }
                div { dt { "p50 / p99" } dd { (layout::ms(sum.p50)) " / " (layout::ms(sum.p99)) } }
                div { dt { "Executions" } dd { a href={"/console/executions?app=" (name)} { "All of this app's" } } }
            }

            section.card #invoke aria-labelledby="invoke-title" {
                h2 #invoke-title { "Invoke" }
                form #invoke-form method="post" action={(base) "/invoke"} {
                    (layout::csrf(signed))
                    label for="payload" { "JSON payload" }
                    textarea #payload name="payload" rows="4" spellcheck="false" { "{}" }
                    button type="submit" { "Send" }
                }
                section #invoke-result aria-live="polite" {}
            }

            section.card #draft aria-labelledby="draft-title" {
                h2 #draft-title { "Draft" }
                (note("draft"))
                @match &view.draft {
                    None => { p { "No draft saved yet: " code { "dodil ignite draft save " (view.id) " --code ./" } } }
                    Some(d) => {
                        p {
                            "Build: " span #build-status data-status=(d.compile_status) { (layout::status(&d.compile_status)) }
                            @if let Some(t) = &d.rust_target { " · target " (t) }
                            @if let Some(e) = &d.compile_error { " · " span.bad-text { (e) } }
                        }
                        @if d.build_id.is_some() {
                            pre #build-log tabindex="0" aria-label="compile log" aria-live="polite"
                                data-follow={(base) "/compile-logs"} data-status=(d.compile_status) {}
                        }
                        div.actions {
                            @if d.runtime == "rust" && d.compile_status != "compiling" {
                                form.inline method="post" action={(base) "/compile"} {
                                    (layout::csrf(signed))
                                    button type="submit" { "Compile" }
                                }
                            }
                            a.button #publish href={(base) "/publish"} { "Publish…" }
                        }
                    }
                }
            }

            section.card #versions aria-labelledby="versions-title" {
                h2 #versions-title { "Versions" }
                (note("versions"))
                div.scroll { table {
                    thead { tr {
                        th scope="col" { "Version" } th scope="col" { "Target" }
                        th scope="col" { "Digest" } th scope="col" { "Size" }
                        th scope="col" { "Created (UTC)" } th scope="col" { span.sr { "Action" } }
                    } }
                    tbody {
                        @for v in versions.iter().filter(|v| v.version > 0).rev() {
                            tr data-version=(v.version) {
                                th scope="row" { "v" (v.version)
                                    @if view.active_version == Some(v.version) { " " span.badge.good { "active" } } }
                                td { (v.artifact_target.as_deref().unwrap_or(&v.runtime)) }
                                td { code title=(v.artifact_digest.as_deref().unwrap_or("")) {
                                    (layout::short_digest(v.artifact_digest.as_deref())) } }
                                td { (layout::bytes(v.artifact_size)) }
                                td { (layout::utc(v.created_at)) }
                                td { @if view.active_version != Some(v.version) {
                                    a.rollback href={(base) "/rollback?version=" (v.version)} { "Roll back to v" (v.version) "…" }
                                } }
                            }
                        }
                    }
                } }
            }

            section.card #scaling aria-labelledby="scaling-title" {
                h2 #scaling-title { "Scaling" }
                (note("scaling"))
                form method="post" action={(base) "/scaling"} {
                    (layout::csrf(signed))
                    div.fields {
                        @for (key, label, current, hint) in [
                            ("reserved_capacity", "Reserved capacity", s.reserved_capacity, "instances kept warm"),
                            ("max_instances", "Max instances", s.max_instances, "past it, requests queue"),
                            ("concurrency", "Concurrency", s.concurrency, "requests per instance"),
                            ("idle_timeout_s", "Idle timeout (s)", s.idle_timeout_s, "0: stop when idle"),
                            ("timeout_s", "Deadline (s)", s.timeout_s, "1–900"),
                            ("memory_mb", "Memory (MiB)", s.memory_mb, "per instance"),
                            ("queue_depth", "Queue depth", s.queue_depth, "past it, 429"),
                        ] {
                            div {
                                label for=(key) { (label) }
                                input id=(key) name=(key) inputmode="numeric" value=(scaling_value(key, current))
                                    aria-describedby={(key) "-hint"};
                                small id={(key) "-hint"} { (hint) }
                            }
                        }
                    }
                    button type="submit" { "Save scaling" }
                }
            }

            section.card #env aria-labelledby="env-title" {
                h2 #env-title { "Environment" }
                (note("env"))
                form method="post" action={(base) "/env"} {
                    (layout::csrf(signed))
                    label for="env-text" { "One " code { "NAME=value" } " a line" }
                    textarea #env-text name="env" rows="4" spellcheck="false" { (env_text) }
                    button type="submit" { "Save environment" }
                }
            }

            section.card #network aria-labelledby="network-title" {
                h2 #network-title { "Internet access" }
                (note("network"))
                form method="post" action={(base) "/network"} {
                    (layout::csrf(signed))
                    p { "Outbound internet access is "
                        strong #egress { @if view.network.egress { "on" } @else { "off" } } "." }
                    input type="hidden" name="egress" value=(if view.network.egress { "off" } else { "on" });
                    button type="submit" { @if view.network.egress { "Turn it off" } @else { "Turn it on" } }
                }
            }
        },
    ))
}

/// After a refused change: the page again, the API's message beside the form, the status the
/// API answered.
async fn refused(
    state: &State,
    signed: &Signed,
    org: &str,
    name: &str,
    section: &str,
    e: ApiError,
    form: Option<&HashMap<String, String>>,
) -> Response {
    let notice = Notice {
        section,
        ok: false,
        text: e.message.clone(),
    };
    match render(state, signed, org, name, Some(notice), form).await {
        Ok(p) => html(e.status, p),
        Err(_) => error_page(Some(signed), &e),
    }
}

fn done(org: &str, name: &str, what: &str) -> Response {
    see_other(&format!("/console/apps/{org}/{name}?done={what}"))
}

/// The compile log as the API streams it (NDJSON), followed until the compile ends.
pub async fn compile_logs(
    AxState(state): AxState<Arc<State>>,
    signed: Signed,
    Path((org, name)): AppPath,
) -> Response {
    let run = async {
        app_of_caller(&state, &signed.org, &org, &name).await?;
        let q = api::LogsParams { follow: Some(true) };
        drafts::compile_log_stream(state.clone(), org, name, q).await
    };
    run.await.unwrap_or_else(|e| error_page(Some(&signed), &e))
}

pub async fn compile(
    AxState(state): AxState<Arc<State>>,
    Path((org, name)): AppPath,
    post: Post,
) -> Response {
    let run = async {
        app_of_caller(&state, &post.signed.org, &org, &name).await?;
        drafts::start_compile(state.clone(), org.clone(), name.clone()).await
    };
    match run.await {
        Ok(_) => done(&org, &name, "compile"),
        Err(e) => refused(&state, &post.signed, &org, &name, "draft", e, None).await,
    }
}

/// A confirmation page: what will happen, a button that does it, a link that does not.
fn confirm(
    signed: &Signed,
    title: &str,
    what: Markup,
    action: &str,
    version: Option<i64>,
) -> Markup {
    let back = action.rsplit_once('/').map_or("/console/apps", |(b, _)| b);
    layout::page(
        Some(signed),
        title,
        html! {
            h1 { (title) }
            (what)
            form.card.narrow method="post" action=(action) {
                (layout::csrf(signed))
                @if let Some(v) = version { input type="hidden" name="version" value=(v); }
                div.actions {
                    button #confirm type="submit" autofocus { (title) }
                    a href=(back) { "Cancel" }
                }
            }
        },
    )
}

pub async fn confirm_publish(
    AxState(state): AxState<Arc<State>>,
    signed: Signed,
    Path((org, name)): AppPath,
) -> Response {
    let app = match app_of_caller(&state, &signed.org, &org, &name).await {
        Ok(app) => app,
        Err(e) => return error_page(Some(&signed), &e),
    };
    let next = next_version(&state, &app).await;
    let what = html! {
        p { "The draft of " strong { (org) ":" (name) } " becomes version " (next)
            " and serves traffic at once; the current version finishes its requests and stops." }
    };
    let action = format!("/console/apps/{org}/{name}/publish");
    html(
        StatusCode::OK,
        confirm(&signed, "Publish the draft", what, &action, None),
    )
}

async fn next_version(state: &State, app: &App) -> String {
    match store::list_versions(&state.db, &app.org, &app.name).await {
        Ok(v) => (v.iter().map(|v| v.version).max().unwrap_or(0) + 1).to_string(),
        Err(_) => "the next".into(),
    }
}

pub async fn publish(
    AxState(state): AxState<Arc<State>>,
    Path((org, name)): AppPath,
    post: Post,
) -> Response {
    let run = async {
        let app = app_of_caller(&state, &post.signed.org, &org, &name).await?;
        drafts::publish_draft(state.clone(), app, org.clone(), name.clone()).await
    };
    match run.await {
        Ok(_) => done(&org, &name, "publish"),
        Err(e) => refused(&state, &post.signed, &org, &name, "draft", e, None).await,
    }
}

pub async fn confirm_rollback(
    AxState(state): AxState<Arc<State>>,
    signed: Signed,
    Path((org, name)): AppPath,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let version = q.get("version").and_then(|v| v.parse::<i64>().ok());
    let checked = app_of_caller(&state, &signed.org, &org, &name).await;
    match (checked, version) {
        (Ok(_), Some(v)) => html(
            StatusCode::OK,
            confirm(
                &signed,
                &format!("Roll back to v{v}"),
                html! { p { "Version " (v) " of " strong { (org) ":" (name) } " serves traffic again at once." } },
                &format!("/console/apps/{org}/{name}/rollback"),
                Some(v),
            ),
        ),
        (Err(e), _) => error_page(Some(&signed), &e),
        (Ok(_), None) => error_page(
            Some(&signed),
            &ApiError::bad_request("say which version to roll back to: ?version=<n>"),
        ),
    }
}

pub async fn rollback(
    AxState(state): AxState<Arc<State>>,
    Path((org, name)): AppPath,
    post: Post,
) -> Response {
    let run = async {
        app_of_caller(&state, &post.signed.org, &org, &name).await?;
        let version = field(&post.form, "version").parse::<i64>().map_err(|_| {
            ApiError::bad_request("the version to roll back to must be a number (1, 2, …)")
        })?;
        versions::roll_back(&state, &org, &name, api::Rollback { version }).await
    };
    match run.await {
        Ok(_) => done(&org, &name, "rollback"),
        Err(e) => refused(&state, &post.signed, &org, &name, "versions", e, None).await,
    }
}

/// The scaling form as the API's partial update: an empty field leaves the setting as it is;
/// a field that is not a whole number is named.
fn scaling_update(form: &HashMap<String, String>) -> ApiResult<api::ScalingUpdate> {
    let get = |key: &str| -> ApiResult<Option<u32>> {
        let v = field(form, key);
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<u32>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "{key} must be a whole number of 0 or more, not {:?}",
                v.chars().take(20).collect::<String>()
            ))
        })
    };
    Ok(api::ScalingUpdate {
        reserved_capacity: get("reserved_capacity")?,
        max_instances: get("max_instances")?,
        concurrency: get("concurrency")?,
        idle_timeout_s: get("idle_timeout_s")?,
        timeout_s: get("timeout_s")?,
        memory_mb: get("memory_mb")?,
        queue_depth: get("queue_depth")?,
    })
}

pub async fn scaling(
    AxState(state): AxState<Arc<State>>,
    Path((org, name)): AppPath,
    post: Post,
) -> Response {
    let run = async {
        let app = app_of_caller(&state, &post.signed.org, &org, &name).await?;
        apps::update_scaling(&state, &app, &scaling_update(&post.form)?).await
    };
    match run.await {
        Ok(_) => done(&org, &name, "scaling"),
        Err(e) => {
            refused(
                &state,
                &post.signed,
                &org,
                &name,
                "scaling",
                e,
                Some(&post.form),
            )
            .await
        }
    }
}

/// `NAME=value` lines as the API's environment; a line without `=` is named.
fn env_of(text: &str) -> ApiResult<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ApiError::bad_request(format!(
                "line {} of the environment has no '=': write NAME=value",
                i + 1
            )));
        };
        env.insert(k.trim().to_string(), v.to_string());
    }
    Ok(env)
}

pub async fn env(
    AxState(state): AxState<Arc<State>>,
    Path((org, name)): AppPath,
    post: Post,
) -> Response {
    let run = async {
        let app = app_of_caller(&state, &post.signed.org, &org, &name).await?;
        let env = env_of(post.form.get("env").map_or("", String::as_str))?;
        apps::replace_env(&state, &app, api::SetEnv { env }).await
    };
    match run.await {
        Ok(_) => done(&org, &name, "env"),
        Err(e) => refused(&state, &post.signed, &org, &name, "env", e, None).await,
    }
}

pub async fn network(
    AxState(state): AxState<Arc<State>>,
    Path((org, name)): AppPath,
    post: Post,
) -> Response {
    let run = async {
        let app = app_of_caller(&state, &post.signed.org, &org, &name).await?;
        let egress = field(&post.form, "egress") == "on";
        apps::update_network(&state, &app, api::NetworkConfig { egress }).await
    };
    match run.await {
        Ok(_) => done(&org, &name, "network"),
        Err(e) => refused(&state, &post.signed, &org, &name, "network", e, None).await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn a_scaling_field_that_is_not_a_number_is_named() {
        let form = HashMap::from([
            ("max_instances".to_string(), "ten".to_string()),
            ("memory_mb".to_string(), String::new()),
        ]);
        let e = super::scaling_update(&form).err().map(|e| e.message);
        assert!(e.is_some_and(|m| m.contains("max_instances must be a whole number")));
        let form = HashMap::from([("max_instances".to_string(), " 4 ".to_string())]);
        let u = super::scaling_update(&form).ok();
        assert_eq!(u.and_then(|u| u.max_instances), Some(4));
    }

    #[test]
    fn environment_lines_become_variables() {
        let env = super::env_of("A=1\r\n\n# note\nB = two=2\n").ok();
        let env = env.unwrap_or_default();
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some(" two=2"));
        assert!(super::env_of("oops").is_err());
    }
}
