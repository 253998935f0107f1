//! `stasis show`: any image file or directory as JSON.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{ImageError, Result};
use crate::format::{FileKind, Header, PAGES_HEADER_LEN};
use crate::model::{Inventory, ProcessImage};
use crate::reader::{decode, read_any, ImageDir};

fn to_value<T: serde::Serialize>(path: &Path, v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|error| ImageError::Encode {
        path: path.to_path_buf(),
        error,
    })
}

fn pages_header_json(header: &Header, file_len: u64) -> Value {
    json!({
        "kind": "pages",
        "version": header.version,
        "payload_len": header.payload_len,
        "checksum": format!("{:#018x}", header.checksum),
        "header_len": PAGES_HEADER_LEN,
        "file_len": file_len,
    })
}

/// Renders one image file as JSON: the decoded inventory or process image
/// for metadata files (after the header, length and checksum checks, but
/// without semantic validation, so a broken image can still be inspected),
/// or the header fields of a page file. The kind is taken from the header,
/// so any file name works; a symlink given here is followed.
pub fn show_file(path: &Path) -> Result<Value> {
    let (header, file_len, payload) = read_any(path, true)?;
    match (FileKind::from_u32(header.kind), payload) {
        (Some(FileKind::Inventory), Some(p)) => to_value(path, &decode::<Inventory>(path, &p)?),
        (Some(FileKind::Core), Some(p)) => to_value(path, &decode::<ProcessImage>(path, &p)?),
        (Some(FileKind::PagesZstd), _) => {
            let mut v = pages_header_json(&header, file_len);
            v["kind"] = json!("pages-zstd");
            v["compression"] = crate::compress::describe(path)?;
            Ok(v)
        }
        (Some(FileKind::PagesChunked), _) => {
            let mut v = pages_header_json(&header, file_len);
            v["kind"] = json!("pages-chunked");
            let (file, _) = crate::reader::open_regular(path, true)?;
            v["checksum_chunk"] = json!(crate::pagesum::chunk_of(path, &file, &header)?);
            Ok(v)
        }
        _ => Ok(pages_header_json(&header, file_len)),
    }
}

/// Renders a whole image directory as
/// `{"inventory": .., "processes": [..]}`, processes in inventory order.
/// Like [`show_file`], it checks headers and checksums but not semantics.
pub fn show_dir(dir: &Path) -> Result<Value> {
    let image = ImageDir::open(dir)?;
    let inventory = image.read_inventory_unvalidated()?;
    let mut processes = Vec::with_capacity(inventory.processes.len().min(4096));
    for r in &inventory.processes {
        let img = image.read_process_unvalidated(r)?;
        processes.push(to_value(&image.path().join(&r.core_file), &img)?);
    }
    Ok(json!({
        "inventory": to_value(&image.path().join(crate::format::INVENTORY_FILE), &inventory)?,
        "processes": processes,
    }))
}
