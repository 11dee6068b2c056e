//! Decoding the Hub's image-dataset parquet files: one row per image, the
//! image as `struct<bytes: binary, path: string>` (PNG or JPEG bytes), the
//! label as an integer column, class names in the file's `huggingface`
//! metadata (the `datasets` library's `ClassLabel` names).

use crate::catalog::Spec;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::Field;
use rayon::prelude::*;
use selfsup_core::{Error, Result};
use std::path::Path;

/// The rows of one parquet file, decoded.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// (N, C, H, W) `u8` pixels at the spec's size and channels.
    pub images: Vec<u8>,
    /// Labels (0 for every image when the spec has no label column and the
    /// file none either).
    pub labels: Vec<u32>,
    /// (N, A) 0/1 table of the boolean columns (only with
    /// `boolean_attributes`).
    pub attributes: Vec<u8>,
    /// Names of the boolean columns, in table order.
    pub attribute_names: Vec<String>,
    /// ClassLabel names from the file's metadata, if it has them.
    pub class_names: Option<Vec<String>>,
}

impl Decoded {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when the file had no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// ClassLabel names of `column` from the `huggingface` key-value metadata.
fn class_names<R: ChunkReader + 'static>(
    reader: &SerializedFileReader<R>,
    column: &str,
) -> Option<Vec<String>> {
    let kv = reader.metadata().file_metadata().key_value_metadata()?;
    let json = kv.iter().find(|k| k.key == "huggingface")?.value.as_ref()?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let names = v
        .pointer(&format!("/info/features/{column}/names"))?
        .as_array()?;
    names
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// Refuses column chunks whose footer offsets or sizes are negative or
/// point past the end of the file (the reader would panic or read
/// garbage on them).
fn check_chunks(path: &Path, meta: &ParquetMetaData, file_len: u64) -> Result<()> {
    for (g, group) in meta.row_groups().iter().enumerate() {
        for (c, col) in group.columns().iter().enumerate() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let len = col.compressed_size();
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l));
            if end.is_none_or(|e| e > file_len) {
                return Err(Error::format(
                    path,
                    format!(
                        "row group {g}, column {c}: a chunk at offset {start} of {len} bytes lies outside the file's {file_len} bytes (truncated or corrupt?)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses dictionary pages that declare more values than their bytes can
/// hold (PLAIN-encoded, every value takes at least a bit): the reader sizes
/// the dictionary from that count before decoding it, so a corrupt count
/// would be an allocation of any size.
fn check_dictionaries<R: ChunkReader + 'static>(
    path: &Path,
    reader: &SerializedFileReader<R>,
) -> Result<()> {
    use parquet::basic::PageType;
    let bad = |e: parquet::errors::ParquetError| {
        Error::format(
            path,
            format!("cannot read a page (truncated or corrupt?): {e}"),
        )
    };
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(bad)?;
        for c in 0..group.num_columns() {
            let mut pages = group.get_column_page_reader(c).map_err(bad)?;
            while let Some(page) = pages.get_next_page().map_err(bad)? {
                let (n, bytes) = (page.num_values() as usize, page.buffer().len());
                if page.page_type() == PageType::DICTIONARY_PAGE && n > bytes.saturating_mul(8) {
                    return Err(Error::format(
                        path,
                        format!(
                            "row group {g}, column {c}: a dictionary page declares {n} values in {bytes} bytes (corrupt?)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Reads and decodes every row of `path` per `spec`. `on_rows` is called
/// with the number of images decoded so far and the file's row count (for
/// progress bars). Errors name the file (and the row, for a bad cell).
pub fn read(path: &Path, spec: &Spec, on_rows: &(dyn Fn(usize, usize) + Sync)) -> Result<Decoded> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    guarded(path, || decode(path, file, spec, on_rows))
}

/// [`read`] on a parquet file held in memory; errors name `path`.
pub fn read_bytes(
    path: &Path,
    bytes: Vec<u8>,
    spec: &Spec,
    on_rows: &(dyn Fn(usize, usize) + Sync),
) -> Result<Decoded> {
    guarded(path, || {
        decode(path, bytes::Bytes::from(bytes), spec, on_rows)
    })
}

/// Runs `f`, turning a panic into an error that names `path`. The parquet
/// crate's page decoders index into pages without checking them and panic
/// on some corrupt files (found by the `parquet` fuzz target); a corrupt
/// download must be an error, never a crash.
fn guarded(path: &Path, f: impl FnOnce() -> Result<Decoded>) -> Result<Decoded> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::format(
            path,
            format!("the parquet reader failed on this file (corrupt?): {msg}"),
        ))
    })
}

/// Decodes every row of the parquet file `source` (called `path` in errors).
fn decode<R: ChunkReader + 'static>(
    path: &Path,
    source: R,
    spec: &Spec,
    on_rows: &(dyn Fn(usize, usize) + Sync),
) -> Result<Decoded> {
    let source_len = source.len();
    let reader = SerializedFileReader::new(source).map_err(|e| {
        Error::format(
            path,
            format!("not a readable parquet file (truncated or corrupt?): {e}"),
        )
    })?;
    check_chunks(path, reader.metadata(), source_len)?;
    check_dictionaries(path, &reader)?;
    let total = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let schema = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema();
    let columns: Vec<String> = schema
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let image_col = spec
        .image_columns
        .iter()
        .find(|c| columns.iter().any(|n| n == *c))
        .ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "no image column (looked for {}); columns are: {}",
                    spec.image_columns.join(", "),
                    columns.join(", ")
                ),
            )
        })?
        .to_string();
    let has_label = columns.iter().any(|c| c == spec.label_column);
    if !has_label && !spec.boolean_attributes {
        return Err(Error::format(
            path,
            format!(
                "no label column `{}`; columns are: {}",
                spec.label_column,
                columns.join(", ")
            ),
        ));
    }
    let mut out = Decoded {
        class_names: class_names(&reader, spec.label_column),
        ..Decoded::default()
    };
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| Error::format(path, format!("cannot read rows: {e}")))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::format(path, format!("row {i}: {e}")))?;
        let (mut image, mut label) = (None, None);
        let mut attrs = Vec::new();
        for (name, field) in row.get_column_iter() {
            if *name == image_col {
                if let Field::Group(g) = field {
                    for (k, v) in g.get_column_iter() {
                        if k == "bytes" {
                            if let Field::Bytes(b) = v {
                                image = Some(b.data().to_vec());
                            }
                        }
                    }
                }
            } else if name == spec.label_column {
                label = match field {
                    Field::Long(v) => Some(*v),
                    Field::Int(v) => Some(i64::from(*v)),
                    Field::Short(v) => Some(i64::from(*v)),
                    Field::Byte(v) => Some(i64::from(*v)),
                    Field::UInt(v) => Some(i64::from(*v)),
                    Field::UShort(v) => Some(i64::from(*v)),
                    Field::UByte(v) => Some(i64::from(*v)),
                    _ => None,
                };
            } else if spec.boolean_attributes {
                if let Field::Bool(b) = field {
                    if i == 0 {
                        out.attribute_names.push(name.clone());
                    }
                    attrs.push(u8::from(*b));
                }
            }
        }
        let image = image.ok_or_else(|| {
            Error::format(path, format!("row {i}: `{image_col}` has no image bytes"))
        })?;
        let label = match (label, has_label) {
            (Some(l), _) if l >= 0 && l <= i64::from(u32::MAX) => l as u32,
            (None, false) => 0,
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "row {i}: `{}` is missing or not a class index",
                        spec.label_column
                    ),
                ))
            }
        };
        if attrs.len() != out.attribute_names.len() {
            return Err(Error::format(
                path,
                format!(
                    "row {i}: {} boolean attributes, the first row had {}",
                    attrs.len(),
                    out.attribute_names.len()
                ),
            ));
        }
        encoded.push(image);
        out.labels.push(label);
        out.attributes.extend(attrs);
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    let pixels: Vec<Vec<u8>> = encoded
        .par_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let px = selfsup_data::folder::decode_bytes(bytes, spec.size, spec.channels).map_err(
                |e| {
                    let msg = match e {
                        Error::Format { msg, .. } => msg,
                        other => other.to_string(),
                    };
                    Error::format(path, format!("row {i}: {msg}"))
                },
            )?;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 1024 == 0 {
                on_rows(n, total);
            }
            Ok(px)
        })
        .collect::<Result<_>>()?;
    on_rows(pixels.len(), total);
    out.images = pixels.concat();
    Ok(out)
}
