//! Loading end to end: defaults, layers, production requirements and error naming.

use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)], dir: &Path) -> EnvMap {
    let mut m: EnvMap = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    m.entry("VALO_OAUTH_DATA_DIR".into())
        .or_insert_with(|| dir.display().to_string());
    m
}

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("valo-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tmp();
    load(&dir.join("none.toml"), None, &env(pairs, &dir))
}

#[test]
fn development_defaults_generate_private_secrets() {
    let dir = tmp();
    let s = load(&dir.join("none.toml"), None, &env(&[], &dir)).unwrap();
    assert_eq!(s.env, Environment::Development);
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        s.callback_url(),
        "http://localhost:8080/oauth2/v1/callback/salesforce"
    );
    assert_eq!(s.warnings.len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("dev-api-jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let debug = format!("{s:?}");
    let secret = match &s.api_auth.key {
        ApiKey::Hs256(k) => k.expose_secret().to_owned(),
        ApiKey::PublicKeyPem(_) => unreachable!(),
    };
    assert!(
        !debug.contains(&secret),
        "Debug redacts the API secret: {debug}"
    );
    let key = std::fs::read_to_string(dir.join("dev-encryption-keys")).unwrap();
    let key_material = key.trim().split_once(':').unwrap().1;
    assert!(!debug.contains(key_material), "Debug redacts the keys");
    // The second start reuses them, silently.
    let again = load(&dir.join("none.toml"), None, &env(&[], &dir)).unwrap();
    assert!(again.warnings.is_empty());
    assert_eq!(again.keyring.primary_key_id(), "dev1");
}

#[test]
fn production_refuses_missing_keys() {
    let err = load_env(&[("VALO_OAUTH_ENV", "production")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_PUBLIC_URL");
    let err = load_env(&[
        ("VALO_OAUTH_ENV", "production"),
        ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_ENCRYPTION_KEYS");
    let key = Keyring::generate_key_spec("k1");
    let err = load_env(&[
        ("VALO_OAUTH_ENV", "production"),
        ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
        ("VALO_OAUTH_ENCRYPTION_KEYS", key.expose_secret()),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_API_JWT_SECRET");
    let ok = load_env(&[
        ("VALO_OAUTH_ENV", "production"),
        ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
        ("VALO_OAUTH_ENCRYPTION_KEYS", key.expose_secret()),
        (
            "VALO_OAUTH_API_JWT_SECRET",
            "0123456789abcdef0123456789abcdef",
        ),
    ])
    .unwrap();
    assert_eq!(ok.log_format, LogFormat::Json);
    assert_eq!(
        ok.callback_url(),
        "https://api.valo.ai/oauth2/v1/callback/salesforce"
    );
}

#[test]
fn bad_values_name_the_setting_without_echoing_secrets() {
    let err = load_env(&[("VALO_OAUTH_LISTEN", "nonsense")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_LISTEN");
    assert!(err.problem.contains("nonsense"));
    let err = load_env(&[("DATABASE_URL", "mysql://u:hunter2@h/db")]).unwrap_err();
    assert_eq!(err.setting, "DATABASE_URL");
    assert!(!err.to_string().contains("hunter2"));
    let err = load_env(&[("VALO_OAUTH_ENCRYPTION_KEYS", "k1:c2hvcnRzZWNyZXQ=")]).unwrap_err();
    assert!(!err.to_string().contains("c2hvcnRzZWNyZXQ"));
    let err = load_env(&[("VALO_OAUTH_API_JWT_SECRET", "short")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_API_JWT_SECRET");
    let err =
        load_env(&[("VALO_OAUTH_RETURN_TO_ORIGINS", "https://app.valo.ai/path")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_RETURN_TO_ORIGINS");
    let err = load_env(&[("VALO_OAUTH_LOGIN_HOSTS", "http://")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_LOGIN_HOSTS");
    let err = load_env(&[("VALO_OAUTH_REFRESH_WAIT_MS", "5000")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_REFRESH_WAIT_MS");
    let err = load_env(&[("VALO_OAUTH_REFRESH_LEASE_GRACE_SECS", "19")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_REFRESH_LEASE_GRACE_SECS");
}

#[test]
fn layers_file_then_env_and_secret_files() {
    let dir = tmp();
    let secret_file = dir.join("jwt");
    std::fs::write(&secret_file, "from-a-file-0123456789abcdef012345\n").unwrap();
    let file = dir.join("extra.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:9000\"\nreturn_to_origins = [\"https://app.valo.ai\"]\napi_jwt_secret_file = {:?}\n",
            secret_file.display().to_string()
        ),
    )
    .unwrap();
    let s = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap();
    assert_eq!(s.listen.port(), 9000);
    assert_eq!(s.return_to_origins, vec!["https://app.valo.ai".to_owned()]);
    match &s.api_auth.key {
        ApiKey::Hs256(k) => assert_eq!(k.expose_secret(), "from-a-file-0123456789abcdef012345"),
        ApiKey::PublicKeyPem(_) => unreachable!(),
    }
    let s = load(
        &dir.join("none.toml"),
        Some(&file),
        &env(&[("VALO_OAUTH_LISTEN", "127.0.0.1:9100")], &dir),
    )
    .unwrap();
    assert_eq!(s.listen.port(), 9100);
    std::fs::write(&file, "lisen = \"x\"\n").unwrap();
    let err = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap_err();
    assert!(err.problem.contains("unknown setting \"lisen\""), "{err}");
}

#[test]
fn the_internal_listener_is_optional_and_checked() {
    let one = load_env(&[]).unwrap();
    assert_eq!(one.internal_listen, None, "one listener by default");
    let two = load_env(&[("VALO_OAUTH_INTERNAL_LISTEN", "127.0.0.1:8081")]).unwrap();
    assert_eq!(two.internal_listen.unwrap().to_string(), "127.0.0.1:8081");
    let same = load_env(&[("VALO_OAUTH_INTERNAL_LISTEN", "127.0.0.1:8080")]).unwrap_err();
    assert!(
        same.to_string().contains("VALO_OAUTH_INTERNAL_LISTEN")
            && same.to_string().contains("VALO_OAUTH_LISTEN"),
        "{same}"
    );
    let bad = load_env(&[("VALO_OAUTH_INTERNAL_LISTEN", "8081")]).unwrap_err();
    assert!(
        bad.to_string().contains("VALO_OAUTH_INTERNAL_LISTEN"),
        "{bad}"
    );
}
