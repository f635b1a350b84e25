//! The page shell (head, navigation, sign-out) and the formatting every page shares.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::Signed;

/// A whole page: `title`, the navigation (when signed in) and `body`.
pub fn page(signed: Option<&Signed>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Ignite console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console/apps" { "Ignite" }
                    @if let Some(s) = signed {
                        nav aria-label="Main" {
                            a href="/console/apps" { "Apps" }
                            a href="/console/executions" { "Executions" }
                        }
                        span.org title="signed-in org" { (s.org) }
                        form.inline method="post" action="/console/sign-out" {
                            (csrf(s))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

pub fn sign_in(pre: &str, problem: Option<&str>) -> Markup {
    page(
        None,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(p) = problem { p.notice.bad role="alert" #sign-in-error { (p) } }
            form.card.narrow method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(pre);
                label for="token" { "Org token" }
                input #token type="password" name="token" required autocomplete="off"
                    spellcheck="false" placeholder="ign_…";
                p.hint {
                    "The admin token the server printed at its first start, or one from "
                    code { "dodil ignite token create" } ". It is exchanged for a session "
                    "cookie and never stored in the browser."
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub fn error(signed: Option<&Signed>, status: StatusCode, message: &str) -> Markup {
    page(
        signed,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.notice.bad role="alert" #error { (message) }
            p { a href="/console/apps" { "Back to the apps" } }
        },
    )
}

/// A notice after a change (`ok`) or a refusal with the API's message.
pub fn notice(n: Option<&(bool, String)>) -> Markup {
    html! {
        @if let Some((ok, text)) = n {
            @if *ok { p.notice.good role="status" { (text) } }
            @else { p.notice.bad role="alert" { (text) } }
        }
    }
}

/// Milliseconds, as a person reads them.
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 1.0 => format!("{v:.2} ms"),
        Some(v) if v < 100.0 => format!("{v:.1} ms"),
        Some(v) if v < 10_000.0 => format!("{v:.0} ms"),
        Some(v) => format!("{:.1} s", v / 1000.0),
    }
}

pub fn bytes(v: Option<i64>) -> String {
    match v {
        None => "–".into(),
        Some(b) if b < 1024 => format!("{b} B"),
        Some(b) if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
    }
}

/// `sha256:0123456789ab…`, a digest shortened for a table (the whole one in its title).
pub fn short_digest(d: Option<&str>) -> String {
    match d {
        None => "–".into(),
        Some(d) => {
            let hex = d.trim_start_matches("sha256:");
            format!("{}…", &hex[..hex.len().min(12)])
        }
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The badge of an execution's or a build's status.
pub fn status(s: &str) -> Markup {
    let class = match s {
        "succeeded" | "compiled" => "good",
        "running" | "compiling" | "pending" => "busy",
        "" | "none" => "",
        _ => "bad",
    };
    html! { span.badge.(class) { (s) } }
}

/// An HTTP status as a badge: 2xx good, the rest bad.
pub fn status_code(code: u16) -> Markup {
    let class = if (200..300).contains(&code) {
        "good"
    } else {
        "bad"
    };
    html! { span.badge.(class) #response-status { (code) } }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_the_epoch_and_a_leap_day() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(
            super::utc(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03"
        );
    }
}
