//! The layers of settings, merged by figment, and the names a setting goes by.
//!
//! Later layers win: the built-in defaults (`defaults.toml`, compiled in), then
//! `config/default.toml` (if present), then the file named by `--config` /
//! `VALO_OAUTH_CONFIG`, then environment variables. Figment keeps, for every value, the layer
//! it came from; [`Layers::name`] uses it to name a setting as the operator wrote it, and a
//! figment error is turned into one [`ConfigError`] line the same way.
//!
//! Secrets also accept `…_file` (`…_FILE` in the environment): within one layer the file is
//! read in place of the value ([`SecretFiles`]); setting both in one layer is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use figment::error::{Actual, Kind};
use figment::providers::{Data, Format};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::de::{self, DeserializeOwned};

use super::raw::Raw;
use super::{ConfigError, Settings};

/// The built-in defaults, the first layer.
const DEFAULTS: &str = include_str!("defaults.toml");

/// The settings that are secrets: they accept `…_file` and are never echoed.
const SECRETS: [&str; 4] = [
    "database_url",
    "encryption_keys",
    "api_jwt_secret",
    "webhook_secret",
];

/// The name of the environment layer's metadata.
const ENVIRONMENT: &str = "environment";

/// The environment as a map, so tests can pass their own.
pub type EnvMap = BTreeMap<String, String>;

/// The environment variable of a setting (`listen` → `VALO_OAUTH_LISTEN`; the database URL
/// is the conventional `DATABASE_URL`, and its file `DATABASE_URL_FILE`).
pub fn env_var_name(key: &str) -> String {
    match key.strip_prefix("database_url") {
        Some(rest) => format!("DATABASE_URL{}", rest.to_ascii_uppercase()),
        None => format!("VALO_OAUTH_{}", key.to_ascii_uppercase()),
    }
}

/// Every key the layers may hold: each setting, and `…_file` after each secret.
fn keys_and_files() -> Vec<String> {
    let mut keys = Vec::new();
    for key in setting_keys() {
        keys.push(key.to_owned());
        if SECRETS.contains(&key) {
            keys.push(format!("{key}_file"));
        }
    }
    keys
}

/// Every environment variable the service reads (`…_FILE` for secrets, and
/// `VALO_OAUTH_CONFIG`), for operators and for checking deployment files against.
pub fn environment_names() -> Vec<String> {
    let mut names = vec!["VALO_OAUTH_CONFIG".to_owned()];
    names.extend(keys_and_files().iter().map(|key| env_var_name(key)));
    names
}

/// The settings' names, in the order `defaults.toml` lists them. It holds every setting:
/// [`Raw`] has no serde defaults and refuses unknown keys, so every load checks that the two
/// agree.
fn setting_keys() -> impl Iterator<Item = &'static str> {
    DEFAULTS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| Some(line.split_once(" = ")?.0))
}

/// The layer a value came from.
enum Layer<'a> {
    Defaults,
    File(&'a Path),
    Environment,
}

fn layer(metadata: Option<&Metadata>) -> Layer<'_> {
    match metadata {
        Some(md) => match md.source.as_ref().and_then(Source::file_path) {
            Some(path) => Layer::File(path),
            None if md.name == ENVIRONMENT => Layer::Environment,
            None => Layer::Defaults,
        },
        None => Layer::Defaults,
    }
}

/// A setting named as the operator wrote it: the environment variable (also for a
/// default), or the key in its file.
fn setting_name(metadata: Option<&Metadata>, key: &str) -> String {
    let written =
        || metadata.map_or_else(String::new, |md| md.interpolate(&Profile::Default, &[key]));
    match layer(metadata) {
        Layer::Defaults => env_var_name(key),
        Layer::File(path) => format!("{} in {}", written(), path.display()),
        Layer::Environment => written(),
    }
}

/// The settings after layering, with figment's record of where each came from.
pub(super) struct Layers {
    pub(super) raw: Raw,
    figment: Figment,
}

impl Layers {
    /// The setting's name as the operator wrote it (environment variable, or key in file).
    pub(super) fn name(&self, key: &str) -> String {
        setting_name(self.figment.find_metadata(key), key)
    }

    pub(super) fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: self.name(key),
            problem: problem.into(),
        }
    }

    /// `value` of `key` must be more than `bound` of `other`; the error names both as written.
    pub(super) fn more_than<T: PartialOrd>(
        &self,
        (key, value): (&str, T),
        (other, bound): (&str, T),
    ) -> Result<(), ConfigError> {
        if value <= bound {
            return Err(self.err(key, format!("must be more than {}", self.name(other))));
        }
        Ok(())
    }

    /// Whether the operator set the value (rather than it being a default).
    pub(super) fn is_explicit(&self, key: &str) -> bool {
        !matches!(layer(self.figment.find_metadata(key)), Layer::Defaults)
    }
}

