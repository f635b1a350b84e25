//! The invocation engine: one request, from the gateway or the API, through admission to an
//! instance and back, ending in exactly one execution record. Every runtime takes this path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ignite_agent::{Invocation, Outcome, Reply};

use crate::State;
use crate::error::ApiError;
use crate::fleet::wire::Ran;
use crate::metrics::app_label;
use crate::node::{AcquireError, Route};
use crate::runtime::ColdStart;
use crate::store::{self, App, Execution};

pub use ignite_agent::HttpRequest;

/// Runs one request on the app's active version and records its execution. The response is the
/// handler's, or an error response that says what happened.
///
/// The work runs in a task of its own: a caller that goes away mid-request (a closed connection
/// drops the HTTP handler's future) must neither leak the instance it holds nor leave its
/// execution `running`.
pub async fn execute(
    state: Arc<State>,
    route: Arc<Route>,
    req: HttpRequest,
    trigger: &'static str,
) -> Response {
    let task = tokio::spawn(async move { run_execution(&state, &route, req, trigger).await });
    match task.await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!("an invocation task failed: {e}");
            ApiError::internal("the invocation failed inside the platform; retry it")
                .into_response()
        }
    }
}

async fn run_execution(state: &State, route: &Route, req: HttpRequest, trigger: &str) -> Response {
    let app = &route.app;
    let (org, name) = (app.org.as_str(), app.name.as_str());
    let Some(version) = route.version.as_ref() else {
        return ApiError::conflict(format!(
            "{org}:{name} has no published version yet; run `dodil ignite draft publish {org}:{name}`"
        ))
        .into_response();
    };
    let label = app_label(org, name);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(u64::from(app.scaling.timeout_s));
    let id = ulid::Ulid::new().to_string();
    let mut record = Execution::begun(id.clone(), org, name, version.version, trigger);
    let ran = match &state.fleet {
        // The node is elsewhere: the record is begun before the request leaves (a throttle
        // takes it back), and this replica ends it, whatever the node does.
        Some(fleet) => {
            state.recorder.begin(record.clone());
            let ran = fleet.dispatch(route, version, &id, deadline, req).await;
            if matches!(
                ran,
                Ok(Ran::QueueFull { .. } | Ran::NodeFull { .. } | Ran::Stopping)
            ) {
                state.recorder.discard(&record);
            }
            ran
        }
        None => {
            let invocation = invocation(&id, app, version, deadline, req);
            // The running record is visible once an instance is had, and written only if the
            // request runs long; the final one is written behind the answer.
            let admitted = |queued: Duration, cold: Option<ColdStart>| {
                let mut running = record.clone();
                running.queue_ms = Some(queued.as_secs_f64() * 1e3);
                note_cold_start(&mut running, cold);
                state.recorder.begin(running);
            };
            Ok(run_here(state, route, version, invocation, deadline, admitted).await)
        }
    };
    let (reply, cold, queued) = match ran {
        Ok(Ran::Done {
            reply,
            cold,
            queued,
        }) => (reply, cold, queued),
        Ok(Ran::QueueFull { depth }) => return throttled(state, app, &label, depth),
        Ok(Ran::Deadline { waited }) => {
            return queue_timeout(state, app, record, started, waited);
        }
        Ok(Ran::NodeFull { instances }) => return node_full(app, instances),
        Ok(Ran::Stopping) => {
            let mut response = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is stopping; retry shortly",
            )
            .into_response();
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return response;
        }
        Ok(Ran::StartFailed { message, logs }) => {
            record.logs = logs;
            let message = format!("the instance did not start: {message}");
            let failure = Failure::platform(
                "crashed",
                StatusCode::BAD_GATEWAY,
                "handler_crashed",
                message,
            );
            return finish(state, record, started, None, Err(failure));
        }
        Err(lost) => {
            let failure = Failure::platform(
                "node_lost",
                StatusCode::BAD_GATEWAY,
                "node_lost",
                lost.to_string(),
            );
            return finish(state, record, started, None, Err(failure));
        }
    };
    record.queue_ms = Some(queued.as_secs_f64() * 1e3);
    note_cold_start(&mut record, cold);
    if let Some(cold) = cold {
        count_cold_start(state, &label, cold.total());
    }
    conclude(state, app, &label, record, started, reply)
}

