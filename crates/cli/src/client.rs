//! A small blocking client for the Ignite API.

use std::io::BufRead;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The server could not be reached at all (exit code 3).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

pub struct InvokeReply {
    pub ok: bool,
    pub body: Vec<u8>,
    pub execution_id: String,
}

/// The message of an API error body, or the body itself.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

impl Client {
    pub fn new(endpoint: Option<String>, token: Option<String>) -> Result<Client> {
        let endpoint = endpoint.context(
            "no API endpoint configured; run `dodil ignite config set api_endpoint <host:port>`",
        )?;
        let base = base_url(&endpoint);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client { agent, base, token })
    }

    fn auth(&self) -> Result<String> {
        match &self.token {
            Some(t) => Ok(format!("Bearer {t}")),
            None => bail!(
                "no API token; run `dodil ignite config set token <token>` or set DODIL_TOKEN"
            ),
        }
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow::Error::new(Unreachable(format!(
            "cannot reach the Ignite API at {}: {e}; check `dodil ignite config set api_endpoint <host:port>`",
            self.base
        )))
    }

    fn finish(&self, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value> {
        let mut resp = resp.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_vec()
            .context("reading the API's answer")?;
        if !status.is_success() {
            bail!("{}", error_message(&body));
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).context("the API answered something that is not JSON")
    }

    /// GET, read as one of the API's types.
    pub fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        serde_json::from_value(self.get(path)?)
            .context("the API answered in a shape this dodil does not know; update dodil")
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("authorization", self.auth()?)
            .call();
        self.finish(r)
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        let r = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("authorization", self.auth()?)
            .call();
        self.finish(r)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", self.auth()?)
            .send_json(body);
        self.finish(r)
    }

    pub fn put_json(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("authorization", self.auth()?)
            .send_json(body);
        self.finish(r)
    }

    pub fn put_bytes(&self, path: &str, body: Vec<u8>) -> Result<Value> {
        let r = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("authorization", self.auth()?)
            .header("content-type", "application/octet-stream")
            .send(&body[..]);
        self.finish(r)
    }

    pub fn invoke(&self, path: &str, payload: Vec<u8>) -> Result<InvokeReply> {
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", self.auth()?)
            .header("content-type", "application/json")
            .send(&payload[..]);
        let mut resp = r.map_err(|e| self.unreachable(e))?;
        let ok = resp.status().is_success();
        let execution_id = resp
            .headers()
            .get("x-ignite-execution-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .body_mut()
            .read_to_vec()
            .context("reading the handler's answer")?;
        if !ok && execution_id.is_empty() {
            bail!("{}", error_message(&body));
        }
        Ok(InvokeReply {
            ok,
            body,
            execution_id,
        })
    }

    /// Calls `on_line` for each line of a newline-delimited answer, as it arrives.
    pub fn stream_lines(&self, path: &str, mut on_line: impl FnMut(&str)) -> Result<()> {
        let r = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("authorization", self.auth()?)
            .call();
        let mut resp = r.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let body = resp.body_mut().read_to_vec().unwrap_or_default();
            bail!("{}", error_message(&body));
        }
        let reader = std::io::BufReader::new(resp.body_mut().as_reader());
        for line in reader.lines() {
            let line = line.context("the log stream broke")?;
            if !line.is_empty() {
                on_line(&line);
            }
        }
        Ok(())
    }
}

/// `host:port` as in the recipe: https on port 443 or when the value says so, http otherwise.
fn base_url(endpoint: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.trim_end_matches('/').to_string()
    } else if endpoint.ends_with(":443") {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_endpoint_forms() {
        for (endpoint, base) in [
            ("rpc.dev.dodil.io:443", "https://rpc.dev.dodil.io:443"),
            ("127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://api.example:8443/", "https://api.example:8443"),
            ("http://localhost:80", "http://localhost:80"),
        ] {
            assert_eq!(super::base_url(endpoint), base, "{endpoint}");
        }
    }
}
