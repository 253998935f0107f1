//! criu's `cpuinfo dump` and `cpuinfo check` (and the RPC's CPUINFO_DUMP
//! and CPUINFO_CHECK): this CPU's description written to `cpuinfo.img` in
//! the images directory, and later checked against the CPU a restore would
//! run on, as `--cpu-cap` asks:
//!
//! - `fpu`: every XSAVE component the saved CPU has (CPUID leaf 0xD), this
//!   one has too (a restore refuses live state of a component it lacks);
//! - `ins`: every CPU flag the saved CPU had (`/proc/cpuinfo` flags, which
//!   name its instruction set extensions), this one has too;
//! - `cpu`: the same vendor, family, model, stepping and flags;
//! - `none`, `all`; the default is criu's, `fpu,ins`.
//!
//! The file is stasis's own (JSON, see docs/image-format.md), not criu's
//! protobuf `cpuinfo.img`.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// The file's name, as criu's.
pub const FILE: &str = "cpuinfo.img";
/// What the `format` field says.
const FORMAT: &str = "stasis-cpuinfo-1";

/// criu's CPU_CAP_* bits (criu_opts.cpu_cap carries them).
pub const CAP_FPU: u32 = 1;
pub const CAP_CPU: u32 = 2;
pub const CAP_INS: u32 = 4;
pub const CAP_DEFAULT: u32 = CAP_FPU | CAP_INS;

/// `--cpu-cap` values as criu's bits (criu: each name adds, `^NAME`
/// removes; `none` clears; no value is `all`).
pub fn parse_caps(v: Option<&str>) -> Option<u32> {
    let Some(v) = v else {
        return Some(u32::MAX);
    };
    let mut caps = 0u32;
    for c in v.split(',') {
        let (off, name) = match c.strip_prefix('^') {
            Some(n) => (true, n),
            None => (false, c),
        };
        let bits = match name {
            "all" => u32::MAX,
            "fpu" => CAP_FPU,
            "cpu" => CAP_CPU,
            "ins" => CAP_INS,
            "default" => CAP_DEFAULT,
            "none" => {
                caps = 0;
                continue;
            }
            _ => return None,
        };
        if off {
            caps &= !bits;
        } else {
            caps |= bits;
        }
    }
    Some(caps)
}

/// This CPU, as saved.
fn describe() -> Result<serde_json::Value> {
    let text = std::fs::read_to_string("/proc/cpuinfo").context("read /proc/cpuinfo")?;
    // The first processor's block: they are alike on the machines stasis
    // runs on (a hybrid CPU's cores share one flag set in /proc/cpuinfo).
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let mut flags: Vec<String> = field("flags")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    flags.sort();
    flags.dedup();
    let leaf = core::arch::x86_64::__cpuid_count(0xd, 0);
    let xfeatures = u64::from(leaf.eax) | u64::from(leaf.edx) << 32;
    Ok(serde_json::json!({
        "format": FORMAT,
        "vendor": field("vendor_id"),
        "family": field("cpu family"),
        "model": field("model"),
        "stepping": field("stepping"),
        "model_name": field("model name"),
        "xfeatures": xfeatures,
        "xsave_size": leaf.ecx,
        "flags": flags,
    }))
}

/// `cpuinfo dump`: writes this CPU's description into `dir`.
pub fn dump(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cpuinfo dump: create {}", dir.display()))?;
    let v = describe()?;
    let path = dir.join(FILE);
    let tmp = dir.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, format!("{v:#}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cpuinfo dump: write {}", path.display()))?;
    log::info!("cpuinfo dump: {}", path.display());
    Ok(())
}

/// `cpuinfo check`: Ok if this CPU can run what the saved one ran, as
/// `caps` asks; else one line naming the first difference.
pub fn check(dir: &Path, caps: u32) -> Result<()> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cpuinfo check: read {}", path.display()))?;
    let saved: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("cpuinfo check: {} is not a cpuinfo image", path.display()))?;
    if saved["format"] != FORMAT {
        bail!(
            "cpuinfo check: {} is not a stasis cpuinfo image (format {})",
            path.display(),
            saved["format"]
        );
    }
    let here = describe()?;
    let flags = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect()
    };
    if caps & CAP_FPU != 0 {
        let want = saved["xfeatures"]
            .as_u64()
            .context("cpuinfo check: no xfeatures")?;
        let have = here["xfeatures"].as_u64().unwrap_or(0);
        let missing = want & !have;
        if missing != 0 {
            bail!(
                "cpuinfo check (fpu): this CPU lacks XSAVE component(s) {}",
                stasis_sys::xsave::names(missing)
            );
        }
    }
    if caps & CAP_CPU != 0 {
        for k in ["vendor", "family", "model", "stepping"] {
            if saved[k] != here[k] {
                bail!(
                    "cpuinfo check (cpu): {k} {} here, {} saved",
                    here[k],
                    saved[k]
                );
            }
        }
    }
    let (want, have) = (flags(&saved), flags(&here));
    if caps & (CAP_INS | CAP_CPU) != 0 {
        if let Some(f) = want.difference(&have).next() {
            bail!("cpuinfo check (ins): this CPU lacks flag {f:?}");
        }
    }
    if caps & CAP_CPU != 0 {
        if let Some(f) = have.difference(&want).next() {
            bail!("cpuinfo check (cpu): this CPU has flag {f:?}, the saved one had not");
        }
    }
    log::info!("cpuinfo check: {} matches this CPU", path.display());
    Ok(())
}