/// Runs a request on this process's own instances: admission through the node's pools (a
/// warm share, a cold start, the queue, or a refusal), then the instance. `admitted` hears
/// once an instance is had. The single-process server and a fleet's node both run requests
/// through here; nothing is recorded (the caller ends the execution).
pub(crate) async fn run_here(
    state: &State,
    route: &Route,
    version: &store::Version,
    invocation: Invocation,
    deadline: Instant,
    admitted: impl FnOnce(Duration, Option<ColdStart>),
) -> Ran {
    let lease = match state.node.acquire(state, route, version, deadline).await {
        Ok(lease) => lease,
        Err(AcquireError::QueueFull { depth }) => return Ran::QueueFull { depth },
        Err(AcquireError::Deadline { waited }) => return Ran::Deadline { waited },
        Err(AcquireError::NodeFull { instances }) => return Ran::NodeFull { instances },
        Err(AcquireError::Stopping) => return Ran::Stopping,
        Err(AcquireError::Start(e)) => {
            return Ran::StartFailed {
                message: e.message,
                logs: e.logs,
            };
        }
    };
    admitted(lease.queued, lease.cold);
    let (lease_cold, queued) = (lease.cold, lease.queued);
    let invoked = lease.instance.invoke(invocation).await;
    // The share of the instance goes back now, before the answer is made.
    drop(lease);
    // A runtime that starts an instance per request (wasm) reports that start itself.
    Ran::Done {
        reply: invoked.reply,
        cold: invoked.start.or(lease_cold),
        queued,
    }
}

/// Puts where a cold start's time went (or that there was none) in the record.
fn note_cold_start(record: &mut Execution, cold: Option<ColdStart>) {
    let ms = |d: Duration| Some(d.as_secs_f64() * 1e3);
    record.cold_start_ms = Some(cold.map_or(0.0, |c| c.total().as_secs_f64() * 1e3));
    if let Some(cold) = cold {
        record.fetch_ms = ms(cold.fetch);
        record.spawn_ms = ms(cold.spawn);
        record.init_ms = ms(cold.init);
        record.template_ms = ms(cold.template);
        record.unpack_ms = ms(cold.unpack);
        record.start_kind = Some(cold.kind.as_str().into());
    }
}

/// What the handler is asked to run (native or wasm): the request, the version's environment,
/// the deadline.
pub(crate) fn invocation(
    execution_id: &str,
    app: &App,
    version: &store::Version,
    deadline: Instant,
    req: HttpRequest,
) -> Invocation {
    Invocation {
        execution_id: execution_id.to_string(),
        function_id: format!("{}/{}", app.org, app.name),
        env: version
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        deadline: Some(deadline),
        request: req,
    }
}

/// A request whose deadline passed while it waited for an instance (native or wasm): 504,
/// recorded as `timeout` with its wait.
fn queue_timeout(
    state: &State,
    app: &App,
    mut record: Execution,
    started: Instant,
    waited: Duration,
) -> Response {
    record.queue_ms = Some(waited.as_secs_f64() * 1e3);
    let message = format!(
        "no instance of {}:{} became free within the {}s deadline (waited {:.0} ms; all {} \
         instances were busy)",
        app.org,
        app.name,
        app.scaling.timeout_s,
        waited.as_secs_f64() * 1e3,
        app.scaling.max_instances
    );
    let failure = Failure::new(
        "timeout",
        StatusCode::GATEWAY_TIMEOUT,
        "deadline_exceeded",
        message,
    );
    finish(state, record, started, None, Err(failure))
}

