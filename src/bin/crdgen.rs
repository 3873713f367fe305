//! Writes the CRDs (SessionToken, AssumedRole) into `crds/`, or with `--stdout` prints them.
//! A test fails if `crds/` differs from the types.
fn main() -> std::io::Result<()> {
    let files = sts_session_operator::crd::crd_files();
    if std::env::args().any(|a| a == "--stdout") {
        for (_, yaml) in files {
            print!("---\n{yaml}");
        }
        return Ok(());
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, yaml) in files {
        std::fs::write(dir.join(file), yaml)?;
        eprintln!("wrote crds/{file}");
    }
    Ok(())
}
