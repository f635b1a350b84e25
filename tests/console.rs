//! The web console (`/console`) in a real headless Chromium (Debian's, through chromedriver)
//! against the real server and the real `dodil`: sign in, the seed app after the recipe, a
//! compile's log followed live, publish and rollback from the page (and `invoke` answering
//! accordingly), scaling (and `app get` reflecting it), the invoke box, an execution's cold-start
//! phases; a bad token, a form without its CSRF token and another org's app refused. Every page
//! is screenshotted into `<target>/console-screenshots/`.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use browser::Browser;
use serde_json::json;
use support::platform::*;

const MINUTE: Duration = Duration::from_secs(60);

/// Where the screenshots go: `target/console-screenshots` of this build's target directory.
fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().map_or_else(
        || PathBuf::from("console-screenshots"),
        |t| t.join("console-screenshots"),
    )
}

/// The seed app's second version: another greeting, and a build script that takes its time,
/// so that its compile is still running while the page follows its log.
fn slow_v2(dir: &Path) -> PathBuf {
    let p = dir.join("tiny-v2");
    copy_tiny(&p);
    let lib = std::fs::read_to_string(p.join("src/lib.rs")).unwrap();
    std::fs::write(
        p.join("src/lib.rs"),
        lib.replace("Hello from Rust!", "Hello from v2"),
    )
    .unwrap();
    std::fs::write(
        p.join("build.rs"),
        "fn main() { std::thread::sleep(std::time::Duration::from_secs(8)); }\n",
    )
    .unwrap();
    p
}

/// A plain HTTP/1.1 request: `(status, headers, body)`.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(MINUTE)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// The `name=value` of each `Set-Cookie` in `headers`.
fn cookies(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next().map(str::to_string))
        .collect()
}

/// The value of the first `name="csrf" value="…"` field in a page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Signs in over plain HTTP (no browser) with `token`: the session cookie and its CSRF token,
/// or the refusal's status.
fn http_sign_in(server: &Server, token: &str) -> Result<(String, String), u16> {
    let (status, headers, page) = request(&server.api, "GET", "/console/sign-in", &[], "");
    assert_eq!(status, 200, "{page}");
    let pre = cookies(&headers).join("; ");
    let body = format!("csrf={}&token={token}", csrf_of(&page));
    let (status, headers, page) = request(
        &server.api,
        "POST",
        "/console/sign-in",
        &[
            ("Cookie", &pre),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &body,
    );
    if status != 303 {
        assert!(!page.contains(token), "the page shows the token");
        return Err(status);
    }
    let set = headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("ignite_console="))
        .map(|(_, v)| v.clone())
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attribute), "{set} lacks {attribute}");
    }
    let session = set.split(';').next().unwrap().to_string();
    let (status, _, apps) = request(
        &server.api,
        "GET",
        "/console/apps",
        &[("Cookie", &session)],
        "",
    );
    assert_eq!(status, 200, "{apps}");
    Ok((session.clone(), csrf_of(&apps)))
}

fn invoke_message(server: &Server, p: &Path) -> String {
    let out = ok(server, p, &["invoke", "acme-corp:tiny", "-p", "{}"]);
    json(&out)["message"]
        .as_str()
        .map_or_else(|| out.clone(), str::to_string)
}

/// The largest page the browser loaded, checked as the test goes.
fn page_size_ok(b: &Browser, what: &str) {
    let size = b.html().len();
    eprintln!("the {what} page: {size} bytes of HTML");
    assert!(size < 200 * 1024, "the {what} page is {size} bytes");
}