/// A figment error as one line naming the setting (or the file) without a secret's value.
fn config_error(e: &figment::Error) -> ConfigError {
    let md = e.metadata.as_ref();
    let key = e.path.join(".");
    let whole_layer = || match layer(md) {
        Layer::File(path) => path.display().to_string(),
        _ => md.map_or_else(|| "configuration".to_owned(), |md| md.name.to_string()),
    };
    if let Kind::UnknownField(field, _) = &e.kind {
        return ConfigError {
            setting: whole_layer(),
            problem: format!("unknown setting {field:?}"),
        };
    }
    let problem = match &e.kind {
        Kind::Message(message) => message.clone(),
        Kind::InvalidValue(actual, expected) | Kind::InvalidType(actual, expected) => {
            match actual {
                _ if SECRETS.contains(&key.as_str()) => format!("is not {expected}"),
                Actual::Str(s) => format!("{s:?} is not {expected}"),
                other => format!("{other} is not {expected}"),
            }
        }
        other => other.to_string(),
    };
    ConfigError {
        setting: if key.is_empty() {
            whole_layer()
        } else {
            setting_name(md, &key)
        },
        problem,
    }
}

/// TOML through the `toml` crate; an error is one line without the file's text (which may
/// hold a secret).
struct Toml;

#[derive(Debug)]
struct TomlError(String);

impl fmt::Display for TomlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TomlError {}

impl de::Error for TomlError {
    /// Only a file that cannot be read gets here (figment's `Format::from_path`).
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(format!("cannot read: {msg}"))
    }
}

impl Format for Toml {
    type Error = TomlError;
    const NAME: &'static str = "TOML";

    fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, TomlError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map_or(0, |span| text[..span.start].matches('\n').count() + 1);
            TomlError(format!("invalid TOML at line {line}: {}", e.message()))
        })
    }
}

/// The environment map as a layer: `VALO_OAUTH_` + the key in upper case (see
/// [`env_var_name`]), values as text. (figment's own `Env` reads the process environment and
/// parses values, which would unquote `"…"` and split `[…]` in secrets; tests and the test kit
/// give each load an environment of its own.)
struct EnvVars<'a>(&'a EnvMap);

impl Provider for EnvVars<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENVIRONMENT)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = keys_and_files()
            .into_iter()
            .filter_map(|key| {
                let value = self.0.get(&env_var_name(&key))?;
                Some((key, Value::from(value.clone())))
            })
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

/// One layer with each secret's `…_file` replaced by the file's content (the trailing
/// newline trimmed). Its metadata names a key as the layer writes it (`naming`: the key
/// itself in a file, [`env_var_name`] in the environment), `…_file` for a value read from a
/// file.
struct SecretFiles {
    metadata: Metadata,
    data: Result<Map<Profile, Dict>, figment::Error>,
}

impl SecretFiles {
    fn new(layer: impl Provider, naming: fn(&str) -> String) -> Self {
        let mut from_files = BTreeSet::new();
        let data = match layer.data() {
            Ok(mut profiles) => profiles
                .values_mut()
                .try_for_each(|dict| read_secret_files(dict, naming, &mut from_files))
                .map(|()| profiles)
                .map_err(|(file_key, problem)| figment::Error::from(problem).with_path(&file_key)),
            Err(e) => Err(e),
        };
        let metadata = layer
            .metadata()
            .interpolater(move |_: &Profile, keys: &[&str]| {
                let key = keys.join(".");
                if from_files.contains(&key) {
                    naming(&format!("{key}_file"))
                } else {
                    naming(&key)
                }
            });
        Self { metadata, data }
    }
}

impl Provider for SecretFiles {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.data.clone()
    }
}

/// Replaces each secret's `…_file` in one layer by the file's content; an error is the
/// `…_file` key and the problem.
fn read_secret_files(
    dict: &mut Dict,
    naming: fn(&str) -> String,
    from_files: &mut BTreeSet<String>,
) -> Result<(), (String, String)> {
    for key in SECRETS {
        let file_key = format!("{key}_file");
        let Some(path) = dict.remove(&file_key) else {
            continue;
        };
        let fail = |problem: String| (file_key.clone(), problem);
        let set = dict
            .get(key)
            .is_some_and(|v| v.as_str().is_none_or(|s| !s.trim().is_empty()));
        if set {
            let other = naming(key);
            return Err(fail(format!("set either it or {other}, not both")));
        }
        let path = path
            .into_string()
            .ok_or_else(|| fail("must be the path of a file".to_owned()))?;
        let secret =
            std::fs::read_to_string(&path).map_err(|e| fail(format!("cannot read {path}: {e}")))?;
        dict.insert(
            key.to_owned(),
            Value::from(secret.trim_end_matches(['\n', '\r']).to_owned()),
        );
        from_files.insert(key.to_owned());
    }
    Ok(())
}

/// Loads and validates the settings from the given config file (if any) and environment.
/// `default_file` is `config/default.toml`, read when it exists.
pub fn load(
    default_file: &Path,
    config_file: Option<&Path>,
    env: &EnvMap,
) -> Result<Settings, ConfigError> {
    let mut figment = Figment::from(Toml::string(DEFAULTS));
    let config_file = config_file
        .map(Path::to_path_buf)
        .or_else(|| env.get("VALO_OAUTH_CONFIG").map(Into::into));
    let files = default_file
        .exists()
        .then(|| default_file.to_path_buf())
        .into_iter()
        .chain(config_file);
    for file in files {
        figment = figment.merge(SecretFiles::new(
            Data::<Toml>::file_exact(file),
            str::to_owned,
        ));
    }
    figment = figment.merge(SecretFiles::new(EnvVars(env), env_var_name));
    let raw = figment.extract().map_err(|e| config_error(&e))?;
    super::resolve(&Layers { raw, figment })
}
