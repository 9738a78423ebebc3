//! Rebuilds the crate when a migration changes: `sqlx::migrate!()` embeds
//! `migrations/<backend>/` at compile time, and stable Rust cannot track those files itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