#[test]
fn the_console_in_a_real_browser() {
    let dir = scratch("console");
    let server = start_server(&dir);
    let project = dir.join("tiny");
    copy_tiny(&project);
    let p = project.as_path();
    // The recipe: the seed app, version 1.
    deploy(&server, p, "acme-corp:tiny", "./");
    let token = token(&server);
    let console = format!("http://{}/console", server.api);

    let b = Browser::start(&dir, shots_dir());
    b.goto(&console);
    assert!(b.url().ends_with("/console/sign-in"), "{}", b.url());
    // A bad token is refused, and not shown back.
    b.type_into("#token", "ign_000000000000_not-a-secret\u{E007}");
    b.wait_text("#sign-in-error", "not a valid token", MINUTE);
    assert!(!b.html().contains("not-a-secret"));
    b.screenshot("sign-in");
    // Signing in with the keyboard alone: type the token, press Enter.
    b.type_into("#token", &format!("{token}\u{E007}"));
    b.wait_text("#apps", "tiny", MINUTE);
    assert!(b.url().ends_with("/console/apps"), "{}", b.url());
    assert_eq!(
        b.text("tr[data-app='tiny'] .active-version").as_deref(),
        Some("v1")
    );
    assert!(!b.html().contains(&token), "the page shows the token");
    page_size_ok(&b, "apps");
    b.screenshot("apps");
    // Create an app from the page: the API's refusal first (the name is taken), then a new one.
    b.type_into("#name", "tiny");
    b.click("#create-title ~ form button");
    b.wait_text("#create-error", "app acme-corp:tiny already exists", MINUTE);
    b.type_into("#name", "second");
    b.type_into("#description", "made in the console");
    b.click("#create-title ~ form button");
    b.wait_text("h1", "second", MINUTE);
    assert!(
        b.url().ends_with("/console/apps/acme-corp/second"),
        "{}",
        b.url()
    );
    let second = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:second", "-o", "json"],
    ));
    assert_eq!(second["description"], "made in the console", "{second}");

    // A compile's log, followed live: version 2's build script keeps it running for 8 s.
    let v2 = slow_v2(&dir);
    save_native(&server, &v2, "acme-corp:tiny", "./");
    ok(&server, &v2, &["draft", "compile", "acme-corp:tiny"]);
    b.goto(&format!("{console}/apps/acme-corp/tiny"));
    let seen_live = {
        let start = std::time::Instant::now();
        loop {
            let state = b.js(
                "const l = document.getElementById('build-log'); \
                 return l ? [l.dataset.status, l.textContent] : null;",
                json!([]),
            );
            let (status, log) = (
                state[0].as_str().unwrap_or_default().to_string(),
                state[1].as_str().unwrap_or_default().to_string(),
            );
            if status == "compiling" && log.contains("Compiling tiny") {
                b.screenshot("app-compiling");
                break true;
            }
            if status != "compiling" && !status.is_empty() {
                break false;
            }
            assert!(start.elapsed() < 10 * MINUTE, "the compile did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        seen_live,
        "the page never showed the log while the compile ran"
    );
    b.wait_text("#build-log", "built sha256:", 10 * MINUTE);
    b.wait_text("#build-status", "compiled", MINUTE);

    // Publish from the page, behind a confirmation; `invoke` answers with version 2.
    b.click("#publish");
    b.wait_text("h1", "Publish the draft", MINUTE);
    b.screenshot("confirm-publish");
    b.click("#confirm");
    b.wait_text("#active-version", "v2", 5 * MINUTE);
    assert_eq!(invoke_message(&server, p), "Hello from v2");
    page_size_ok(&b, "app");
    b.screenshot("app");

    // Roll back to version 1 from the page; `invoke` answers with version 1 again.
    b.click("tr[data-version='1'] a.rollback");
    b.wait_text("h1", "Roll back to v1", MINUTE);
    b.screenshot("confirm-rollback");
    b.click("#confirm");
    b.wait_text("#active-version", "v1", MINUTE);
    assert_eq!(invoke_message(&server, p), "Hello from Rust!");

    // Scaling: the API's refusal is shown beside the form, and nothing changes…
    b.type_into("#reserved_capacity", "5");
    b.type_into("#max_instances", "2");
    b.click("#scaling button[type=submit]");
    b.wait_text(
        "#scaling",
        "reserved_capacity (5) cannot exceed max_instances (2)",
        MINUTE,
    );
    let app = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(app["scaling"]["max_instances"], 10, "{app}");
    b.screenshot("app-scaling-refused");
    // …and a valid change is what `app get -o json` shows.
    b.type_into("#reserved_capacity", "0");
    b.type_into("#max_instances", "3");
    b.type_into("#timeout_s", "20");
    b.click("#scaling button[type=submit]");
    b.wait_text("#scaling", "Scaling saved", MINUTE);
    let app = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(app["scaling"]["max_instances"], 3, "{app}");
    assert_eq!(app["scaling"]["timeout_s"], 20, "{app}");
    assert_eq!(app["scaling"]["reserved_capacity"], 0, "{app}");

    // The environment: a bad name gets the API's message; good lines are what `app get` shows.
    b.type_into("#env-text", "1BAD=x");
    b.click("#env button[type=submit]");
    b.wait_text("#env", "invalid environment variable name", MINUTE);
    b.type_into("#env-text", "GREETING=hi\nMODE=console");
    b.click("#env button[type=submit]");
    b.wait_text("#env", "Environment saved", MINUTE);
    let app = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(
        app["env"],
        json!({"GREETING": "hi", "MODE": "console"}),
        "{app}"
    );
    // Internet access, on and off again.
    b.click("#network button[type=submit]");
    b.wait_text("#egress", "on", MINUTE);
    let app = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(app["network"]["egress"], true, "{app}");
    b.click("#network button[type=submit]");
    b.wait_text("#egress", "off", MINUTE);

    // The invoke box: the response, its headers, a link to the execution it made.
    b.type_into("#payload", r#"{"message": "from the console"}"#);
    b.click("#invoke-form button");
    b.wait_text("#invoke-body", "from the console", 2 * MINUTE);
    assert_eq!(b.text("#response-status").as_deref(), Some("200"));
    let headers = b.text("#invoke-result details").unwrap_or_default();
    assert!(headers.contains("x-ignite-execution-id"), "{headers}");
    b.screenshot("app-invoked");
    let link = b.text("#execution-link").expect("a link to the execution");
    b.click("#execution-link");
    b.wait_text("h1", &link, MINUTE);
    b.wait_text("#status", "succeeded", MINUTE);
    b.screenshot("execution-warm-or-cold");

    // Executions: the cold preset, the chart, and a cold start's phases.
    b.goto(&format!("{console}/executions?app=tiny&start=cold"));
    b.wait_text("#summary", "executions", MINUTE);
    let chart = b.js(
        "return document.querySelectorAll('#latency-chart polyline, #latency-chart circle').length;",
        json!([]),
    );
    assert!(chart.as_u64().unwrap_or(0) > 0, "the chart draws nothing");
    page_size_ok(&b, "executions");
    b.screenshot("executions");
    b.click("#executions tbody a");
    b.wait_text(".phase-table", "spawn", MINUTE);
    for phase in ["queue", "fetch", "init", "in all"] {
        b.wait_text(".phase-table", phase, MINUTE);
    }
    let segments = b.js(
        "return document.querySelectorAll('#phases span').length;",
        json!([]),
    );
    assert!(
        segments.as_u64().unwrap_or(0) >= 2,
        "the phases bar is empty"
    );
    page_size_ok(&b, "execution");
    b.screenshot("execution");

    // The apps page has the last hour now; at 360 px wide nothing overflows the page.
    b.goto(&format!("{console}/apps"));
    let spark = b.js(
        "return document.querySelectorAll('tr[data-app=tiny] svg.spark rect').length;",
        json!([]),
    );
    assert!(spark.as_u64().unwrap_or(0) > 0, "no sparkline bars");
    b.emulate_width(Some(360));
    for page in ["apps", "apps/acme-corp/tiny", "executions"] {
        b.goto(&format!("{console}/{page}"));
        let widths = b.js(
            "return [window.innerWidth, document.documentElement.scrollWidth, \
             [...document.querySelectorAll('body *')] \
               .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1) \
               .map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + \
                 Math.round(e.getBoundingClientRect().right)).slice(0, 12)];",
            json!([]),
        );
        assert_eq!(widths[0], 360, "{page}: {widths}");
        assert!(
            widths[1].as_u64() <= Some(360),
            "{page} overflows 360 px: {widths}"
        );
    }
    b.goto(&format!("{console}/apps/acme-corp/tiny"));
    b.screenshot_viewport("app-360");
    b.emulate_width(None);
    // Dark, by the system's preference.
    b.emulate_dark(true);
    b.goto(&format!("{console}/executions?app=tiny"));
    let background = b.js(
        "return getComputedStyle(document.body).backgroundColor;",
        json!([]),
    );
    assert_eq!(background, "rgb(19, 20, 23)", "not the dark scheme");
    b.screenshot("executions-dark");
    b.emulate_dark(false);

    // Sign out: the session is gone.
    b.click("header form button");
    b.wait_text("h1", "Sign in", MINUTE);
    b.goto(&format!("{console}/apps"));
    assert!(b.url().ends_with("/console/sign-in"), "{}", b.url());
    drop(b);

    // Without a browser: a bad token, a form without its CSRF token (or with a wrong one).
    assert_eq!(http_sign_in(&server, "ign_000000000000_wrong"), Err(401));
    let (session, csrf) = http_sign_in(&server, &token).expect("a session");
    // The store holds the session id's hash, never the id (nor the token's secret).
    let id = session.trim_start_matches("ignite_console=");
    let secret = token.rsplit('_').next().unwrap();
    for file in ["ignite.db", "ignite.db-wal"] {
        let bytes = std::fs::read(server.dir.join("data").join(file)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(id), "{file} holds a session id");
        assert!(!text.contains(secret), "{file} holds a token's secret");
    }
    if support::postgres::requested() {
        let text = support::postgres::cluster().psql(
            &support::postgres::database_name(&server.dir.join("data")),
            "SELECT string_agg(s.id_hash || ' ' || s.csrf || ' ' || t.secret_hash, ' ') \
             FROM console_sessions s JOIN tokens t ON t.id = s.token_id",
        );
        assert!(!text.trim().is_empty(), "no session in the store");
        assert!(!text.contains(id), "the store holds a session id");
        assert!(!text.contains(secret), "the store holds a token's secret");
    }
    // Over TLS (a proxy that terminated it says so), the cookie is `Secure` too.
    let (_, headers, page) = request(&server.api, "GET", "/console/sign-in", &[], "");
    let pre = cookies(&headers).join("; ");
    let (status, headers, _) = request(
        &server.api,
        "POST",
        "/console/sign-in",
        &[
            ("Cookie", &pre),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Forwarded-Proto", "https"),
        ],
        &format!("csrf={}&token={token}", csrf_of(&page)),
    );
    assert_eq!(status, 303);
    let set = header(&headers, "set-cookie").unwrap_or_default();
    assert!(set.contains("; Secure"), "{set}");
    let form = [
        ("Cookie", session.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let scaling = "/console/apps/acme-corp/tiny/scaling";
    for body in ["max_instances=7", "max_instances=7&csrf=0000"] {
        let (status, _, page) = request(&server.api, "POST", scaling, &form, body);
        assert_eq!(status, 403, "{body}: {page}");
        assert!(page.contains("CSRF"), "{page}");
    }
    // Without the session, the right CSRF token is no use either.
    let (status, _, _) = request(
        &server.api,
        "POST",
        scaling,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("max_instances=7&csrf={csrf}"),
    );
    assert_eq!(status, 401);
    let app = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(app["scaling"]["max_instances"], 3, "{app}");
    // With both, it goes through.
    let (status, _, page) = request(
        &server.api,
        "POST",
        scaling,
        &form,
        &format!("max_instances=4&csrf={csrf}"),
    );
    assert_eq!(status, 303, "{page}");
    let app = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(app["scaling"]["max_instances"], 4, "{app}");

    // A session ends with the token it was opened with.
    let created = json(&ok(
        &server,
        p,
        &["token", "create", "console-ci", "-o", "json"],
    ));
    let (ci, _) = http_sign_in(&server, created["token"].as_str().unwrap()).expect("a session");
    ok(
        &server,
        p,
        &["token", "revoke", created["id"].as_str().unwrap()],
    );
    let (status, headers, _) = request(&server.api, "GET", "/console/apps", &[("Cookie", &ci)], "");
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/console/sign-in"));

    // Another org's app answers exactly as a missing one, for pages and for changes.
    server.stop();
    let server = start_server_with(&dir, &["--org", "corp"]);
    let corp = server.admin_token.clone().expect("corp's admin token");
    let (session, csrf) = http_sign_in(&server, &corp).expect("corp's session");
    let cookie = [("Cookie", session.as_str())];
    let (status, _, foreign) = request(
        &server.api,
        "GET",
        "/console/apps/acme-corp/tiny",
        &cookie,
        "",
    );
    assert_eq!(status, 404, "{foreign}");
    assert!(
        foreign.contains("app acme-corp:tiny not found"),
        "{foreign}"
    );
    let (status, _, missing) = request(
        &server.api,
        "GET",
        "/console/apps/acme-corp/nothing-here",
        &cookie,
        "",
    );
    assert_eq!(status, 404, "{missing}");
    assert_eq!(
        foreign.replace("tiny", "X"),
        missing.replace("nothing-here", "X")
    );
    let (status, _, page) = request(
        &server.api,
        "GET",
        &format!("/console/executions/{link}"),
        &cookie,
        "",
    );
    assert_eq!(status, 404, "{page}");
    assert!(
        page.contains(&format!("execution {link} not found")),
        "{page}"
    );
    let (_, _, apps) = request(&server.api, "GET", "/console/apps", &cookie, "");
    assert!(!apps.contains("tiny"), "corp sees acme-corp's app: {apps}");
    let form = [
        ("Cookie", session.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (status, _, page) = request(
        &server.api,
        "POST",
        "/console/apps/acme-corp/tiny/rollback",
        &form,
        &format!("version=2&csrf={csrf}"),
    );
    assert_eq!(status, 404, "{page}");
    // (The CLI config still holds acme-corp's token, and the first server's address.)
    let api = server.api.clone();
    let app = json(&ok(
        &server,
        p,
        &[
            "app",
            "get",
            "acme-corp:tiny",
            "-o",
            "json",
            "--api-endpoint",
            &api,
        ],
    ));
    assert_eq!(app["active_version"], 1, "{app}");
}
