//! The TypeScript client's generated types (`clients/js/src/generated/api.ts`)
//! match this server's OpenAPI document: `generate.mjs --check` fails when
//! the catalog, a REST shape or a socket event changed and the file was not
//! generated again (`npm run generate` in `clients/js`).

use std::process::Command;

#[test]
fn the_typescript_clients_generated_types_are_current() {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        herald_testkit::skip("Node missing", "node is not on PATH");
        return;
    }
    let settings = herald_server::Settings::load(None).expect("default settings load");
    let doc = herald_server::routes::openapi::spec(settings.server.max_batch);
    let file = std::env::temp_dir().join(format!("herald-openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(root.join("clients/js/scripts/generate.mjs"))
        .arg("--check")
        .arg("--openapi")
        .arg(&file)
        .output()
        .expect("node runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
