//! The CLI's config file (`$DODIL_CONFIG`, else `$XDG_CONFIG_HOME/dodil/config.toml`).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use toml_edit::DocumentMut;

#[derive(Debug, Default, Clone)]
pub struct Config {
    pub token: Option<String>,
    pub api_endpoint: Option<String>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("DODIL_CONFIG") {
        return PathBuf::from(p);
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".config"))
        .join("dodil/config.toml")
}

pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"))
        .join("ignite")
}

impl Config {
    pub fn load() -> Result<Config> {
        let path = path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let doc: DocumentMut = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let get = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Ok(Config {
            token: get("token"),
            api_endpoint: get("api_endpoint"),
        })
    }

    pub fn save(&self) -> Result<PathBuf> {
        let path = path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut doc = DocumentMut::new();
        if let Some(t) = &self.token {
            doc["token"] = toml_edit::value(t.as_str());
        }
        if let Some(e) = &self.api_endpoint {
            doc["api_endpoint"] = toml_edit::value(e.as_str());
        }
        std::fs::write(&path, doc.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(path)
    }
}