/// A request refused because the app's instances are busy and its queue is full: 429 with
/// `Retry-After`, not an execution (like a Lambda throttle).
fn throttled(state: &State, app: &App, label: &crate::metrics::Labels, depth: u32) -> Response {
    state.node.metrics.throttled.get_or_create(label).inc();
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "resource_exhausted",
        format!(
            "{}:{} is at max_instances ({}) and {depth} requests are already waiting; retry \
             shortly, or raise its limits with `dodil ignite app scale`",
            app.org, app.name, app.scaling.max_instances
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

/// A cold start the node has no room for: every one of its instances is busy. 503 with
/// `Retry-After` to the app that asked, not an execution (as a throttle).
fn node_full(app: &App, instances: u32) -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!(
            "{}:{} needs one more instance, but all {instances} instances this node holds are \
             busy; retry shortly",
            app.org, app.name
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

fn count_cold_start(state: &State, label: &crate::metrics::Labels, total: Duration) {
    state.node.metrics.cold_starts.get_or_create(label).inc();
    state
        .node
        .metrics
        .cold_start
        .get_or_create(label)
        .observe(total.as_secs_f64());
}

/// Ends an execution from its reply (native or wasm): its logs, the duration metric, the
/// caller's answer and the record.
fn conclude(
    state: &State,
    app: &App,
    label: &crate::metrics::Labels,
    mut record: Execution,
    started: Instant,
    reply: Reply,
) -> Response {
    record.logs = reply.logs.lines;
    if reply.logs.dropped_bytes > 0 {
        record.logs.push(format!(
            "[{} bytes of log dropped: over the per-execution limit]",
            reply.logs.dropped_bytes
        ));
    }
    state
        .node
        .metrics
        .duration
        .get_or_create(label)
        .observe(reply.duration.as_secs_f64());
    let answer = answer_of(app, reply.outcome);
    finish(state, record, started, Some(reply.duration), answer)
}

/// The caller's answer (or the failure to record) for how an invocation ended; the same for
/// native and wasm handlers.
fn answer_of(app: &App, outcome: Outcome) -> Result<(StatusCode, Response), Failure> {
    match outcome {
        Outcome::Response {
            status,
            headers,
            body,
        } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = Response::builder().status(code);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            let resp = resp
                .body(Body::from(body))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response());
            Ok((code, resp))
        }
        Outcome::HandlerError { status, message } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err(Failure::new("failed", code, "handler_error", message))
        }
        Outcome::Panicked { message } => Err(Failure::new(
            "failed",
            StatusCode::INTERNAL_SERVER_ERROR,
            "handler_panicked",
            message,
        )),
        Outcome::TimedOut { after } => Err(Failure::new(
            "timeout",
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            format!(
                "the handler did not answer within its {}s deadline and was stopped (after {:.0} ms)",
                app.scaling.timeout_s,
                after.as_secs_f64() * 1e3
            ),
        )),
        Outcome::Crashed { exit } => Err(Failure::new(
            "crashed",
            StatusCode::BAD_GATEWAY,
            "handler_crashed",
            format!("the handler crashed ({exit})"),
        )),
        Outcome::OutOfMemory { exit } => Err(Failure::new(
            "oom",
            StatusCode::BAD_GATEWAY,
            "out_of_memory",
            format!(
                "the handler ran out of memory: it was killed at its {} MiB limit ({exit}); raise \
                 it with `dodil ignite app scale {}:{} --memory <MiB>`",
                app.scaling.memory_mb, app.org, app.name
            ),
        )),
        Outcome::FramingError { message } => Err(Failure::new(
            "crashed",
            StatusCode::BAD_GATEWAY,
            "framing_error",
            message,
        )),
    }
}

/// How an execution failed: its recorded status, and the error response the caller gets.
struct Failure {
    status: &'static str,
    code: StatusCode,
    kind: &'static str,
    message: String,
    /// The message tells of the platform's insides (host paths, OS errors): the record keeps
    /// it for the owner; a public (gateway) caller gets a short reason and the execution id.
    internal: bool,
}

impl Failure {
    /// A failure the handler caused and may know about (its own error, a panic, a deadline).
    fn new(status: &'static str, code: StatusCode, kind: &'static str, message: String) -> Self {
        Failure {
            status,
            code,
            kind,
            message,
            internal: false,
        }
    }

    /// A failure whose details are the platform's own.
    fn platform(
        status: &'static str,
        code: StatusCode,
        kind: &'static str,
        message: String,
    ) -> Self {
        Failure {
            internal: true,
            ..Failure::new(status, code, kind, message)
        }
    }

    /// What a caller of `trigger` is told.
    fn answer(&self, trigger: &str, execution_id: &str) -> String {
        if self.internal && trigger == "http" {
            format!(
                "the app could not serve this request (a platform failure); its owner can see \
                 why with `dodil ignite execution get {execution_id}`"
            )
        } else {
            self.message.clone()
        }
    }
}

/// Completes an execution record from its answer (or failure), hands it to the recorder and
/// stamps the response with the execution id.
fn finish(
    state: &State,
    mut record: Execution,
    started: Instant,
    duration: Option<Duration>,
    answer: Result<(StatusCode, Response), Failure>,
) -> Response {
    let (status, mut response) = match answer {
        Ok((code, response)) => {
            record.status = "succeeded".into();
            (code, response)
        }
        Err(f) => {
            record.status = f.status.into();
            let answer = f.answer(&record.trigger, &record.id);
            let response = ApiError::new(f.code, f.kind, answer).into_response();
            record.error = Some(f.message);
            (f.code, response)
        }
    };
    let label = app_label(&record.org, &record.app);
    let duration_ms = duration.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    record.duration_ms = Some(duration_ms);
    record.finished_at = Some(store::now_ms());
    record.response_status = Some(i64::from(status.as_u16()));
    let billed = duration_ms + record.init_ms.unwrap_or(0.0);
    record.billed_duration_ms = Some(billed.ceil().max(1.0) as i64);
    let mut status_label = label;
    status_label.push(("status".into(), record.status.clone()));
    state
        .node
        .metrics
        .invocations
        .get_or_create(&status_label)
        .inc();
    tracing::debug!(id = %record.id, total_ms = started.elapsed().as_secs_f64() * 1e3, "executed");
    if let Ok(v) = record.id.parse() {
        response.headers_mut().insert("x-ignite-execution-id", v);
    }
    state.recorder.record(record);
    response
}
