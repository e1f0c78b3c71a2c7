//! Development secrets: generated once into the data folder, readable by its owner only.

use std::path::Path;

/// Reads a development secret from `data_dir/name`, generating it (mode 0600) when
/// missing. Returns the value and a warning for the operator when it was generated.
pub(super) fn dev_secret(
    data_dir: &Path,
    name: &str,
    generate: impl FnOnce() -> String,
) -> Result<(String, Option<String>), String> {
    let path = data_dir.join(name);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if !existing.is_empty() {
            return Ok((existing, None));
        }
    }
    create_private_dir(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let value = generate();
    write_private(&path, &value).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((
        value,
        Some(format!(
            "DEVELOPMENT ONLY: generated {} — never use it in production",
            path.display()
        )),
    ))
}

/// Creates the data folder readable by its owner only (it holds the SQLite database and
/// the development secrets).
#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")
}

#[cfg(not(unix))]
fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, format!("{value}\n"))
}
