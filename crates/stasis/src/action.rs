//! criu's action scripts (`--action-script FILE`): at each action point of
//! a dump or restore, every script runs through `sh -c` with
//! `CRTOOLS_SCRIPT_ACTION` set to the point's name, `CRTOOLS_IMAGE_DIR` to
//! the images directory and, once the tree's root is known,
//! `CRTOOLS_INIT_PID` to its PID. A script that fails (or cannot be run)
//! fails the dump or restore at that point, undoing it.

use std::path::Path;
use std::process::Command;

/// The hook running `scripts` (none: a hook that does nothing).
pub fn scripts<'a>(
    scripts: &'a [String],
    image_dir: &'a Path,
) -> impl FnMut(&'static str, i32) -> Result<(), String> + 'a {
    let image_dir = std::path::absolute(image_dir).unwrap_or_else(|_| image_dir.to_path_buf());
    move |action, pid| {
        for s in scripts {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(s)
                .env("CRTOOLS_SCRIPT_ACTION", action)
                .env("CRTOOLS_IMAGE_DIR", &image_dir);
            if pid > 0 {
                cmd.env("CRTOOLS_INIT_PID", pid.to_string());
            } else {
                cmd.env_remove("CRTOOLS_INIT_PID");
            }
            let status = cmd
                .status()
                .map_err(|e| format!("action script {s:?}: cannot run: {e}"))?;
            if !status.success() {
                return Err(format!("action script {s:?} exited with {status}"));
            }
        }
        Ok(())
    }
}
