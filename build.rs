//! Rebuilds the crate when a migration changes: the migrations are embedded with
//! `include_str!` (see `src/store/`), without sqlx's `migrate!` macro.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
